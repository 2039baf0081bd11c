"""Falsifiability: each claim can fail, and fails for the stated reason when its premise is false.

A test suite that cannot fail proves nothing. These tests run the claims themselves (in a separate
pytest process, as a user would) on models and specs built to make them false, and read the verdicts
from the evidence file the run writes:

- claim 5 (named heads) on the trained default model, with a spec naming heads that cannot all be in the
  top-k (every head of layer 0 with ``top_k = 1``), is refuted: the weakest head's gap to the best head
  beyond k is below 0;
- claim 3 (final-token localization) on that model made blind (every attention output projection
  zeroed, so the final position only ever sees its own " =" token) fails at the task gate: clean and
  corrupted runs are identical, and no claim about the computation is judged on a model that does not
  compute the answer;
- claim 2 (task solved) is refuted there, and claims 4, 5, 6 and 7 fail at the same gate;
- claim 7 (attention of the top heads) is refuted on the trained model with a spec demanding that late
  heads attend almost only to BOS;
- claim 1 (HF equivalence) on a bridge whose weights were tampered with fails, naming the largest
  difference.

Claim 8 (attribution completeness) is an identity of the attribution code; ``tests/test_attribution.py``
shows it detects a wrong decomposition.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

SPEC = """
[model]
match = ["qwen2-mult-2d", "no-information"]
[statistics]
level = 0.95
n_resamples = 200
[prompts]
min_size = 16
max_size = 16
min_digits = 2
max_digits = 2
corruptions = ["same_length"]
metric = "first_differing_token"
[claims.final-token-localization]
late_from_layer = 1
min_recovery = 0.8
max_other_recovery = 0.2
tolerance = 0.2
[claims.task-solved]
tolerance = 1
[claims.mlp-over-attention]
from_layer = 0
min_ratio = 1.0
tolerance = 1
[claims.value-plus-pattern]
min_correlation = 0.9
max_residual = 0.2
tolerance = 0.1
[claims.top-head-attention]
top_k = 8
late_from_layer = 1
early_until_layer = 1
min_bos_attention = 0.99
min_normalized_entropy = 0.5
tolerance = 0.1
[claims.named-heads]
top_k = 1
tolerance = 1
heads = [
    { head = "L0H0", sign = "any", by = ["z_patching"] },
    { head = "L0H1", sign = "any", by = ["z_patching"] },
    { head = "L0H2", sign = "any", by = ["z_patching"] },
    { head = "L0H3", sign = "any", by = ["z_patching"] },
]
"""


def run_claims(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict[str, dict]]:
    """Run pytest on claims in a subprocess; return it and the evidence files it wrote, by model."""
    reports = tmp_path / "reports"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
               str(tmp_path / "basetemp"), "--claims-reports", str(reports), *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    evidence = {p.stem: json.loads(p.read_text()) for p in (reports / "evidence").glob("*.json")}
    return result, evidence


def verdicts(evidence: dict) -> dict[str, dict]:
    return {claim["test"]: claim for claim in evidence["claims"]}


def attention_off_model(source: str, folder: Path, layers: list[int] | None = None) -> Path:
    """``source`` with the attention output projection of ``layers`` (default: every layer) zeroed: those
    layers' attention writes nothing."""
    import shutil

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    with torch.no_grad():
        for index, layer in enumerate(model.model.layers):
            if layers is None or index in layers:
                layer.self_attn.o_proj.weight.zero_()
    model.save_pretrained(folder, safe_serialization=True)
    for name in ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "generation_config.json",
                 "training_summary.json"):
        if (Path(source) / name).exists():
            shutil.copy(Path(source) / name, folder / name)
    return folder


def no_information_model(source: str, folder: Path) -> Path:
    """``source`` with every attention output projection zeroed: no position sees another's information."""
    return attention_off_model(source, folder)


@pytest.fixture(scope="module")
def falsified_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("falsified")
    (tmp / "spec.toml").write_text(SPEC)
    blind = no_information_model(str(ROOT / "fixtures" / "models" / "qwen2-mult-2d"), tmp / "no-information")
    files = [str(ROOT / "claims" / f"test_{name}.py") for name in (
        "named_heads", "final_token_localization", "task_solved", "mlp_over_attention", "value_plus_pattern",
        "top_head_attention")]
    return run_claims(tmp, *files, "--claims-spec",
                      str(tmp / "spec.toml"), "--model", "qwen2-mult-2d", "--model", str(blind), "-p", "no:html")


