"""Verdicts: whether a claim is supported, refuted, or not decided by its evidence, with both error rates stated.

A claim test measures a statistic with a bootstrap interval over prompts and compares it with the spec's
threshold through a :class:`Rule`. The interval has three places to lie:

- **supported**: wholly on the claimed side of the threshold (``statistic >= t``: the interval's *low* end is
  at least ``t``);
- **refuted**: wholly on the other side (its *high* end is below ``t``);
- **inconclusive**: it straddles the threshold. The evidence says neither; a claims suite that passed such a
  test would pass a claim for lack of evidence, so an inconclusive test fails unless the user asks otherwise.

A claim test passes only when the claim is supported on *every* prompt set it draws (hypothesis' examples:
3 under ``ci``, 50 under ``thorough``). That is an intersection-union test: the claim is declared supported
only when each set's test rejects "the claim is false", so the chance of declaring a false claim supported is
at most the largest of the per-set chances, ``alpha`` (the spec's ``[statistics] family_level``), however many
sets are drawn.

Within a set the test may look more than once (:class:`Scheme`): a set that is inconclusive grows by a batch
of fresh prompts of its shape, up to the spec's ``[prompts] budget``, and is judged again. Each of the
``looks = budget // set size`` looks spends ``alpha / looks`` (Bonferroni spending: looking again cannot
raise the false-support rate above ``alpha``, however the looks are correlated). Each look reads the
interval's one-sided ``1 - alpha / looks`` bound; ``circuit.stats`` widens the percentile bootstrap for the
number of prompts (the expanded percentile interval), without which the percentile bootstrap over 16 prompts
misses at about twice its stated rate.

The other error, a true claim not supported, is the test's power: a claim whose statistic lies beyond its
threshold by ``margin`` is supported at the budget with probability about ``power`` (the spec's ``[statistics]
power``, per claim test over its sets) when ``margin >= (z(1 - alpha / looks) + z(power ** (1 / n_sets))) *
se(budget)``; :func:`required_margin` computes it and discovery sets thresholds with it. Both rates are
measured through :func:`judge` itself on synthetic data with a known truth (``tests/test_calibration.py``).

A rule's identity case (a plain number, no interval: the bridge's largest difference from HF) is supported or
refuted by the number itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from statistics import NormalDist
from typing import Any

__all__ = ["Inconclusive", "Judgement", "Look", "Rule", "Scheme", "Verdict", "judge", "prompts_to_decide",
           "required_margin"]

_NORMAL = NormalDist()


class Verdict(str, Enum):
    """What a claim's evidence says."""

    SUPPORTED = "supported"
    REFUTED = "refuted"
    INCONCLUSIVE = "inconclusive"

    def __str__(self) -> str:
        return self.value


class Inconclusive(Exception):
    """A claim cannot be judged on these prompts (a precondition does not hold); the message says why."""


_KINDS = (">=", ">", "<=", "<", "excludes")


@dataclass(frozen=True)
class Rule:
    """A claim that the statistic is ``<kind> <threshold>`` (``excludes``: differs from the threshold, either way).

    ``name`` labels the threshold in the text (``"min_recovery"`` gives ``"CI low >= min_recovery = 0.8"``).
    ``interval=False``: the statistic is a plain number (an identity's largest error), compared itself.
    """

    kind: str
    threshold: float
    name: str = ""
    interval: bool = True

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"Rule kind {self.kind!r} is not one of {list(_KINDS)}.")
        if not math.isfinite(self.threshold):
            raise ValueError(f"Rule threshold {self.threshold!r} is not finite.")

    @property
    def tails(self) -> int:
        """1 for a one-sided claim; 2 for ``excludes`` (either side may support it)."""
        return 2 if self.kind == "excludes" else 1

    @property
    def text(self) -> str:
        """The rule in words, naming the end of the interval that supports the claim (``"CI low >= 0.8"``)."""
        value = f"{self.name} = {self.threshold:g}" if self.name else f"{self.threshold:g}"
        if not self.interval:
            return f"!= {value}" if self.kind == "excludes" else f"{self.kind} {value}"
        if self.kind == "excludes":
            return f"CI excludes {value}"
        return f"CI {'low' if self.kind in ('>=', '>') else 'high'} {self.kind} {value}"

    @staticmethod
    def _ends(value: Any) -> tuple[float, float, float]:
        if hasattr(value, "low"):
            return float(value.estimate), float(value.low), float(value.high)
        return float(value), float(value), float(value)

    def verdict(self, value: Any) -> Verdict:
        """The verdict of ``value`` (an interval with ``estimate``, ``low``, ``high``, or a plain number)."""
        _, low, high = self._ends(value)
        if not (math.isfinite(low) and math.isfinite(high)):
            return Verdict.INCONCLUSIVE
        t = self.threshold
        supported, refuted = {
            ">=": (low >= t, high < t), ">": (low > t, high <= t),
            "<=": (high <= t, low > t), "<": (high < t, low >= t),
            "excludes": (low > t or high < t, low == high == t),
        }[self.kind]
        if supported:
            return Verdict.SUPPORTED
        if refuted or not self.interval:
            return Verdict.REFUTED
        return Verdict.INCONCLUSIVE

    def holds(self, value: Any) -> bool:
        """Whether ``value`` supports the claim."""
        return self.verdict(value) is Verdict.SUPPORTED

    def worsening(self, before: float, after: float) -> float:
        """How far the statistic moved toward failing this rule from ``before`` to ``after`` (negative: away
        from failing). A claim ``>= t`` fails downward, ``<= t`` upward, ``excludes t`` toward ``t`` from
        either side (the move in distance from ``t``)."""
        if self.kind in (">=", ">"):
            return before - after
        if self.kind in ("<=", "<"):
            return after - before
        return abs(before - self.threshold) - abs(after - self.threshold)


