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


def test_a_head_ranks_by_its_magnitude_among_distinct_effects():
    lab = FixedHeads(constant_per_head([[0.1, -3.0], [2.0, 0.5]]))
    assert float(measures.worst_head_rank(lab, None, heads("L0H1"), "z_patching").high) == 1
    assert float(measures.worst_head_rank(lab, None, heads("L1H0"), "z_patching").high) == 2
    assert float(measures.worst_head_rank(lab, None, heads("L0H1", "L0H0"), "z_patching").high) == 4


def test_all_zero_effects_rank_last_not_first():
    lab = FixedHeads(torch.zeros(3, 4, 8, dtype=torch.float64))
    rank = measures.worst_head_rank(lab, None, heads("L0H0"), "z_patching")
    assert float(rank.low) == float(rank.high) == 12  # tied with all 12 heads: nothing says it is first


def test_tied_heads_share_the_pessimistic_rank():
    lab = FixedHeads(constant_per_head([[5.0, -5.0, 1.0], [0.0, 0.0, 0.0]]))
    assert float(measures.worst_head_rank(lab, None, heads("L0H0"), "z_patching").high) == 2  # tied with L0H1 for first
    assert float(measures.worst_head_rank(lab, None, heads("L0H2"), "z_patching").high) == 3
    assert float(measures.worst_head_rank(lab, None, heads("L1H1"), "z_patching").high) == 6


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
        measures.worst_head_rank(FixedHeads(values), None, heads("L0H0"), "z_patching")


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


def test_a_failing_set_is_re_tested_with_other_resamples_at_the_per_set_level():
    from circuit.decision import FamilyWise, Rule

    lab, seen = FixedHeads(None), []

    def measure(lab, ps):  # fails on the first resamples, passes on the others
        seen.append((lab.level, lab.n_resamples, lab.seed))
        return _interval(0.1, 0.5) if lab.seed == 0 else _interval(0.3, 0.9)

    judged = lab.judge(Rule(">=", 0.8), "prompts", measure, n_sets=50, fresh_prompts=False)
    scheme = FamilyWise(lab.spec.statistics.family_level, 50)
    assert seen == [(scheme.level, 10_000, 0), (scheme.level, 10_000, 1)]
    assert judged.holds and "the failure did NOT reproduce" in judged.reproduced
    assert "Bonferroni over 50 sets" in judged.threshold

    always = lab.judge(Rule(">=", 0.8), "prompts", lambda lab, ps: _interval(0.1, 0.5), n_sets=3,
                       fresh_prompts=False)
    assert not always.holds and "the failure reproduced" in always.explain("described")
    passing = lab.judge(Rule(">=", 0.8), "prompts", lambda lab, ps: _interval(0.1, 0.9), n_sets=3)
    assert passing.holds and passing.reproduction is None
