"""The claims only the planted model supports: supported there, refuted on a sibling where they are false.

``qwen2-planted-mult-2d`` (``fixtures/train_default_model.py --planted``) is trained so that sentences of the
source hold by construction (its card: uniform early attention, later heads resting on BOS, a small margin).
Its spec was drafted by discovery like the others'. Each claim it states and no other bundled spec states is
run here as a user runs it (one pytest subprocess), under the planted model's spec, on the planted model and on
``neox-mult-2d`` (6 layers and 4 heads too, trained by the plain recipe): a claim test that passed on both would
tell nothing about the model, so each must be supported on the first and refuted on the second.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from fixtures.train_default_model import PLANTED

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "claims" / "specs"
SIBLING = "neox-mult-2d"


def stated(model: str) -> set[str]:
    return set(tomllib.loads((SPECS / f"{model}.toml").read_text()).get("claims", {}))


def planted_only() -> list[str]:
    """The claim ids the planted model's spec states and no other bundled model's spec does."""
    others = set().union(*(stated(p.stem) for p in SPECS.glob("*-mult-2d.toml") if p.stem != PLANTED))
    return sorted(stated(PLANTED) - others)


def claim_files(ids: list[str]) -> list[str]:
    """The claim files holding the tests of ``ids``."""
    files = {str(path) for path in (ROOT / "claims").glob("test_*.py")
             if set(re.findall(r'@pytest\.mark\.claim\(id="([^"]+)"', path.read_text())) & set(ids)}
    return sorted(files)


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    from test_claims_falsifiable import run_claims

    tmp = tmp_path_factory.mktemp("planted")
    spec = (SPECS / f"{PLANTED}.toml").read_text()
    spec = spec.replace(f'match = ["{PLANTED}"]', f'match = ["{PLANTED}", "{SIBLING}"]')
    (tmp / "spec.toml").write_text(spec)
    result, evidence = run_claims(tmp, *claim_files(planted_only()), "--claims-spec", str(tmp / "spec.toml"),
                                  f"--model={PLANTED}", f"--model={SIBLING}", "-p", "no:html")
    return result, evidence


def test_the_planted_model_supports_claims_no_other_bundled_model_does():
    assert planted_only(), "the planted model's spec states no claim that another bundled spec does not"


def _records(planted_run, label):
    result, evidence = planted_run
    records = [c for c in evidence[label]["claims"] if c["claim_id"] in planted_only()]
    assert {c["claim_id"] for c in records} == set(planted_only()), result.stdout[-3000:]
    return records


def test_every_test_of_a_planted_claim_is_supported_on_the_planted_model(planted_run):
    wrong = {c["test"]: (c["verdict"], c["statistic"]) for c in _records(planted_run, PLANTED)
             if (c["verdict"], c["outcome"]) != ("supported", "passed")}
    assert not wrong, f"on {PLANTED}, expected every planted claim test supported: {wrong}"


def test_every_planted_claim_is_refuted_on_its_sibling(planted_run):
    """Each claim fails there through a test refuted, not one left inconclusive (a claim's other tests may
    hold: neox-mult-2d's clean margin is positive, only not small)."""
    records = _records(planted_run, SIBLING)
    refuted = {c["claim_id"] for c in records if (c["verdict"], c["outcome"]) == ("refuted", "failed")}
    verdicts = {c["test"]: c["verdict"] for c in records}
    assert refuted == set(planted_only()), f"on {SIBLING}: {verdicts}"