@dataclass(frozen=True)
class Scheme:
    """How a claim test spends its false-support rate ``alpha``: every set must be supported (intersection-union
    over ``n_sets``), each set looks at most ``looks`` times, each look at one-sided ``alpha / looks``."""

    alpha: float
    """The largest chance that a false claim is declared supported by one claim test (spec ``family_level``)."""
    looks: int = 1
    """Looks per set: the first, and one after each batch of fresh prompts (``budget // set size``)."""
    power: float = 0.9
    """The chance that a claim true by the design margin is supported by the whole claim test."""
    n_sets: int = 1
    """Prompt sets the claim test draws (hypothesis' ``max_examples``); each must be supported."""

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha={self.alpha} must be between 0 and 1 (e.g. 0.05).")
        if not 0 < self.power < 1:
            raise ValueError(f"power={self.power} must be between 0 and 1 (e.g. 0.9).")
        if self.looks < 1 or self.n_sets < 1:
            raise ValueError(f"looks={self.looks}, n_sets={self.n_sets}: each must be at least 1.")

    def tail(self, rule: Rule) -> float:
        """The one-sided error of one look at one end of the interval."""
        return self.alpha / self.looks / rule.tails

    def level(self, rule: Rule) -> float:
        """The two-sided level of each look's interval (its ends are the ``tail`` and ``1 - tail`` bounds)."""
        return 1 - 2 * self.tail(rule)

    @property
    def power_per_set(self) -> float:
        """The power each set needs for the whole test to reach :attr:`power` (every set must be supported)."""
        return self.power ** (1 / self.n_sets)

    def text(self, rule: Rule) -> str:
        return (f"supported only if every one of {self.n_sets} prompt set(s) supports it, each set looking up to "
                f"{self.looks} time(s) at one-sided {self.tail(rule):.3g} (false support <= {self.alpha:g} per "
                f"claim test)")


@dataclass(frozen=True)
class Look:
    """One look at a set: how many prompts, the interval, and its verdict."""

    n_prompts: int
    interval: Any
    verdict: Verdict


