"""Calibration of the verdicts, through the code that decides: both error rates, measured on data whose truth is known.

Each simulated claim test is judged by ``Lab.judge`` itself (the ``circuit.decision`` scheme: the rule's verdict,
Bonferroni spending over the looks, growth of an inconclusive set by fresh prompts up to the budget, the expanded
percentile bootstrap of ``Lab.ci``). Only the prompts are synthetic: a "prompt set" is a tensor of per-prompt
values drawn from a distribution with a known truth, and growing it draws fresh values from the same distribution.

Statistics of every kind the claims use:

- ``mean``: a mean over prompts (recovery, separation, signed attribution);
- ``ratio``: a ratio of means (the MLP share, band ratios);
- ``gap``: a component's |mean| minus that of the best component ranked beyond top_k (named heads and cells);
- ``correlation``: a correlation across heads of per-head means (value + pattern vs output);
- ``min``: the smallest of several means (the weakest named head's sign, the smallest layer effect);
- ``share``: the share of the summed |mean| of all components that the top k carry, chosen on other prompts (head
  sparsity); at its boundary the top two of 8 heads tie, the case where choosing on the measured prompts would
  count the winner's luck.

For each, the claim is made false by the smallest margin there is (its truth sits on the threshold, the hardest
case) and the false-support rate of one set, the binding case of the intersection-union test, must be at most the
stated level within three standard errors. Runs are enough that a rate of twice the level is caught (the
weakened judges below must fail the same check). The power is measured where the claim is true by the design
margin (``circuit.decision.required_margin``) over the ``ci`` profile's three sets.
"""

import math
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch

from circuit import decision
from circuit.decision import Rule, Scheme, Verdict, required_margin
from circuit.lab import Lab
from circuit.measures import chosen_top_share, top_k_gap
from circuit.spec import load_spec

SPEC = Path(__file__).resolve().parent.parent / "claims" / "specs" / "test-models.toml"
ALPHA = 0.05
SIZE, BUDGET = 16, 64
RUNS = 400  # a rate of 2 * ALPHA exceeds ALPHA + 3 standard errors (0.083) in about 87% of such measurements


@pytest.fixture(autouse=True)
def one_thread():
    """Thousands of small bootstraps: one intra-op thread is several times faster than two contending ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@dataclass(frozen=True)
class Synthetic:
    """A synthetic prompt set: per-prompt values ``[..., prompt]`` (its ``clean`` are the prompts, for counting)."""

    values: torch.Tensor

    @property
    def clean(self) -> range:
        return range(self.values.shape[-1])


class SyntheticLab(Lab):
    """A lab whose prompts are synthetic: everything that judges is ``Lab``'s own; only growing draws new values."""

    def __init__(self, draw, spec, seed=0):
        super().__init__(model=None, spec=spec)
        self.draw = draw
        self.generator = torch.Generator().manual_seed(seed)

    def at(self, **kw):
        lab = super().at(**kw)
        lab.__class__, lab.draw, lab.generator = SyntheticLab, self.draw, self.generator
        return lab

    def grow(self, first, current, look):
        return Synthetic(torch.cat([current.values, self.draw(first.values.shape[-1], self.generator)], -1))


def _spec():
    spec = load_spec(SPEC)
    return replace(spec, statistics=replace(spec.statistics, family_level=ALPHA, power=0.9),
                   prompts=replace(spec.prompts, min_size=SIZE, max_size=SIZE, budget=BUDGET))


def _normal(mean, sd=1.0):
    """A draw of ``n`` prompts of values with the given per-row means ``[...]`` and standard deviation."""
    mean = torch.as_tensor(mean, dtype=torch.float64)
    return lambda n, g: mean[..., None] + sd * torch.randn(*mean.shape, n, generator=g, dtype=torch.float64)


def _gap(top_k):
    def statistic(x):
        return top_k_gap(x.mean(-1).abs(), [0], top_k)
    return statistic


def _correlation(x):  # [..., 2, head, prompt]: per-head means of two quantities, correlated across heads
    means = x.mean(-1)
    a, b = means[..., 0, :], means[..., 1, :]
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.pow(2).sum(-1).sqrt() * b.pow(2).sum(-1).sqrt())


