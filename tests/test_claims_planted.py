"""The claims only the planted models support: supported there, refuted on a sibling where they are false.

The planted models are trained so that sentences of the source hold by construction (their cards):
``qwen2-planted-mult-2d`` (``fixtures/train_default_model.py --planted``: uniform early attention, later heads
resting on BOS, a small margin), ``qwen2-readout-mult-2d`` (``--planted qwen2-readout-mult-2d``: a first
layer that writes only to the logits, last-layer heads that attend to themselves and are the readout, every
other head resting on BOS) and ``qwen2-direct-mult-2d`` (the same, plus a loss that makes the first layer's
direct effect large). Their specs were drafted by discovery like the others'. Each claim a planted model
states and no model of the plain recipe states is run here as a user runs it (one pytest subprocess per
planted model), under the planted model's spec, on the planted model and on ``neox-mult-2d`` (6 layers and 4
heads too, trained by the plain recipe): a claim test that passed on both would tell nothing about the model,
so each must be supported on the first and refuted on the second.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from fixtures.train_default_model import ARCHS, PLANTED_CONFIGS

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "claims" / "specs"
SIBLING = "neox-mult-2d"


def stated(model: str) -> set[str]:
    return set(tomllib.loads((SPECS / f"{model}.toml").read_text()).get("claims", {}))


def planted_only(planted: str) -> list[str]:
    """The claim ids the planted model's spec states and no spec of a model of the plain recipe does."""
    return sorted(stated(planted) - set().union(*(stated(plain) for plain in ARCHS.values())))


def claim_files(ids: list[str]) -> list[str]:
    """The claim files holding the tests of ``ids``."""
    files = {str(path) for path in (ROOT / "claims").glob("test_*.py")
             if set(re.findall(r'@pytest\.mark\.claim\(id="([^"]+)"', path.read_text())) & set(ids)}
    return sorted(files)


@pytest.fixture(scope="module", params=sorted(PLANTED_CONFIGS))
def planted_run(request, tmp_path_factory):
    """``(planted model, pytest result, evidence)``: its planted-only claims run on it and on the sibling."""
    from test_claims_falsifiable import run_claims

    planted = request.param
    tmp = tmp_path_factory.mktemp(planted)
    spec = (SPECS / f"{planted}.toml").read_text()
    spec = spec.replace(f'match = ["{planted}"]', f'match = ["{planted}", "{SIBLING}"]')
    (tmp / "spec.toml").write_text(spec)
    result, evidence = run_claims(tmp, *claim_files(planted_only(planted)), "--claims-spec", str(tmp / "spec.toml"),
                                  f"--model={planted}", f"--model={SIBLING}", "-p", "no:html")
    return planted, result, evidence


@pytest.mark.parametrize("planted", sorted(PLANTED_CONFIGS))
def test_each_planted_model_supports_claims_no_model_of_the_plain_recipe_does(planted):
    assert planted_only(planted), f"{planted}'s spec states no claim that a model of the plain recipe does not"


def _records(planted_run, label):
    planted, result, evidence = planted_run
    records = [c for c in evidence[label]["claims"] if c["claim_id"] in planted_only(planted)]
    assert {c["claim_id"] for c in records} == set(planted_only(planted)), result.stdout[-3000:]
    return records


def test_every_test_of_a_planted_claim_is_supported_on_the_planted_model(planted_run):
    planted = planted_run[0]
    wrong = {c["test"]: (c["verdict"], c["statistic"]) for c in _records(planted_run, planted)
             if (c["verdict"], c["outcome"]) != ("supported", "passed")}
    assert not wrong, f"on {planted}, expected every planted claim test supported: {wrong}"


def test_every_planted_claim_is_refuted_on_its_sibling(planted_run):
    """Each claim fails there through a test refuted, not one left inconclusive (a claim's other tests may
    hold: neox-mult-2d's clean margin is positive, only not small)."""
    records = _records(planted_run, SIBLING)
    refuted = {c["claim_id"] for c in records if (c["verdict"], c["outcome"]) == ("refuted", "failed")}
    verdicts = {c["test"]: c["verdict"] for c in records}
    assert refuted == set(planted_only(planted_run[0])), f"on {SIBLING}: {verdicts}"