@dataclass(frozen=True)
class Judgement:
    """A claim's verdict on one prompt set, with every look that led to it."""

    rule: Rule
    scheme: Scheme
    looks: tuple[Look, ...]
    prompts: Any = None
    """The prompts of the last look (the drawn set, grown by the batches added while inconclusive)."""
    reason: str = ""
    """Why the claim could not be judged (a precondition), when it could not."""
    bound: str = ""
    """How the interval was made when it is not a bootstrap over prompts (e.g. one pinned prompt's value within a
    stated numerical tolerance): the failure message says this instead of the prompt sets' error rates."""

    @property
    def verdict(self) -> Verdict:
        return self.looks[-1].verdict if self.looks and not self.reason else Verdict.INCONCLUSIVE

    @property
    def holds(self) -> bool:
        return self.verdict is Verdict.SUPPORTED

    @property
    def interval(self) -> Any:
        return self.looks[-1].interval if self.looks else None

    @property
    def threshold(self) -> str:
        return self.rule.text

    def prompts_to_decide(self) -> int | None:
        """About how many prompts the last look would need to decide (None: no estimate, or decided)."""
        if self.verdict is not Verdict.INCONCLUSIVE or not self.looks or not self.rule.interval:
            return None
        last = self.looks[-1]
        return prompts_to_decide(self.rule, last.interval, last.n_prompts, self.scheme.tail(self.rule),
                                 self.scheme.power_per_set)

    @property
    def history(self) -> str:
        """The looks in words (empty for one look)."""
        if len(self.looks) < 2:
            return ""
        return "; ".join(f"{look.n_prompts} prompts: {look.verdict}" for look in self.looks)

    def explain(self, described: str) -> str:
        """The failure message: the evidence, the verdict, the looks and what would decide it."""
        lines = [described]
        if self.reason:
            lines.append(f"INCONCLUSIVE: {self.reason}")
        elif self.verdict is Verdict.INCONCLUSIVE:
            need = self.prompts_to_decide()
            more = (f"about {need} prompts per set would likely decide it" if need else
                    "no number of prompts is likely to decide it (the estimate sits on the threshold)")
            lines.append(f"INCONCLUSIVE: the interval straddles the threshold; {more} (this set was measured on "
                         f"{self.looks[-1].n_prompts if self.looks else '?'}: raise [prompts] budget, or the claim's "
                         f"effect is smaller than stated).")
        elif self.verdict is Verdict.REFUTED:
            lines.append("REFUTED: the interval lies wholly on the other side of the threshold.")
        if self.history:
            lines.append(f"Looks: {self.history}.")
        if self.bound:
            lines.append(f"Judged on an interval that is not over prompts: {self.bound}.")
        elif self.rule.interval:
            lines.append(f"Judged {self.scheme.text(self.rule)}.")
        else:
            lines.append("Judged on the number itself (an identity or a count: no interval, no error rate).")
        return "\n".join(lines)


def judge(rule: Rule, scheme: Scheme, measure: Callable[[Any], Any], prompts: Any,
          grow: Callable[[Any, int], Any] | None = None) -> Judgement:
    """The verdict of ``rule`` on ``prompts``: ``measure(prompts)`` is the statistic's interval at
    ``scheme.level(rule)``; while it is inconclusive and looks remain, ``grow(prompts, look)`` adds a batch of
    fresh prompts (None: no more to add) and the grown set is measured again. Stops at the first decided look.
    ``measure`` may raise :class:`Inconclusive` (a precondition): the judgement is then inconclusive, with why.
    """
    looks: list[Look] = []
    for look in range(scheme.looks):
        try:
            interval = measure(prompts)
        except Inconclusive as why:
            return Judgement(rule, scheme, tuple(looks), prompts, reason=str(why))
        verdict = rule.verdict(interval)
        looks.append(Look(_count(prompts), interval, verdict))
        if verdict is not Verdict.INCONCLUSIVE or look + 1 == scheme.looks or grow is None:
            break
        grown = grow(prompts, look + 1)
        if grown is None:
            break
        prompts = grown
    return Judgement(rule, scheme, tuple(looks), prompts)


def _count(prompts: Any) -> int:
    clean = getattr(prompts, "clean", prompts)
    if hasattr(clean, "shape"):
        return int(clean.shape[-1])
    try:
        return len(clean)
    except TypeError:
        return 1


def prompts_to_decide(rule: Rule, interval: Any, n_prompts: int, tail: float, power: float) -> int | None:
    """About how many prompts would put ``interval``'s estimate ``power``-likely beyond a look at ``tail``.

    The standard error is read off the interval's width (``(high - low) / (2 z(1 - tail))``) and shrinks as
    ``1 / sqrt(n)``; the estimate is assumed to stay where it is. None when the estimate sits on the threshold.
    """
    estimate, low, high = Rule._ends(interval)
    distance = abs(estimate - rule.threshold)
    z = _NORMAL.inv_cdf(1 - tail)
    se = (high - low) / (2 * z)
    if distance <= 0 or not math.isfinite(se):
        return None
    return max(n_prompts, math.ceil(n_prompts * ((z + _NORMAL.inv_cdf(power)) * se / distance) ** 2))


def required_margin(se_at_budget: float, scheme: Scheme, rule: Rule) -> float:
    """The distance from the threshold at which a claim is supported with ``scheme.power`` over the whole test:
    ``(z(1 - tail) + z(power ** (1 / n_sets))) * se`` at the budget."""
    return (_NORMAL.inv_cdf(1 - scheme.tail(rule)) + _NORMAL.inv_cdf(scheme.power_per_set)) * se_at_budget