def _ratio(x):
    means = x.mean(-1)
    return means[..., 0] / means[..., 1]


HEAD_A = torch.linspace(-1, 1, 8, dtype=torch.float64)
HEAD_B = torch.tensor([-0.9, -1.1, -0.2, -0.5, 0.6, 0.1, 0.9, 1.3], dtype=torch.float64)
TRUE_CORRELATION = float(torch.corrcoef(torch.stack([HEAD_A, HEAD_B]))[0, 1])

# kind -> (statistic, draw at the boundary, rule, draw for a given true value of the statistic)
STATISTICS = {
    "mean": (None, Rule(">=", 0.0), lambda v: _normal(v)),
    "ratio": (_ratio, Rule(">=", 1.0), lambda v: _normal([2.0 * v, 2.0], 0.5)),
    "gap": (_gap(2), Rule(">", 0.0), lambda v: _normal([1.0 + v, 2.0, 1.5, 1.0, 0.5, 0.2])),
    "correlation": (_correlation, Rule(">=", TRUE_CORRELATION),
                    lambda v: _normal(torch.stack([HEAD_A, HEAD_B + 0 * v]), 1.0)),
    "min": (lambda x: x.mean(-1).amin(-1), Rule(">", 0.0), lambda v: _normal([v, v + 0.3, v + 1.0])),
    # two tied heads of 8, each carrying the share v: their means are 6v / (1 - 2v) against 1 for each of the others
    "share": (None, Rule(">", 0.3), lambda v: _normal([6 * v / (1 - 2 * v)] * 2 + [1.0] * 6)),
}

MEASURES = {"share": lambda lab, ps: chosen_top_share(lab, ps.values, 1)}
"""Kinds whose interval is not ``lab.ci`` of one statistic over all the prompts."""


def support_rate(kind: str, true_value: float, *, runs: int, n_sets: int, seed: int) -> float:
    """The rate at which claim tests of ``n_sets`` sets (each must be supported) declare the claim supported."""
    statistic, rule, draw_at = STATISTICS[kind]
    draw = draw_at(true_value)
    lab = SyntheticLab(draw, _spec(), seed=seed)
    generator = torch.Generator().manual_seed(10_000 + seed)
    supported = 0
    for run in range(runs):
        verdicts = []
        for _ in range(n_sets):
            first = Synthetic(draw(SIZE, generator))
            measure = MEASURES.get(kind, lambda lab, ps: lab.ci(ps.values, statistic))
            judged = lab.judge(rule, first, measure, n_sets=n_sets)
            verdicts.append(judged.verdict)
            if judged.verdict is not Verdict.SUPPORTED:
                break
        supported += all(v is Verdict.SUPPORTED for v in verdicts)
    return supported / runs


def assert_calibrated(rate: float, runs: int, what: str) -> None:
    bound = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / runs)
    assert rate <= bound, (f"{what}: a false claim was declared supported in {rate:.3f} of {runs} claim tests; stated "
                           f"level {ALPHA} (at most {bound:.3f} within three standard errors)")


@pytest.mark.parametrize("kind", sorted(STATISTICS))
def test_a_false_claim_is_supported_at_most_at_the_stated_level(kind):
    """The truth on the threshold: the claim is false by the smallest margin there is (for ``correlation`` the
    sample correlation of noisy means is pulled below the true one, so the boundary is conservative)."""
    boundary = {"mean": 0.0, "ratio": 1.0, "gap": 0.0, "correlation": 0.0, "min": 0.0, "share": 0.3}[kind]
    rate = support_rate(kind, boundary, runs=RUNS, n_sets=1, seed=1)
    print(f"\n{kind}: false claim (on its threshold) supported in {rate:.3f} of {RUNS} one-set claim tests")
    assert_calibrated(rate, RUNS, kind)


