"""The logit-lens-linear and late-mlp-attribution claims (claims/test_attribution_claims.py): their statistics
on hand-made values, their spec checks and drafters, and falsifiability.

Falsifiability, in one pytest subprocess on two tiny models:

- on random weights (test-qwen2-2l) the logit lens is no straight line: a spec demanding R^2 >= 0.9999 fails
  with the R^2 as its statistic, and one demanding that every step equal the average step (min_step = 1)
  fails too; MLPs do not carry 99.9% of the attribution, so min_mlp_share = 0.999 fails;
- on the same model with every attention output projection zeroed, an attention layer writes nothing to the
  residual stream: a spec naming attention layer 1 as positive fails with the statistic exactly 0, and the
  MLP share is exactly 1.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from circuit.discover import Draft, DiscoveryOptions, DraftContext, render_spec
from circuit.lab import Lab
from circuit.spec import ModelSpec, PromptSpec, Spec, SpecError, StatisticsSpec, load_spec
from claims import test_attribution_claims as claims
from test_claims_falsifiable import ROOT, no_information_model, run_claims, verdicts

SPEC = ROOT / "claims" / "specs" / "test-models.toml"
LENS_LABELS = ("0_pre", "0_mid", "1_pre", "1_mid", "final_post")
LAYER_LABELS = ("embed", "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out")


class FixedAttribution(Lab):
    """A lab whose logit lens and layer attribution are given ``[entry or component, batch]`` values."""

    def __init__(self, lens=None, layers=None):
        super().__init__(model=None, spec=load_spec(SPEC))
        self.lens = SimpleNamespace(values=lens, labels=LENS_LABELS, mean=None if lens is None else lens.mean(-1))
        self.layers = SimpleNamespace(values=layers, labels=LAYER_LABELS,
                                      mean=None if layers is None else layers.mean(-1))

    def logit_lens(self, ps):
        return self.lens

    def layer_attribution(self, ps):
        return self.layers


def per_prompt(means, offsets=(0.0, 0.3, -0.2, 0.1, 0.5, -0.4, 0.2, -0.1)):
    """``[len(means), 8]`` float64 values: ``means`` plus a per-prompt offset shared by every entry."""
    return torch.tensor(means, dtype=torch.float64)[:, None] + torch.tensor(offsets, dtype=torch.float64)


# --- the statistics on hand-made values -----------------------------------------------------------------


def test_r_squared_is_one_on_a_line_and_worked_out_by_hand_otherwise():
    x = torch.arange(4.0, dtype=torch.float64)
    assert float(claims.r_squared(3.0 - 2.0 * x, x)) == pytest.approx(1.0)
    # y = 0, 1, 0, 1: slope 0.2 (sum xy 1 / sum x^2 5, centred), explained 0.2 of a total sum of squares 1
    assert float(claims.r_squared(torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64), x)) == pytest.approx(0.2)
    batched = torch.stack([3.0 - 2.0 * x, torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64)])
    assert claims.r_squared(batched[None], x).shape == (1, 2)  # vectorized over leading (resample) dims
    assert claims.r_squared(batched, x).tolist() == pytest.approx([1.0, 0.2])


def test_steps_are_fractions_of_the_average_step_and_shares_of_absolute_sums():
    assert claims.relative_steps(torch.tensor([0.0, 1.0, 3.0])).tolist() == pytest.approx([2 / 3, 4 / 3])
    assert claims.relative_steps(torch.tensor([0.0, 2.0, 1.0])).tolist() == pytest.approx([4.0, -2.0])  # a fall
    assert float(claims.mlp_share(torch.tensor([3.0, -1.0]), torch.tensor([1.0, -1.0]))) == pytest.approx(2 / 3)


def test_lens_depths_place_mid_entries_half_a_layer_on():
    assert claims.lens_depths(LENS_LABELS) == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert claims.lens_depths(("0_pre", "1_pre", "2_pre", "final_post")) == [0.0, 1.0, 2.0, 3.0]  # parallel blocks
    with pytest.raises(ValueError, match="'1_post' is not '<layer>_pre'"):
        claims.lens_depths(("0_pre", "1_post"))


def test_the_measures_read_the_lab_s_logit_lens_and_attribution():
    lab = FixedAttribution(lens=per_prompt([0.0, 1.0, 2.0, 3.0, 4.0]),  # a straight rise, shifted per prompt
                           layers=per_prompt([0.0, 0.1, 1.0, -0.5, 3.0], offsets=(0.0,) * 8))
    fit = claims.lens_linearity(lab, None, 0)
    assert float(fit.low) == pytest.approx(1.0) and float(fit.high) == pytest.approx(1.0)
    assert float(claims.lens_smallest_step(lab, None, 1).estimate) == pytest.approx(1.0)
    assert float(claims.late_mlp_share(lab, None, 1).estimate) == pytest.approx(3.0 / 3.5)
    assert float(claims.late_mlp_share(lab, None, 0).estimate) == pytest.approx(4.0 / 4.6)
    signed = (claims.SignedLayer(1, "negative"), claims.SignedLayer(0, "positive"))
    assert float(claims.weakest_signed_attention(lab, None, signed).estimate) == pytest.approx(0.1)
    with pytest.raises(ValueError, match=r"from_layer=2: only \['final_post'\] of the logit lens entries lie from"):
        claims.lens_linearity(lab, None, 2)


# --- spec checks -------------------------------------------------------------------------------------------


def _spec_with(tmp_path: Path, table: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.read_text() + table)
    return path


@pytest.mark.parametrize(("table", "message"), [
    ("[claims.logit-lens-linear]\nfrom_layer = 0\nmin_r2 = 1.5\ntolerance = 0.1\n",
     r"\[claims.logit-lens-linear\] min_r2: an R\^2 lies between 0 and 1, got 1.5"),
    ("[claims.logit-lens-linear]\nfrom_layer = 0\nmin_r2 = 0.9\nmin_step = 2.0\ntolerance = 0.1\n",
     r"min_step: the smallest step is at most the average step \(1.0\), so 2.0 can never hold"),
    ("[claims.late-mlp-attribution]\nfrom_layer = 0\nmin_mlp_share = 0.5\ntolerance = 0.1\n"
     "attention_layers = [{layer = 1, sign = \"any\"}]\n",
     r"attention_layers\[0\].sign: is 'any'; use one of \['positive', 'negative'\]"),
    ("[claims.late-mlp-attribution]\nfrom_layer = 0\nmin_mlp_share = 0.5\ntolerance = 0.1\n"
     "attention_layers = [{layer = 1, sign = \"positive\"}, {layer = 1, sign = \"negative\"}]\n",
     r"attention_layers: layer\(s\) \[1\] named more than once"),
])
def test_a_spec_contradicting_itself_is_refused_with_the_field_named(tmp_path, table, message):
    with pytest.raises(SpecError, match=message):
        load_spec(_spec_with(tmp_path, table))


def test_a_named_attention_layer_beyond_the_model_is_refused(tmp_path):
    path = _spec_with(tmp_path, "[claims.late-mlp-attribution]\nfrom_layer = 0\nmin_mlp_share = 0.5\n"
                                "tolerance = 0.1\nattention_layers = [{layer = 2, sign = \"positive\"}]\n")
    with pytest.raises(SpecError, match=r"attention_layers\[0\].layer\] layer 2 is out of range"):
        load_spec(path, n_layers=2, n_heads=4)
    claim = load_spec(path).claim("late-mlp-attribution")
    assert [asdict(named) for named in claim.attention_layers] == [{"layer": 2, "sign": "positive"}]


# --- drafters ----------------------------------------------------------------------------------------------


class Prompts:
    """A stand-in prompt set of 8 prompts (the lab's values are given)."""

    clean = tuple(range(8))


def _context(lab, stated=None):
    prompts = PromptSpec(min_size=8, max_size=8, min_digits=2, max_digits=2, corruptions=("same_length",))
    return DraftContext(lab, (Prompts(),), (Prompts(),), DiscoveryOptions(prompts=prompts), 2, 4, stated or {})


def _draft(**claims_by_id):
    prompts = PromptSpec(min_size=8, max_size=8, min_digits=2, max_digits=2, corruptions=("same_length",))
    spec = Spec(Path("<draft>"), ModelSpec(match=("x",)), StatisticsSpec(level=0.95, n_resamples=1000), prompts,
                {claim_id.replace("_", "-"): claim for claim_id, claim in claims_by_id.items()})
    return Draft(spec)


def test_the_drafters_state_what_holds_with_margin_and_the_draft_loads_back(tmp_path):
    lab = FixedAttribution(lens=per_prompt([0.0, 1.0, 2.0, 3.0, 4.0]),
                           layers=per_prompt([0.0, 0.1, 1.0, -0.5, 3.0], offsets=(0.0,) * 8))
    # every resample of these values gives the same statistic: the held-out interval is a point, the margin 0
    lens, note = claims._draft_logit_lens_linear(_context(lab))
    assert (lens.from_layer, lens.min_r2, lens.min_step, note) == (0, 1.0, 1.0, "")
    late, note = claims._draft_late_mlp_attribution(_context(lab))
    # from layer 1 (the second half): share 3 / 3.5 = 0.857, floored to the 0.01 grid
    assert (late.from_layer, late.min_mlp_share, note) == (1, 0.85, "")
    assert late.attention_layers == (claims.SignedLayer(layer=1, sign="negative"),)
    path = tmp_path / "draft.toml"
    path.write_text(render_spec(_draft(logit_lens_linear=lens, late_mlp_attribution=late)))
    loaded = load_spec(path, n_layers=2, n_heads=4)
    assert asdict(loaded.claim("logit-lens-linear")) == asdict(lens)
    assert asdict(loaded.claim("late-mlp-attribution")) == asdict(late)


def test_the_drafters_say_why_they_state_nothing():
    zigzag = FixedAttribution(lens=per_prompt([0.0, 1.0, 0.0, 1.0, 0.0]),
                              layers=per_prompt([0.0, 2.0, 1.0, -2.0, 1.0], offsets=(0.0,) * 8))
    lens, note = claims._draft_logit_lens_linear(_context(zigzag))
    assert lens is None and note.startswith("not stated: R^2 of a line through the logit lens from layer 0: held-out "
                                            "estimate ")  # R^2 0 up to rounding: the zigzag has no slope
    assert note.endswith(", below 0.5")
    late, note = claims._draft_late_mlp_attribution(_context(zigzag))
    assert late is None and note == (
        "not stated: the MLP share of |direct logit attribution| is not above 0.5 with margin (from layer 1: held-out "
        "estimate 0.3333 [95% CI 0.3333, 0.3333] over 1 sets, margin 0 -> >= 0.33; from layer 0: held-out estimate "
        "0.3333 [95% CI 0.3333, 0.3333] over 1 sets, margin 0 -> >= 0.33)")


def test_a_draft_without_min_step_or_attention_layers_loads_back(tmp_path):
    lens = claims.LogitLensLinearClaim(tolerance=0.05, from_layer=0, min_r2=0.85)
    late = claims.LateMlpAttributionClaim(tolerance=0.05, from_layer=1, min_mlp_share=0.7)
    path = tmp_path / "draft.toml"
    path.write_text(render_spec(_draft(logit_lens_linear=lens, late_mlp_attribution=late)))
    loaded = load_spec(path)
    assert asdict(loaded.claim("logit-lens-linear")) == asdict(lens)
    assert asdict(loaded.claim("late-mlp-attribution")) == asdict(late)


# --- falsifiability ----------------------------------------------------------------------------------------

FALSIFYING_SPEC = """
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
[claims.logit-lens-linear]
from_layer = 0
min_r2 = 0.9999
min_step = 1.0
tolerance = 0.05
[claims.late-mlp-attribution]
from_layer = 0
min_mlp_share = 0.999
attention_layers = [{layer = 1, sign = "positive"}]
tolerance = 0.05
"""


@pytest.fixture(scope="module")
def falsified_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("falsified-attribution")
    (tmp / "spec.toml").write_text(FALSIFYING_SPEC)
    blind = no_information_model(str(ROOT / "fixtures" / "models" / "qwen2-mult-2d"), tmp / "no-information")
    return run_claims(tmp, str(ROOT / "claims" / "test_attribution_claims.py"), "--claims-spec", str(tmp / "spec.toml"),
                      "--model", "qwen2-mult-2d", "--model", str(blind), "-p", "no:html")


def test_a_logit_lens_that_is_no_straight_line_fails_logit_lens_linear(falsified_run):
    result, evidence = falsified_run
    claims_run = verdicts(evidence["qwen2-mult-2d"])
    fit = claims_run["test_logit_lens_rises_linearly"]
    assert fit["outcome"] == "failed" and fit["verdict"] == "refuted", result.stdout[-3000:]
    assert fit["statistic"] == "R^2 of a straight line through the mean logit lens curve against depth, from layer 0"
    assert fit["estimate"] < fit["high"] < 0.9999
    step = claims_run["test_every_layer_raises_the_logit_lens"]
    assert step["outcome"] == "failed" and step["verdict"] == "refuted"
    assert step["statistic"].startswith("smallest step of the mean logit lens curve / |average step|")
    assert step["high"] < 1.0
    assert "rule CI low >= min_r2 = 0.9999: REFUTED" in result.stdout


def test_attention_that_carries_some_attribution_fails_a_99_9_percent_mlp_share(falsified_run):
    result, evidence = falsified_run
    share = verdicts(evidence["qwen2-mult-2d"])["test_late_mlp_layers_carry_the_attribution"]
    assert share["outcome"] == "failed" and share["verdict"] == "refuted", result.stdout[-3000:]
    assert share["statistic"].startswith("MLP share of sum |mean direct logit attribution|")
    assert share["high"] < 0.999


def test_a_model_that_does_not_do_the_task_fails_every_attribution_claim_at_the_gate(falsified_run):
    """The blind copy (no attention writes anything) cannot compute the answer: its attention layers have no sign and
    its MLP share is exactly 1, and neither is judged: every claim fails at the task gate."""
    result, evidence = falsified_run
    for test, claim in verdicts(evidence["no-information"]).items():
        assert claim["outcome"] == "failed" and claim["verdict"] == "inconclusive", (test, result.stdout[-3000:])
        assert claim["statistic"].startswith("PRECONDITION task-solved") and claim["estimate"] == 0.0, test
