"""The position claims (claims/test_position_claims.py): their position finder and statistics on hand-made
values, their spec checks, and falsifiability: run as a user would, on specs and models that make them false.

The runs use the trained default model qwen2-mult-2d, which does the task, with a spec that is partly true:
- layer 0 named 'positive' is supported, layer 1 named 'not_positive' is refuted (its effect toward the clean
  run is about 0.13 of the gap);
- 'early attention on the operands matters at all' is inconclusive even at the budget (an effect of about
  0.01 of the gap), and fails as such; its bound 0 is refuted;
- two named MLP cells with top_k = 1 are refuted (the weaker one's gap to the best cell beyond 1 is below 0);
and the same model with its layer-0 attention zeroed ("attention-0-off"), which no longer does the task, fails
every position claim at the task gate.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from test_claims_falsifiable import attention_off_model, run_claims, verdicts

ROOT = Path(__file__).resolve().parent.parent
CLAIM_FILE = ROOT / "claims" / "test_position_claims.py"

SPEC = """
[model]
match = ["qwen2-mult-2d", "attention-0-off"]
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
[claims.attn-out-by-position]
tolerance = 0.1
layers = [{ layer = 0, sign = "positive" }, { layer = 1, sign = "not_positive" }]
early_until_layer = 1
max_operand_fraction = 0.0
[claims.mlp-out-by-position]
tolerance = 1
top_k = 1
cells = [{ layer = 1, position = "final" }, { layer = 0, position = "b" }]
"""


@pytest.fixture(scope="module")
def positions():
    """The claim module, imported under a private name; the claims and drafters it registers are removed
    afterwards, so that discovery tests in the same session see only the claims they expect."""
    from circuit import discover, spec

    known, drafters = dict(spec.KNOWN_CLAIMS), dict(discover.DRAFTERS)
    name = "_circuit_claims_.test_position_claims"
    module_spec = importlib.util.spec_from_file_location(name, CLAIM_FILE)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    yield module
    sys.modules.pop(name, None)
    spec.KNOWN_CLAIMS.clear()
    spec.KNOWN_CLAIMS.update(known)
    discover.DRAFTERS.clear()
    discover.DRAFTERS.update(drafters)


# --- positions ---------------------------------------------------------------------------------------------


def test_operands_and_final_position_in_qwen_tokens(positions, qwen_tokenizer):
    from circuit.prompts import tokenize_prompts

    # BOS, '1', '2', ' x', ' ', '3', '4', '5', ' ='
    batch = tokenize_prompts(qwen_tokenizer, ["12 x 345 =", "67 x 890 ="])
    found = positions.operand_positions(batch, qwen_tokenizer)
    assert (found.a, found.b, found.final) == ((1, 2), (5, 6, 7), 8)
    assert found.of("final") == (8,) and found.operands == (1, 2, 5, 6, 7)
    with pytest.raises(ValueError, match=r"position 'c': use one of \['a', 'b', 'final'\]"):
        found.of("c")


def test_an_appended_answer_prefix_moves_only_the_final_position(positions, qwen_tokenizer):
    from circuit.prompts import PromptBatch, tokenize_prompts

    batch = tokenize_prompts(qwen_tokenizer, ["12 x 345 =", "67 x 890 ="])
    prefix = torch.tensor([qwen_tokenizer(" 4")["input_ids"]] * 2)  # ' ', '4': as the first_differing_token metric
    extended = PromptBatch(batch.prompts, torch.cat([batch.tokens, prefix], 1),
                           torch.cat([batch.attention_mask, torch.ones_like(prefix)], 1),
                           batch.final_position + prefix.shape[1], batch.bos)
    found = positions.operand_positions(extended, qwen_tokenizer)
    assert (found.a, found.b, found.final) == ((1, 2), (5, 6, 7), 10)


def test_left_padding_shifts_the_operands(positions, qwen_tokenizer):
    from circuit.prompts import tokenize_prompts

    batch = tokenize_prompts(qwen_tokenizer, ["12 x 345 =", "12 x 34 ="], padding="left")
    with pytest.raises(positions.PositionError, match=r"place their operands at different positions"):
        positions.operand_positions(batch, qwen_tokenizer)
    same = tokenize_prompts(qwen_tokenizer, ["1 x 2 =", "3 x 4 ="], prepend_bos=False)
    found = positions.operand_positions(same, qwen_tokenizer)
    assert (found.a, found.b, found.final) == ((0,), (3,), 4)


def test_operands_at_different_positions_are_refused(positions, qwen_tokenizer):
    from circuit.prompts import tokenize_prompts

    batch = tokenize_prompts(qwen_tokenizer, ["12 x 345 =", "123 x 45 ="])  # equal lengths, operands elsewhere
    assert batch.tokens.shape == (2, 9)
    with pytest.raises(positions.PositionError) as caught:
        positions.operand_positions(batch, qwen_tokenizer)
    message = str(caught.value)
    assert "a at (1, 2), b at (5, 6, 7): ['12 x 345 =']" in message
    assert "a at (1, 2, 3), b at (6, 7): ['123 x 45 =']" in message
    assert "Use prompt sets whose operands have the same digit counts." in message


def test_a_prompt_without_operands_is_refused(positions, qwen_tokenizer):
    from circuit.prompts import tokenize_prompts

    batch = tokenize_prompts(qwen_tokenizer, ["12 + 34 ="])
    with pytest.raises(positions.PositionError, match=r"'12 \+ 34 =' is not of the form '<a> x <b> ='"):
        positions.operand_positions(batch, qwen_tokenizer)


# --- statistics on hand-made values ------------------------------------------------------------------------


def constant(means, n_prompts=6):
    """``[..., batch]`` values whose mean over prompts is ``means`` (constant over prompts)."""
    means = torch.tensor(means, dtype=torch.float64)
    return means[..., None].expand(*means.shape, n_prompts)


def test_a_cell_gap_takes_an_operand_s_best_digit_and_compares_with_the_best_cell_beyond_top_k(positions):
    #                    pos 0   1    2    3
    values = constant([[0.1, 3.0, -0.2, 1.0],    # layer 0
                       [-2.0, 0.0, 0.5, 3.0]])   # layer 1
    gap = positions.cell_gap
    assert float(gap(values, [(0, (1,))], 1)) == 0.0  # tied with L1 pos 3 for first: not beyond the 2nd
    assert float(gap(values, [(0, (1,))], 2)) == pytest.approx(1.0)  # 3.0 against the 3rd largest, 2.0
    assert float(gap(values, [(0, (0, 2))], 6)) == pytest.approx(0.2 - 0.1)  # its best digit, |-0.2|, is 6th
    assert float(gap(values, [(1, (0,)), (0, (3,))], 4)) == pytest.approx(1.0 - 0.5)  # the weaker of the two
    assert float(gap(torch.zeros(2, 4, 6, dtype=torch.float64), [(0, (0,))], 1)) == 0  # all 0: no gap
    resampled = torch.stack([values, -values, values.flip(-2)])  # a leading resample dim; the last reverses positions
    assert gap(resampled, [(1, (3,))], 1).tolist() == [0.0, 0.0, pytest.approx(2.0 - 3.0)]  # then L1 pos 3 is -2.0


def test_effects_toward_the_clean_run_in_units_of_the_gap(positions):
    # rows: two layers' effects (already signed toward clean), then |clean - corrupted|
    values = constant([1.0, -0.5, 2.0])
    assert float(positions.toward_clean(values, 2, "min")) == pytest.approx(-0.25)
    assert float(positions.toward_clean(values, 2, "max")) == pytest.approx(0.5)


def test_fraction_of_the_first_cells(positions):
    values = constant([0.1, -0.3, 2.0, -2.0])
    assert float(positions.fraction_of_first(2)(values)) == pytest.approx(0.1)


def test_informative_prompts_and_the_sign_toward_clean(positions):
    class Fixed:
        """A lab whose per-prompt logit differences are given."""

        def __init__(self):
            self.clean = torch.tensor([1.0, 2.0, 0.5, -1.0, 3.0, 2.0, 1.0])
            self.corrupted = torch.tensor([0.0, 1.0, 0.5, 0.0, 2.0, 0.0, 0.0])  # prompt 2: no gap
            self.spec = None

        def logit_diffs(self, ps):
            return self.clean, self.corrupted

    lab = Fixed()
    assert positions.informative(lab, None).tolist() == [True, True, False, True, True, True, True]
    gap = positions.gaps(lab, None)
    assert gap.tolist() == [1.0, 1.0, 0.0, -1.0, 1.0, 2.0, 1.0]


# --- spec checks -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("table", "message"), [
    ('[claims.mlp-out-by-position]\ntolerance = 1\ntop_k = 3\ncells = [{ layer = 0, position = "c" }]',
     r"claims.mlp-out-by-position.*cells\[0\].position: is 'c'; use one of \['a', 'b', 'final'\]"),
    ('[claims.mlp-out-by-position]\ntolerance = 1\ntop_k = 3\ncells = [{ layer = 0, position = "b" }, '
     '{ layer = 0, position = "b" }]', r"cells: \[\(0, 'b'\)\] named more than once"),
    ('[claims.attn-out-by-position]\ntolerance = 1\nlayers = [{ layer = 1, sign = "negative" }]\n'
     'early_until_layer = 1\nmax_operand_fraction = 0.5',
     r"layers\[0\].sign: is 'negative'; use one of \['positive', 'not_positive'\]"),
    ('[claims.attn-out-by-position]\ntolerance = 1\nlayers = [{ layer = 1, sign = "positive" }]\n'
     'early_until_layer = 0\nmax_operand_fraction = 0.5', r"early_until_layer: is 0, so no layer is early"),
    ('[claims.attn-out-by-position]\ntolerance = 1\nlayers = [{ layer = 1, sign = "positive" }, '
     '{ layer = 1, sign = "not_positive" }]\nearly_until_layer = 1\nmax_operand_fraction = 0.5',
     r"layers: layer\(s\) \[1\] are named more than once"),
])
def test_spec_checks_name_the_field(positions, tmp_path, table, message):
    from circuit.spec import SpecError, load_spec

    head = SPEC.split("[claims.")[0]
    path = tmp_path / "spec.toml"
    path.write_text(head + table + "\n")
    with pytest.raises(SpecError, match=message):
        load_spec(path, n_layers=2, n_heads=4)


# --- falsifiability ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def falsified_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("positions")
    (tmp / "spec.toml").write_text(SPEC)
    off = attention_off_model(str(ROOT / "fixtures" / "models" / "qwen2-mult-2d"), tmp / "attention-0-off", layers=[0])
    return run_claims(tmp, str(CLAIM_FILE), "--claims-spec", str(tmp / "spec.toml"), "--model", "qwen2-mult-2d",
                      "--model", str(off), "-p", "no:html")


def test_a_layer_named_positive_that_is_positive_is_supported(falsified_run):
    result, evidence = falsified_run
    claim = verdicts(evidence["qwen2-mult-2d"])["test_named_attention_layers_are_positive_at_the_final_position"]
    assert claim["outcome"] == "passed" and claim["verdict"] == "supported", result.stdout[-3000:]
    assert claim["statistic"].startswith("smallest attn_out patching effect at the final position, toward the clean "
                                         "run (mean / mean |clean - corrupted|), among layers [0] (named positive)")
    assert claim["low"] > 0


def test_a_layer_named_not_positive_that_moves_toward_the_clean_run_is_refuted(falsified_run):
    result, evidence = falsified_run
    claim = verdicts(evidence["qwen2-mult-2d"])["test_named_attention_layers_are_not_positive_at_the_final_position"]
    assert claim["outcome"] == "failed" and claim["verdict"] == "refuted", result.stdout[-3000:]
    assert "among layers [1] (named not_positive)" in claim["statistic"]
    assert claim["low"] > 0


def test_early_attention_with_an_undecidably_small_effect_is_inconclusive_not_passed(falsified_run):
    """'Slightly matter' on a model whose early attention effect at the operands is about 0.01 of the gap: even at
    the budget the interval straddles 0, so the claim fails as inconclusive, saying how many prompts might decide."""
    result, evidence = falsified_run
    at_all = verdicts(evidence["qwen2-mult-2d"])["test_early_attention_on_the_operands_matters_at_all"]
    assert at_all["outcome"] == "failed" and at_all["verdict"] == "inconclusive", result.stdout[-3000:]
    assert at_all["statistic"].startswith("sum of attn_out effects over layers < 1 at the operand digits")
    assert at_all["low"] < 0 < at_all["high"] and at_all["n_prompts"] == 64
    assert at_all["prompts_to_decide"] is None or at_all["prompts_to_decide"] > 64


def test_early_attention_that_reads_the_operands_exceeds_a_zero_bound(falsified_run):
    result, evidence = falsified_run
    claim = verdicts(evidence["qwen2-mult-2d"])["test_early_attention_on_the_operands_matters_less_than_the_final_position"]
    assert claim["outcome"] == "failed" and claim["verdict"] == "refuted", result.stdout[-3000:]
    assert claim["low"] > 0
    assert "rule CI high <= max_operand_fraction = 0: REFUTED" in result.stdout


def test_two_mlp_cells_cannot_both_rank_first(falsified_run):
    result, evidence = falsified_run
    claim = verdicts(evidence["qwen2-mult-2d"])["test_named_mlp_cells_rank_in_top_k"]
    assert claim["outcome"] == "failed" and claim["verdict"] == "refuted", result.stdout[-3000:]
    assert claim["statistic"].startswith("smallest gap |mean mlp_out patching effect| of ['MLP1@final', 'MLP0@b']")
    assert claim["high"] <= 0


def test_a_model_without_its_first_attention_layer_no_longer_does_the_task(falsified_run):
    """With layer 0's attention zeroed the trained model no longer separates clean from corrupted prompts on these
    sets: every position claim fails at the task gate instead of being judged on noise."""
    result, evidence = falsified_run
    for test, claim in verdicts(evidence["attention-0-off"]).items():
        assert claim["outcome"] == "failed" and claim["verdict"] == "inconclusive", test
        assert "the model does not do the task on these prompts" in claim["reason"], test