def test_a_claim_true_by_the_design_margin_is_supported_with_the_stated_power():
    """The mean claim, true by ``required_margin`` at the budget for the ``ci`` profile's 3 sets: supported by the
    whole claim test (every set) with about the spec's power 0.9, measured through the same judge."""
    scheme = Scheme(ALPHA, looks=BUDGET // SIZE, power=0.9, n_sets=3)
    margin = required_margin(1 / math.sqrt(BUDGET), scheme, Rule(">=", 0.0))
    runs = 200
    rate = support_rate("mean", margin, runs=runs, n_sets=3, seed=2)
    print(f"\nmean claim true by the design margin {margin:.3f} sd: supported in {rate:.3f} of {runs} claim tests of "
          f"3 sets (stated power 0.9)")
    assert rate >= 0.9 - 3 * math.sqrt(0.9 * 0.1 / runs)


@pytest.mark.parametrize("weakening", ["50% intervals", "no spending over looks"])
def test_a_weakened_judge_fails_the_calibration(weakening, monkeypatch):
    """Each weakening of the real judge makes the same calibration check fail: the test can tell. (Reading the plain
    percentile bootstrap instead of the expanded one is a milder weakening: over 16 prompts it raised the rate from
    0.043 to 0.060 in 400 runs, which no affordable number of runs tells from the level.)"""
    if weakening == "50% intervals":
        monkeypatch.setattr(decision.Scheme, "tail", lambda self, rule: 0.25)
    else:
        monkeypatch.setattr(decision.Scheme, "tail", lambda self, rule: self.alpha / rule.tails)
    rate = support_rate("mean", 0.0, runs=RUNS, n_sets=1, seed=1)
    print(f"\n{weakening}: false claim supported in {rate:.3f} of {RUNS}")
    with pytest.raises(AssertionError, match="a false claim was declared supported"):
        assert_calibrated(rate, RUNS, weakening)


def test_the_verdict_reads_the_interval_s_ends():
    """Supported, refuted and inconclusive for each kind of rule, on hand-made intervals."""
    from circuit.stats import Interval

    def interval(low, high):
        return Interval(torch.tensor((low + high) / 2), torch.tensor(low), torch.tensor(high), 0.95)

    at_least = Rule(">=", 0.5)
    assert at_least.verdict(interval(0.6, 0.9)) is Verdict.SUPPORTED
    assert at_least.verdict(interval(0.1, 0.4)) is Verdict.REFUTED
    assert at_least.verdict(interval(0.4, 0.6)) is Verdict.INCONCLUSIVE
    at_most = Rule("<=", 0.5)
    assert at_most.verdict(interval(0.1, 0.4)) is Verdict.SUPPORTED
    assert at_most.verdict(interval(0.6, 0.9)) is Verdict.REFUTED
    assert at_most.verdict(interval(0.4, 0.6)) is Verdict.INCONCLUSIVE
    differs = Rule("excludes", 0.0)
    assert differs.verdict(interval(-0.3, -0.1)) is Verdict.SUPPORTED
    assert differs.verdict(interval(-0.1, 0.1)) is Verdict.INCONCLUSIVE
    assert differs.verdict(interval(0.0, 0.0)) is Verdict.REFUTED  # no effect at all
    identity = Rule("<=", 1e-5, interval=False)
    assert identity.verdict(1e-6) is Verdict.SUPPORTED and identity.verdict(1e-3) is Verdict.REFUTED
    with pytest.raises(ValueError, match="not finite"):
        Rule(">=", float("nan"))


def test_an_inconclusive_set_grows_and_says_how_many_prompts_would_decide_it():
    """A set that straddles its threshold grows by batches up to the budget; when still inconclusive its message says
    so and estimates the prompts that would decide it."""
    lab = SyntheticLab(_normal(0.3), _spec(), seed=3)
    first = Synthetic(_normal(0.3)(SIZE, torch.Generator().manual_seed(4)))
    judged = lab.judge(Rule(">=", 0.25), first, lambda lab, ps: lab.ci(ps.values), n_sets=3)
    assert [look.n_prompts for look in judged.looks] == [16, 32, 48, 64]
    assert judged.verdict is Verdict.INCONCLUSIVE
    need = judged.prompts_to_decide()
    assert need is not None and need > 64
    message = judged.explain("described")
    assert "INCONCLUSIVE: the interval straddles the threshold" in message and f"about {need} prompts" in message
    assert "16 prompts: inconclusive; 32 prompts: inconclusive" in message
