"""Calibration of the claims' decisions: a true claim is declared false at most at the stated family-wise rate.

Synthetic per-prompt statistics (normal, sd 1, 8 prompts a set: fewer than the claims' 16, where the
percentile bootstrap is at its narrowest) with a known true mean are judged by the same code as the claims:
``circuit.decision`` (the rule, the Bonferroni scheme, a failure declared only when it reproduces) and
``circuit.stats.bootstrap_ci`` (the interval, at the per-set level and resamples the scheme asks for). Each
simulated test run draws the profile's number of sets (3 as under ``ci``, 50 as under ``thorough``); a run
rejects the claim when a set fails and its re-test on fresh prompts with other resamples fails too.

The claim is "mean >= 0". At true mean 0 (the boundary: the claim holds) the rejection rate must stay at most
the family-wise level, within simulation error; at true means below 0 (the claim is false, by 0.5, 1 and 1.5
sd) the rejection rate is the power, printed (``pytest -s``) and stated in the README.
"""

import math

import pytest
import torch

from circuit.decision import FamilyWise, Rule, declared_false
from circuit.stats import Interval, bootstrap_ci

ALPHA = 0.05
N_PROMPTS = 8
RULE = Rule(">=", 0.0)
CHUNK = 500  # sets bootstrapped at once


def _intervals(values: torch.Tensor, scheme: FamilyWise, seed: int) -> Interval:
    """The claims' interval of each row of ``values`` ``[sets, prompt]``, in chunks (memory)."""
    parts = [bootstrap_ci(chunk, level=scheme.level, n_resamples=scheme.n_resamples(1000), seed=seed + i)
             for i, chunk in enumerate(values.split(CHUNK))]
    return Interval(*(torch.cat([getattr(p, k) for p in parts]) for k in ("estimate", "low", "high")), scheme.level)


def rejection_rate(true_mean: float, n_sets: int, runs: int, seed: int) -> tuple[float, float]:
    """(rate of runs declaring the claim false, rate of runs where some set failed before its re-test)."""
    scheme = FamilyWise(ALPHA, n_sets)
    generator = torch.Generator().manual_seed(seed)
    values = true_mean + torch.randn(runs * n_sets, N_PROMPTS, generator=generator, dtype=torch.float64)
    first = _intervals(values, scheme, seed=2 * seed)
    fails = ~RULE.holds(first)
    declared = torch.zeros_like(fails)
    if bool(fails.any()):  # re-test the failing sets: fresh prompts of the same shape, other resamples
        fresh = true_mean + torch.randn(int(fails.sum()), N_PROMPTS, generator=generator, dtype=torch.float64)
        again = _intervals(fresh, scheme, seed=2 * seed + 1)
        picked = Interval(first.estimate[fails], first.low[fails], first.high[fails], first.level)
        declared[fails] = declared_false(RULE, picked, again)
    per_run = declared.reshape(runs, n_sets).any(-1)
    return float(per_run.double().mean()), float(fails.reshape(runs, n_sets).any(-1).double().mean())


@pytest.mark.parametrize(("n_sets", "runs"), [(3, 600), (50, 120)])
def test_a_true_claim_is_rejected_at_most_at_the_family_wise_level(n_sets, runs):
    rate, unconfirmed = rejection_rate(0.0, n_sets, runs, seed=n_sets)
    error = 3 * math.sqrt(ALPHA * (1 - ALPHA) / runs)  # three standard errors of a rate of ALPHA
    print(f"\ntrue claim at its threshold, {n_sets} sets, {runs} runs: declared false in {rate:.3f} of runs "
          f"(some set failed before its re-test in {unconfirmed:.3f}); stated family-wise level {ALPHA}")
    assert rate <= ALPHA + error, (
        f"A true claim (mean 0, rule {RULE.text}) was declared false in {rate:.3f} of {runs} runs of {n_sets} sets; "
        f"the stated family-wise level is {ALPHA} (+ {error:.3f} simulation error).")


@pytest.mark.parametrize(("n_sets", "runs"), [(3, 300), (50, 30)])
def test_false_claims_are_rejected_with_power_growing_with_the_effect(n_sets, runs):
    powers = {effect: rejection_rate(-effect, n_sets, runs, seed=100 * n_sets + i)[0]
              for i, effect in enumerate((0.5, 1.0, 1.5))}
    print(f"\npower ({n_sets} sets, {runs} runs, {N_PROMPTS} prompts, effect in sd below the threshold): "
          + ", ".join(f"{effect:g} sd: {power:.2f}" for effect, power in powers.items()))
    rates = list(powers.values())
    assert rates == sorted(rates), f"power does not grow with the effect: {powers}"
    assert rates[-1] >= 0.9, f"a claim false by 1.5 sd is rejected in only {rates[-1]:.2f} of runs: {powers}"


def test_the_scheme_states_its_levels():
    scheme = FamilyWise(0.05, 50)
    assert scheme.per_set == pytest.approx(0.001)
    assert scheme.level == pytest.approx(0.998)
    assert scheme.n_resamples(1000) == 10_000  # 10 resamples beyond the 0.1% quantile
    assert "Bonferroni over 50 sets, family-wise 0.05" in scheme.text
    with pytest.raises(ValueError, match="family-wise level 1.5 must be between 0 and 1"):
        FamilyWise(1.5, 3)


@pytest.mark.parametrize(("rule", "text", "passing", "failing", "margin"), [
    (Rule(">=", 0.8), "CI high >= 0.8", (0.5, 0.85), (0.5, 0.75), 0.05),
    (Rule(">", 0.0), "CI high > 0", (-1.0, 0.5), (-1.0, 0.0), 0.5),
    (Rule("<=", 3, "top_k"), "CI low <= top_k = 3", (3.0, 9.0), (4.0, 9.0), 0.0),
    (Rule("excludes", 0), "CI excludes 0", (0.1, 2.0), (-0.1, 2.0), 0.1),
    (Rule("<=", 1e-5, "atol[float32]", interval=False), "<= atol[float32] = 1e-05", 1e-6, 2e-5, 9e-6),
])
def test_a_rule_gives_its_text_verdict_and_margin(rule, text, passing, failing, margin):
    def value(x):
        if isinstance(x, tuple):
            low, high = torch.tensor(x[0]), torch.tensor(x[1])
            return Interval((low + high) / 2, low, high, 0.95)
        return x

    assert rule.text == text
    assert rule.holds(value(passing)) is True and rule.holds(value(failing)) is False
    assert rule.margin(value(passing)) == pytest.approx(margin)
    assert rule.margin(value(failing)) <= 0
    assert declared_false(rule, value(failing), value(failing)) and not declared_false(rule, value(failing),
                                                                                        value(passing))


def test_an_unknown_rule_is_refused():
    with pytest.raises(ValueError, match=r"Rule kind '=>' is not one of"):
        Rule("=>", 1.0)
