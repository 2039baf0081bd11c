"""The Lab's claim statistics refuse to pretend: too few prompts, values that are not finite, a metric that
does not give one value per prompt, and heads whose effects tie (all zero, as on a model whose every
prompt is one token) do not rank first."""

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from circuit import measures
from circuit.lab import Lab
from circuit.metrics import MetricShapeError
from circuit.spec import NamedHead, load_spec
from circuit.stats import NonFiniteError, TooFewPromptsError

SPEC = Path(__file__).resolve().parent.parent / "claims" / "specs" / "test-models.toml"


class FixedHeads(Lab):
    """A lab whose per-head values are given (``[layer, head, batch]``), so that ranks can be worked out by hand."""

    def __init__(self, values, spec=None):
        super().__init__(model=None, spec=spec or load_spec(SPEC))
        self.values = values



@pytest.fixture(autouse=True)
def fixed_head_values(monkeypatch):
    """``measures.head_values`` of a :class:`FixedHeads` lab is its given values."""
    original = measures.head_values
    monkeypatch.setattr(measures, "head_values",
                        lambda lab, ps, by: lab.values if isinstance(lab, FixedHeads) else original(lab, ps, by))


def heads(*labels):
    return [NamedHead(label, "any", ("z_patching",)) for label in labels]


def constant_per_head(means, n_prompts=8):
    """Values whose mean over prompts is ``means`` in every resample (each head constant over prompts)."""
    return torch.tensor(means, dtype=torch.float64)[..., None].expand(*torch.tensor(means).shape, n_prompts)


def _gap(lab, labels, top_k):
    return float(measures.head_gap(lab, None, heads(*labels), "z_patching", top_k).estimate)


def test_a_named_head_is_compared_with_the_best_head_beyond_top_k():
    lab = FixedHeads(constant_per_head([[0.1, -3.0], [2.0, 0.5]]))  # magnitudes 3, 2, 0.5, 0.1
    assert _gap(lab, ["L0H1"], 1) == pytest.approx(3.0 - 2.0)
    assert _gap(lab, ["L1H0"], 2) == pytest.approx(2.0 - 0.5)
    assert _gap(lab, ["L1H0"], 1) == pytest.approx(2.0 - 2.0)  # ranked 2nd: not beyond the best head ranked 2nd
    assert _gap(lab, ["L0H1", "L0H0"], 2) == pytest.approx(0.1 - 0.5)  # the weakest named head decides: below 0


def test_all_zero_effects_give_no_gap():
    lab = FixedHeads(torch.zeros(3, 4, 8, dtype=torch.float64))
    gap = measures.head_gap(lab, None, heads("L0H0"), "z_patching", 3)
    assert float(gap.low) == float(gap.high) == 0  # tied with every head: nothing says it is in the top 3


def test_top_k_must_leave_a_head_beyond_it():
    lab = FixedHeads(constant_per_head([[5.0, -5.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"top_k=4 with 4 components: every component is in the top 4"):
        measures.head_gap(lab, None, heads("L0H0"), "z_patching", 4)


def test_claim_intervals_need_the_spec_s_minimum_of_prompts():
    lab = FixedHeads(torch.zeros(1))
    assert lab.spec.statistics.min_prompts == 5
    with pytest.raises(TooFewPromptsError, match=r"over 4 prompt\(s\): an interval needs at least 5 distinct"):
        lab.ci(torch.arange(4.0))
    assert float(lab.ci(torch.arange(5.0)).estimate) == 2.0
    fewer = FixedHeads(None, spec=replace(lab.spec, statistics=replace(lab.spec.statistics, min_prompts=3)))
    assert float(fewer.ci(torch.arange(3.0)).estimate) == 1.0


def test_a_claim_statistic_over_values_that_are_not_finite_fails_with_the_reason():
    values = constant_per_head([[1.0, 2.0], [3.0, 4.0]])
    values = values.clone()
    values[1, 0, 3] = float("nan")
    with pytest.raises(NonFiniteError, match=r"^Values to bootstrap over 8 prompts are not finite: 1 NaN and 0 "
                                             r"infinite of 32 \(shape \(2, 2, 8\), first at index \(1, 0, 3\)\)"):
        measures.head_gap(FixedHeads(values), None, heads("L0H0"), "z_patching", 1)


class FixedMetric(Lab):
    """A lab whose runs give fixed logits and whose metric is any callable, to test how its values are checked."""

    def __init__(self, metric, n_prompts=8):
        super().__init__(model=SimpleNamespace(name="fixed"), spec=load_spec(SPEC))
        self.metric, self.logits = metric, torch.zeros(n_prompts, 5, 11)

    def inputs(self, ps):
        return None, None, self.metric

    def run(self, ps, which="clean"):
        return self.logits, None


class Prompts:
    """A stand-in prompt set of 8 clean prompts (hashable, as the lab's cache needs)."""

    clean = tuple(range(8))


def test_a_metric_that_returns_3_values_for_8_prompts_is_refused():
    lab = FixedMetric(lambda logits: logits[:3, -1, 0])
    with pytest.raises(MetricShapeError, match=r"^The spec's metric returned shape \(3,\) for a batch of 8 prompts: a "
                                               r"metric returns one value per prompt, shape \(8,\)"):
        lab.logit_diffs(Prompts())
    clean, corrupted = FixedMetric(lambda logits: logits[:, -1, 0]).logit_diffs(Prompts())
    assert clean.shape == corrupted.shape == (8,)


def _interval(low, high):
    from circuit.stats import Interval

    return Interval(torch.tensor((low + high) / 2), torch.tensor(low), torch.tensor(high), 0.95)


def test_a_claim_is_judged_at_the_look_level_and_stops_at_the_first_decided_look():
    from circuit.decision import Rule, Verdict

    lab, seen = FixedHeads(None), []

    def measure(lab, ps):
        seen.append((round(lab.level, 6), lab.expand))
        return _interval(0.85, 0.95)

    judged = lab.judge(Rule(">=", 0.8), Prompts(), measure, n_sets=50)
    looks = lab.spec.prompts.prompt_budget // 8
    assert seen == [(round(1 - 2 * lab.spec.statistics.family_level / looks, 6), True)]
    assert judged.verdict is Verdict.SUPPORTED and judged.holds
    refuted = lab.judge(Rule(">=", 0.8), Prompts(), lambda lab, ps: _interval(0.1, 0.5), n_sets=3)
    assert refuted.verdict is Verdict.REFUTED and len(refuted.looks) == 1
    assert "REFUTED: the interval lies wholly on the other side" in refuted.explain("described")
