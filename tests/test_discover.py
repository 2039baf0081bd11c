"""Claim discovery reproduces the spec shipped for the bundled default model, and renders valid specs."""

from dataclasses import replace
from pathlib import Path

import pytest

from circuit.discover import DiscoveryOptions, discover, render_spec
from circuit.models import load_model
from circuit.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "fixtures" / "models" / "qwen2-mult-3d"
SHIPPED_SPEC = ROOT / "claims" / "specs" / "qwen2-mult-3d.toml"


@pytest.fixture(scope="module")
def default_model():
    return load_model(DEFAULT_MODEL, device="cpu", with_hf_reference=False)


@pytest.fixture(scope="module")
def rediscovered(default_model, tmp_path_factory):
    """The draft that discovery writes today for the default model, with the shipped spec's prompt settings."""
    shipped = load_spec(SHIPPED_SPEC)
    options = DiscoveryOptions(prompts=shipped.prompts, statistics=shipped.statistics)
    draft = discover(default_model, options, match=shipped.model.match)
    path = tmp_path_factory.mktemp("discovery") / "draft.toml"
    path.write_text(render_spec(draft))
    return shipped, load_spec(path, n_layers=default_model.bridge.cfg.n_layers,
                              n_heads=default_model.bridge.cfg.n_heads)


def test_discovery_reproduces_the_shipped_spec(rediscovered):
    shipped, draft = rediscovered
    assert sorted(draft.claims) == sorted(shipped.claims)
    for claim_id, claim in shipped.claims.items():
        assert draft.claims[claim_id] == claim, f"{claim_id}: discovery gives {draft.claims[claim_id]}, shipped {claim}"
    assert replace(draft, path=shipped.path) == shipped


def test_discovery_states_only_what_holds_on_a_random_model(test_models):
    """A random-weight model does not separate clean from corrupted answers: no circuit claim is drafted."""
    shipped = load_spec(SHIPPED_SPEC)
    prompts = replace(shipped.prompts, metric="seed", min_size=8, max_size=8)
    draft = discover(test_models["test-qwen2-2l"], DiscoveryOptions(prompts=prompts, n_prompt_sets=2),
                     match=["test-qwen2-2l"])
    assert sorted(draft.spec.claims) == ["attribution-completeness", "hf-equivalence"]
    assert "task-solved" in draft.notes and "not stated" in draft.notes["task-solved"]
    assert "# task-solved: not stated" in render_spec(draft)