def gated(claim: dict) -> bool:
    """Whether a claim test failed at the task gate: no verdict on the claim, because the model does not do the task."""
    return (claim["outcome"] == "failed" and claim["verdict"] == "inconclusive"
            and claim["statistic"].startswith("PRECONDITION task-solved")
            and "the model does not do the task on these prompts" in claim["reason"])


def test_a_spec_naming_the_wrong_heads_fails_claim_5(falsified_run):
    """On the trained model: four heads cannot all be in the top 1, so the weakest one's gap to the head ranked
    beyond 1 is below 0, and the claim is refuted (not merely unsupported)."""
    result, evidence = falsified_run
    claim = verdicts(evidence["qwen2-mult-2d"])["test_named_heads_rank_in_top_k_by_z_patching"]
    assert claim["outcome"] == "failed" and claim["verdict"] == "refuted", result.stdout[-3000:]
    assert claim["statistic"].startswith("smallest gap |mean z patching effect| of ['L0H0', 'L0H1', 'L0H2', 'L0H3']")
    assert claim["estimate"] < 0 and claim["high"] <= 0
    assert "rule CI low > 0: REFUTED" in result.stdout


def test_a_model_whose_final_position_carries_no_information_fails_claim_3(falsified_run):
    result, evidence = falsified_run
    claims = verdicts(evidence["no-information"])
    for test in ("test_final_position_recovers_in_late_layers", "test_no_other_position_recovers_in_late_layers"):
        assert gated(claims[test]), (claims[test], result.stdout[-3000:])
        assert claims[test]["estimate"] == 0.0  # clean and corrupted runs are identical
    assert "INCONCLUSIVE: the model does not do the task on these prompts" in result.stdout


def test_the_no_information_model_fails_the_claims_that_need_a_solved_task(falsified_run):
    result, evidence = falsified_run
    claims = verdicts(evidence["no-information"])
    solved = claims["test_clean_exceeds_corrupted_logit_difference"]
    assert (solved["outcome"], solved["verdict"], solved["estimate"], solved["low"], solved["high"]) == (
        "failed", "refuted", 0.0, 0.0, 0.0)
    for test in ("test_mlp_outweighs_attention_by_activation_patching",
                 "test_mlp_outweighs_attention_by_attribution_patching",
                 "test_value_plus_pattern_correlates_with_output", "test_value_plus_pattern_residual_is_small",
                 "test_named_heads_rank_in_top_k_by_z_patching", "test_late_top_heads_attend_to_bos"):
        assert gated(claims[test]), test


def test_heads_that_do_not_rest_on_bos_fail_claim_7(falsified_run):
    result, evidence = falsified_run
    claim = verdicts(evidence["qwen2-mult-2d"])["test_late_top_heads_attend_to_bos"]
    assert claim["outcome"] == "failed" and claim["verdict"] == "refuted", result.stdout[-3000:]
    assert claim["statistic"].startswith("smallest mean attention to BOS among the top-8 heads in layers 1+")
    assert claim["high"] < 0.99


def test_claims_not_in_the_spec_are_skipped_with_the_spec_named(falsified_run):
    result, evidence = falsified_run
    claim = verdicts(evidence["qwen2-mult-2d"])["test_named_heads_have_their_stated_sign"]
    assert claim["outcome"] == "skipped"
    assert "the spec states no head's sign" in claim["note"]


def test_a_tampered_bridge_fails_claim_1(test_model_folder):
    from circuit.equivalence import compare_models
    from circuit.models import load_model
    from circuit.prompts import tokenize_prompts

    model = load_model(test_model_folder("test-qwen2-2l"), device="cpu")
    batch = tokenize_prompts(model.tokenizer, ["12 x 34 =", "56 x 78 ="])
    before = compare_models(model.bridge, model.hf_model, batch.tokens, tokenizer=model.tokenizer)
    assert before.holds, before.describe()
    with torch.no_grad():
        model.bridge.blocks[1].mlp.W_out.mul_(1.5)
    after = compare_models(model.bridge, model.hf_model, batch.tokens, tokenizer=model.tokenizer)
    assert not after.holds
    assert "EXCEEDS atol" in after.describe()
