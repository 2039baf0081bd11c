"""Every architecture of the test matrix loads, is what the matrix says it is, is drafted by discovery, and
passes ``pytest claims/ --model test-<arch>`` end to end.

The unit tests of each technique run on every architecture in their own files (``test_attribution.py``,
``test_attention.py``, ``test_compare_models.py``, ``test_patching.py``); here is what spans the whole suite.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from circuit.discover import DiscoveryOptions, discover, render_spec
from circuit.evidence import load_evidence
from circuit.spec import PromptSpec, load_spec
from fixtures.test_models import ARCHITECTURES, TEST_MODELS

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "claims" / "specs" / "test-models.toml"

FEATURES = {
    # arch: (normalization, positional embedding, parallel attention and MLP, output soft-cap, attention biases)
    "qwen2": ("RMS", "rotary", False, False, True),
    "llama": ("RMS", "rotary", False, False, False),
    "phi3": ("RMS", "rotary", False, False, False),
    "olmo2": ("RMS", "rotary", False, False, False),
    "qwen3": ("RMS", "rotary", False, False, False),
    "gemma2": ("RMS", "rotary", False, True, False),
    "gpt2": ("LN", "standard", False, False, True),
    "gpt_neox": ("LN", "rotary", True, False, True),
}
"""What each test model exercises, as the bridge's config reads it (fixtures/test_models.py's table)."""


def test_the_matrix_covers_every_architecture():
    assert sorted(FEATURES) == sorted(ARCHITECTURES)
    assert {ARCHITECTURES[a] for a in ARCHITECTURES} <= set(TEST_MODELS)
    assert set(load_spec(SPEC).model.match) == set(TEST_MODELS)  # the test spec selects every test model


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_loads_a_bridge_and_a_separate_eager_hf_copy(test_models, arch):
    loaded = test_models[ARCHITECTURES[arch]]
    spec, cfg = TEST_MODELS[ARCHITECTURES[arch]], loaded.bridge.cfg
    assert loaded.hf_model is not loaded.bridge.original_model
    assert loaded.hf_model.config._attn_implementation == "eager"
    assert loaded.hf_model.config.model_type == arch
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads) == (spec.n_layers, spec.d_model, spec.n_heads)
    assert (cfg.n_key_value_heads or cfg.n_heads) == spec.n_kv_heads
    norm, positions, parallel, soft_cap, biases = FEATURES[arch]
    assert cfg.normalization_type == norm and cfg.positional_embedding_type == positions
    assert bool(getattr(cfg, "parallel_attn_mlp", False)) == parallel
    assert ((cfg.output_logits_soft_cap or -1) > 0) == soft_cap
    assert (getattr(loaded.bridge.blocks[0].attn, "b_Q", None) is not None) == biases
    assert hasattr(loaded.bridge, "W_pos") == (positions == "standard")  # learned absolute positions


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_discovery_drafts_a_valid_spec(test_models, arch, tmp_path):
    """Discovery measures every architecture and writes a spec that loads for it: it states the two claims any
    correctly loaded model satisfies, and says why it leaves out each claim it does not state."""
    name = ARCHITECTURES[arch]
    model = test_models[name]
    prompts = PromptSpec(min_size=5, max_size=5, min_digits=2, max_digits=2, corruptions=("same_length",),
                         metric="seed")
    draft = discover(model, DiscoveryOptions(prompts=prompts, n_prompt_sets=2), match=[name])
    assert {"attribution-completeness", "hf-equivalence"} <= set(draft.spec.claims)
    for claim in ("task-solved", "final-token-localization", "mlp-over-attention", "named-heads", "value-plus-pattern"):
        assert claim in draft.spec.claims or "not stated" in draft.notes[claim], (claim, draft.notes)
    path = tmp_path / f"{name}.toml"
    path.write_text(render_spec(draft))
    spec = load_spec(path, n_layers=model.bridge.cfg.n_layers, n_heads=model.bridge.cfg.n_heads)
    assert spec.claims == draft.spec.claims and spec.model.match == (name,)


def test_claims_pass_end_to_end_on_every_architecture(tmp_path):
    """``pytest claims/ --model test-<arch> --claims-spec claims/specs/test-models.toml`` for all 8, in one run.

    The spec states what any correctly loaded model satisfies (the bridge equals its HF copy; the attributions
    add up): both pass on every architecture, and every other claim is skipped as not stated.
    """
    models = [ARCHITECTURES[arch] for arch in sorted(ARCHITECTURES)]
    command = [sys.executable, "-m", "pytest", "claims/", "-q", "-p", "no:cacheprovider", "-p", "no:html",
               "--basetemp", str(tmp_path / "bt"), "--claims-reports", str(tmp_path / "reports"),
               "--claims-spec", str(SPEC), *[arg for m in models for arg in ("--model", m)]]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-2000:]
    for name in models:
        evidence = load_evidence(tmp_path / "reports" / "evidence" / f"{name}.json")
        outcomes = {(c.claim_id, c.test): c.outcome for c in evidence.claims}
        stated = {key: outcome for key, outcome in outcomes.items()
                  if key[0] in ("hf-equivalence", "attribution-completeness")}
        assert len(stated) == 3 and set(stated.values()) == {"passed"}, (name, stated)
        assert all(outcome == "skipped" for key, outcome in outcomes.items() if key not in stated), (name, outcomes)
    gemma = load_evidence(tmp_path / "reports" / "evidence" / f"{ARCHITECTURES['gemma2']}.json")
    (completeness,) = [c for c in gemma.claims if c.claim_id == "attribution-completeness"]
    assert "before the model's final-logit soft-cap" in completeness.statistic  # what it was compared with
