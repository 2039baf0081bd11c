"""The source's size statements as claims: small-clean-margin, head-effect-size, head-sparsity (and the
falsifiability of pinned-prompt, whose unit tests are ``tests/test_claims_pinned_prompt.py``).

- Unit: each statistic on hand-made per-prompt values (a lab whose logit differences, attributions and patching
  effects are given), with the answer worked out by hand; their specs' contradictions refused at load, naming the
  field; the drafters on given values, stating what the values support and saying why not otherwise.
- Falsifiability: the claim tests, run as a user would (a pytest subprocess) on the trained default model, are
  refuted by a spec that is false there (a margin of at most 1 where it is about 20, L0H0's z effect of at least
  60 and L0H1's of at most 1, the top head carrying 90% of the heads' effect; a pinned answer token at most 50%
  likely and not the top prediction) and supported by one that is true. One run per spec: the four claim files
  share its model load.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from circuit.lab import Lab
from circuit.spec import SpecError, load_spec
from fixtures.claims_session import DEFAULT_MODELS
from claim_helpers import claims_module, constant, point

ROOT = Path(__file__).resolve().parent.parent
TEST_SPEC = ROOT / "claims" / "specs" / "test-models.toml"
FILES = {name: ROOT / "claims" / f"test_{name}.py" for name in ("small_clean_margin", "head_effect_size",
                                                                "head_sparsity", "pinned_prompt")}


margin, size, sparsity = (claims_module(FILES[name]) for name in ("small_clean_margin", "head_effect_size",
                                                                    "head_sparsity"))


class Attribution:
    def __init__(self, values):
        self.values = values


class Given(Lab):
    """A lab whose clean/corrupted logit differences, head attributions and per-head effects are given (no model)."""

    def __init__(self, clean=None, attribution=None, **effects):
        super().__init__(model=None, spec=load_spec(TEST_SPEC))
        self.clean, self.attribution, self.given = clean, attribution, effects

    def logit_diffs(self, ps):
        return self.clean, torch.zeros_like(self.clean)

    def head_attribution(self, ps):
        return Attribution(self.attribution)

    def patch(self, ps, site, method="activation"):
        return site

    def effects(self, result):
        return self.given[result]


# --- small-clean-margin ------------------------------------------------------------------------------------


def test_the_clean_margin_is_the_mean_clean_logit_difference_with_its_interval_over_prompts():
    clean = torch.tensor([0.409, 0.402, 0.371, 0.0, 0.36, 0.082, 0.227, -0.021])  # the source's 8 prompts
    interval = margin.clean_logit_diff(Given(clean=clean), None)
    assert float(interval.estimate) == pytest.approx(0.22875, abs=1e-6)  # the source's "0.229"
    assert float(interval.low) < 0.229 < float(interval.high) < 0.5


@pytest.mark.parametrize(("rule", "verdict"), [
    (("<", 0.5), "supported"), (("<", 0.05), "refuted"), ((">", 0.0), "supported"), ((">", 1.0), "refuted")])
def test_the_source_s_margin_is_small_and_positive_but_not_below_its_own_value(rule, verdict):
    from circuit.decision import Rule

    clean = torch.tensor([0.409, 0.402, 0.371, 0.0, 0.36, 0.082, 0.227, -0.021])
    assert str(Rule(*rule).verdict(margin.clean_logit_diff(Given(clean=clean), None))) == verdict


# --- head-effect-size --------------------------------------------------------------------------------------


def test_head_effect_slack_is_the_smallest_distance_inside_the_stated_bounds():
    attribution = constant([[0.3, -0.137], [0.0, 0.05]])  # L0H1 is the source's L22H7: -0.137
    z = constant([[2.0, 1.0], [0.0, 0.0]])
    lab = Given(attribution=attribution, z=z)
    H = size.HeadEffect
    heads = [H("L0H1", "attribution", -0.2, -0.1), H("L0H0", "z_patching", 1.5, None),
             H("L0H0", "attribution", None, 1.0)]
    assert point(size.smallest_slack(lab, None, heads, "min")) == pytest.approx(min(-0.137 + 0.2, 2.0 - 1.5))
    assert point(size.smallest_slack(lab, None, heads, "max")) == pytest.approx(min(-0.1 + 0.137, 1.0 - 0.3))
    outside = [H("L0H1", "attribution", -0.1, 0.0)]  # -0.137 is below -0.1: the lower slack is negative
    assert point(size.smallest_slack(lab, None, outside, "min")) == pytest.approx(-0.037)


def test_a_head_effect_is_the_mean_over_prompts_so_a_noisy_head_has_a_wide_interval():
    attribution = constant([[0.0, 0.0]]).clone()
    attribution[0, 1] = torch.tensor([1.0, -1.0] * 4)  # mean 0, +-1 per prompt
    interval = size.mean_effect(Given(attribution=attribution), None, size.HeadEffect("L0H1", "attribution", -0.5))
    assert float(interval.estimate) == 0.0 and float(interval.low) < -0.3 and float(interval.high) > 0.3


@pytest.mark.parametrize(("table", "message"), [
    ('heads = [{ head = "L0H0", by = "attribution" }]',
     r"\] heads\[0\] \(L0H0\): states neither min_effect nor max_effect"),
    ('heads = [{ head = "L0H0", by = "dla", min_effect = 0.1 }]', r"\] heads\[0\]\.by: is 'dla'"),
    ('heads = [{ head = "L0H0", min_effect = 0.1, max_effect = -0.1 }]',
     r"\] heads\[0\] \(L0H0\): min_effect = 0\.1 is not below max_effect = -0\.1"),
    ('heads = []', r"\.heads\] must be a non-empty array"),
])
def test_a_head_effect_size_spec_that_cannot_hold_is_refused_at_load(tmp_path, table, message):
    path = tmp_path / "spec.toml"
    path.write_text(TEST_SPEC.read_text() + f"\n[claims.head-effect-size]\ntolerance = 0.1\n{table}\n")
    with pytest.raises(SpecError, match=r"\[claims\.head-effect-size" + message):
        load_spec(path)


# --- head-sparsity -----------------------------------------------------------------------------------------


def test_top_k_share_is_the_k_largest_mean_magnitudes_over_all_of_them():
    z = constant([[6.0, -2.0], [1.0, -1.0]])  # |means| 6, 2, 1, 1: total 10
    lab = Given(z=z)
    assert point(sparsity.top_k_share(lab, None, "z_patching", 1)) == pytest.approx(0.6)
    assert point(sparsity.top_k_share(lab, None, "z_patching", 2)) == pytest.approx(0.8)
    noisy = z.clone()
    noisy[1, 0] = torch.tensor([5.0, -3.0] * 4)  # mean 1 (a head's size is |its mean|, not its mean |effect|)
    assert float(sparsity.top_k_share(Given(z=noisy), None, "z_patching", 1).estimate) == pytest.approx(0.6)
    with pytest.raises(ValueError, match=r"top_k=4 with 4 heads"):
        sparsity.top_k_share(lab, None, "z_patching", 4)


def test_the_top_heads_are_chosen_on_the_first_prompts_and_measured_on_the_others():
    from circuit.decision import Inconclusive
    from circuit.measures import chosen_top_share

    lab = Given()
    values = torch.zeros(3, 8, dtype=torch.float64)
    values[0, :2] = 10.0  # head 0 is largest on the 2 prompts that choose (8 prompts, at least 5 measure)...
    values[1] = 4.0       # ...head 1 on the 6 that measure: there head 0 carries 0 of 4 + 1
    values[2] = 1.0
    assert point(chosen_top_share(lab, values, 1)) == pytest.approx(0.0)
    assert point(chosen_top_share(lab, values, 2)) == pytest.approx(4 / 5)  # heads 0 and 1 chosen
    with pytest.raises(Inconclusive, match=r"a set needs 6 prompts; this one has 5"):
        chosen_top_share(lab, values[:, :5], 1)


def test_equal_heads_give_the_uniform_share_and_a_min_share_there_is_refused():
    lab = Given(attribution=constant([[1.0, -1.0], [1.0, -1.0]]))
    assert point(sparsity.top_k_share(lab, None, "attribution", 1)) == pytest.approx(0.25)
    assert sparsity.says_nothing(0.6, 1, 4) is None
    assert sparsity.says_nothing(0.25, 1, 4) == (
        "[claims.head-sparsity] min_share = 0.25: with top_k = 1 of this model's 4 heads, equal heads already give a "
        "share of 0.25, so the claim says nothing; state a min_share above 0.25.")


def test_a_head_sparsity_spec_with_an_unknown_effect_or_a_share_above_1_is_refused(tmp_path):
    for table, message in (("top_k = 1\nmin_share = 0.5\nby = []", r"\[claims\.head-sparsity\] by: is \[\]"),
                           ("top_k = 1\nmin_share = 1.5",
                            r"\[claims\.head-sparsity\.min_share\] is 1\.5, but a fraction lies in \[0, 1\]")):
        path = tmp_path / "spec.toml"
        path.write_text(TEST_SPEC.read_text() + f"\n[claims.head-sparsity]\ntolerance = 0.1\n{table}\n")
        with pytest.raises(SpecError, match=message):
            load_spec(path)


# --- drafters ----------------------------------------------------------------------------------------------


def _draft_context(lab, n_layers, n_heads):
    from circuit.discover import DiscoveryOptions, DraftContext
    from circuit.spec import PromptSpec

    class Prompts:  # a stand-in set of 8 prompts; the values are given
        clean = tuple(range(8))

    prompts = PromptSpec(min_size=8, max_size=8, min_digits=2, max_digits=2, corruptions=("same_length",))
    return DraftContext(lab, (Prompts(),), (Prompts(),), DiscoveryOptions(prompts=prompts), n_layers, n_heads, {})


def test_the_drafters_state_what_given_values_support_and_say_why_not_otherwise():
    from circuit.discover import DRAFTERS

    z = constant([[8.0, 1.0], [0.5, 0.5]])  # one head carries 8 / 10
    attribution = constant([[0.1, -0.4], [0.05, 0.05]])
    lab = Given(clean=constant(0.3), attribution=attribution, z=z)
    ctx = _draft_context(lab, 2, 2)
    # no noise: the held-out intervals are points and the design margin 0, so each threshold is the value
    drafted, _ = DRAFTERS["small-clean-margin"](ctx)
    assert drafted.max_logit_diff == pytest.approx(0.3) and drafted.min_logit_diff == 0.0
    drafted, note = DRAFTERS["head-effect-size"](ctx)
    assert [(h.head, h.by, h.min_effect, h.max_effect) for h in drafted.heads] == [
        ("L0H1", "attribution", -0.4, -0.4), ("L0H0", "z_patching", 8.0, 8.0)], note
    drafted, note = DRAFTERS["head-sparsity"](ctx)  # k = 1: 0.8 by z; attribution's top 1 carries 0.4 / 0.6
    assert (drafted.top_k, drafted.min_share, drafted.by) == (1, 0.66, ("attribution", "z_patching")), note

    ctx = _draft_context(Given(clean=constant(20.0), attribution=constant([[0.1, 0.1], [0.1, 0.1]]),
                               z=constant([[1.0, 1.0], [1.0, 1.0]])), 2, 2)
    drafted, note = DRAFTERS["small-clean-margin"](ctx)
    assert drafted is None and note.startswith("not stated: the mean clean logit difference is not small: "
                                               "held-out estimate 20"), note
    drafted, note = DRAFTERS["head-sparsity"](ctx)
    assert drafted is None and note.startswith("not stated: no k <= 1 of 4 heads carries 0.5"), note


# --- falsifiability ----------------------------------------------------------------------------------------

HEADER = f"""
[model]
match = ["{DEFAULT_MODELS[0]}"]
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
"""

FALSE = HEADER + """
[claims.small-clean-margin]
max_logit_diff = 1.0
tolerance = 1
[claims.head-effect-size]
tolerance = 1
heads = [
    { head = "L0H0", by = "z_patching", min_effect = 60.0, max_effect = 100.0 },
    { head = "L0H1", by = "z_patching", min_effect = -100.0, max_effect = 1.0 },
]
[claims.head-sparsity]
top_k = 1
min_share = 0.9
by = ["attribution", "z_patching"]
tolerance = 0.1
[claims.pinned-prompt]
tolerance = 0.05
atol = {float32 = 1e-4, bfloat16 = 0.01, float16 = 0.001}
observations = [
    { prompt = "68 x 44 =", answer = " 2992", answer_token = 1, max_probability = 0.5, min_rank = 2 },
]
"""

TRUE = HEADER + """
[claims.small-clean-margin]
max_logit_diff = 100.0
tolerance = 1
[claims.head-effect-size]
tolerance = 1
heads = [{ head = "L0H0", by = "z_patching", min_effect = 5.0, max_effect = 60.0 }]
[claims.head-sparsity]
top_k = 2
min_share = 0.5
by = ["z_patching"]
tolerance = 0.1
[claims.pinned-prompt]
tolerance = 0.05
atol = {float32 = 1e-4, bfloat16 = 0.01, float16 = 0.001}
observations = [
    { prompt = "68 x 44 =", answer = " 2992", answer_token = 0, min_probability = 0.9, max_rank = 1 },
    { prompt = "68 x 44 =", answer = " 2992", answer_token = 1, min_probability = 0.9, max_rank = 1 },
    { prompt = "68 x 44 =", answer = " 2992", answer_token = 2, token = "8", min_rank = 2 },
]
"""


@pytest.fixture(scope="module")
def false_run(new_claim_runs):
    """This module's false spec, run with tests/test_claims_source_readings.py's (tests/conftest.py)."""
    return new_claim_runs["false"]


@pytest.fixture(scope="module")
def true_run(new_claim_runs):
    """This module's true spec, run with the other new claims' (tests/conftest.py)."""
    return new_claim_runs["true"]


@pytest.mark.parametrize(("test", "statistic"), [
    ("test_the_clean_margin_is_small", "mean clean logit difference (small"),
    ("test_head_effects_reach_their_lower_bounds",
     "smallest mean effect - min_effect among ['L0H0 (z_patching) in [60"),
    ("test_head_effects_stay_below_their_upper_bounds", "smallest max_effect - mean effect among"),
    ("test_few_heads_carry_most_of_the_direct_logit_attribution", "share of the summed |mean attribution| of all 12"),
    ("test_few_heads_carry_most_of_the_z_patching_effect", "share of the summed |mean z_patching| of all 12 heads"),
    ("test_pinned_probabilities_lie_in_their_stated_ranges", "smallest slack of the pinned probabilities"),
    ("test_pinned_tokens_have_their_stated_ranks", "smallest slack of the pinned ranks"),
])
def test_a_false_spec_refutes_each_size_claim_on_the_trained_model(false_run, test, statistic):
    from test_claims_falsifiable import verdicts

    result, evidence = false_run
    claim = verdicts(evidence[DEFAULT_MODELS[0]])[test]
    assert claim["outcome"] == "failed" and claim["verdict"] == "refuted", result.stdout[-3000:]
    assert claim["statistic"].startswith(statistic), claim["statistic"]
    assert claim["low"] <= claim["estimate"] <= claim["high"]
    if test.startswith("test_pinned"):  # one prompt: the interval is the value within atol, and the message says so
        assert claim["tail"] is None and "+- atol[float32] = 0.0001 (one prompt: no bootstrap)" in claim["statistic"]
        assert "Judged on an interval that is not over prompts: one prompt per reading" in result.stdout


@pytest.mark.parametrize("test", ["test_the_clean_margin_is_small", "test_the_clean_margin_is_positive",
                                  "test_head_effects_reach_their_lower_bounds",
                                  "test_head_effects_stay_below_their_upper_bounds",
                                  "test_few_heads_carry_most_of_the_z_patching_effect",
                                  "test_pinned_probabilities_lie_in_their_stated_ranges",
                                  "test_pinned_tokens_have_their_stated_ranks"])
def test_a_true_spec_supports_each_size_claim_on_the_trained_model(true_run, test):
    from test_claims_falsifiable import verdicts

    result, evidence = true_run
    claim = verdicts(evidence[DEFAULT_MODELS[0]])[test]
    assert claim["outcome"] == "passed" and claim["verdict"] == "supported", result.stdout[-3000:]
