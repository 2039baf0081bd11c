"""Decisions: how a claim's interval is judged against its threshold, with a stated error rate.

A claim test is a hypothesis property checked on several prompt sets (``max_examples`` of the profile: 3
under ``ci``, 50 under ``thorough``). Judging each set on its own 95% interval would make a family of tests
with no stated error rate: a true claim sitting at its threshold would fail some set of 50 most of the time.
So a claim is *refuted* on a set only when the data exclude it, at a level adjusted for the number of sets
(:class:`FamilyWise`, Bonferroni): with a family-wise level ``alpha`` (the spec's ``[statistics]
family_level``, 0.05 by default) and ``n`` sets, a claim ``statistic >= t`` fails a set when the set's
``1 - alpha / n`` upper bound (the high end of the ``1 - 2 alpha / n`` two-sided bootstrap interval) lies
below ``t``. By the union bound, a claim whose statistic truly meets its threshold is refuted on any of its
``n`` sets with probability at most ``alpha`` (as far as the bootstrap's tail is right). Reading the *near*
end instead (the old ``CI low >= t``) asks each set to prove the claim: a true claim at its threshold then
fails nearly always, and no level can be stated for it.

A failure must reproduce before the claim is declared false (:func:`declared_false`): the failing set is
measured again with other bootstrap resamples and, where the claim allows, on fresh prompts of the same
shape, and judged by the same rule; only when that fails too is the claim false. The reproduction can only
lower the false-rejection rate; ``tests/test_calibration.py`` measures both rates on synthetic data.

A :class:`Rule` is written once per claim and gives the decision's text, its verdict and its margin, so the
claims and discovery (``circuit.discover``) cannot disagree on what a threshold means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["FamilyWise", "Judgement", "Rule", "declared_false"]

_SIDES = {">=": "high", ">": "high", "<=": "low", "<": "low", "excludes": "both"}


@dataclass(frozen=True)
class Rule:
    """``CI <side> <kind> <threshold>``: a claim that the statistic is ``<kind> <threshold>``, and how an
    interval refutes it.

    A claim ``statistic >= t`` (or ``> t``) is refuted on a set when its whole interval lies below ``t``: the
    rule reads the interval's *high* end (``"CI high >= 0.8"``); a claim ``<= t`` (``< t``) reads its *low*
    end. So a claim that truly holds is refuted only when the interval misses the true value on that side,
    which the scheme's level bounds (:class:`FamilyWise`). ``"excludes"`` is the one rule that needs positive
    evidence (the task-solved precondition: the interval lies entirely on one side of ``t``); its error rate
    is not bounded by the scheme. ``name`` labels the threshold in the text (``"top_k"`` gives
    ``"CI low <= top_k = 3"``). A plain number (a statistic without an interval, e.g. an identity's largest
    error) is compared itself.
    """

    kind: str
    threshold: float
    name: str = ""
    interval: bool = True
    """Whether the rule reads an interval (``False``: a plain number, e.g. a maximum over positions)."""

    def __post_init__(self) -> None:
        if self.kind not in _SIDES:
            raise ValueError(f"Rule kind {self.kind!r} is not one of {sorted(_SIDES)}.")

    @property
    def side(self) -> str:
        """``"low"``, ``"high"`` or ``"both"``: the end of the interval the rule reads."""
        return _SIDES[self.kind]

    @property
    def text(self) -> str:
        """The rule in words, e.g. ``"CI low >= 0.8"`` (for a plain value, ``">= 0.8"``)."""
        value = f"{self.name} = {self.threshold:g}" if self.name else f"{self.threshold:g}"
        if self.kind == "excludes":
            return f"CI excludes {value}" if self.interval else f"!= {value}"
        return f"CI {self.side} {self.kind} {value}" if self.interval else f"{self.kind} {value}"

    def _ends(self, value: Any) -> tuple[Any, Any]:
        if hasattr(value, "low"):
            return value.low, value.high
        return value, value

    def holds(self, value: Any) -> Any:
        """Whether the rule holds for ``value`` (an ``Interval`` or a number): a bool for one interval, a bool
        tensor for an interval of tensors (elementwise, as the calibration simulates many runs at once)."""
        low, high = self._ends(value)
        t = self.threshold
        result = {">=": lambda: high >= t, ">": lambda: high > t, "<=": lambda: low <= t, "<": lambda: low < t,
                  "excludes": lambda: (low > t) | (high < t)}[self.kind]()
        return result if getattr(result, "dim", lambda: 0)() > 0 else bool(result)

    def margin(self, value: Any) -> float:
        """How far the compared end lies on the passing side of the threshold (negative: it fails)."""
        low, high = self._ends(value)
        low, high, t = float(low), float(high), self.threshold
        return {"high": high - t, "low": t - low, "both": max(low - t, t - high)}[self.side]


@dataclass(frozen=True)
class FamilyWise:
    """Bonferroni over the prompt sets a claim test is judged on: each set at one-sided ``alpha / n_sets``."""

    alpha: float
    """The family-wise level: the largest chance that a true claim is declared false in one test run."""
    n_sets: int
    """Prompt sets the test is judged on (hypothesis' ``max_examples`` of the active profile)."""

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"family-wise level {self.alpha} must be between 0 and 1 (e.g. 0.05).")
        if self.n_sets < 1:
            raise ValueError(f"n_sets={self.n_sets}: a claim is judged on at least one prompt set.")

    @property
    def per_set(self) -> float:
        """One-sided error rate of one set's decision: ``alpha / n_sets``."""
        return self.alpha / self.n_sets

    @property
    def level(self) -> float:
        """The two-sided interval level whose ends are the ``per_set`` and ``1 - per_set`` quantiles."""
        return 1 - 2 * self.per_set

    def n_resamples(self, at_least: int) -> int:
        """Bootstrap resamples for the extreme quantile: at least 10 resamples beyond it (and ``at_least``)."""
        return max(at_least, math.ceil(10 / self.per_set))

    @property
    def text(self) -> str:
        return (f"one-sided {self.per_set:.3g} per set, a {100 * self.level:.4g}% CI: Bonferroni over {self.n_sets} "
                f"sets, family-wise {self.alpha:g}")


def declared_false(rule: Rule, first: Any, again: Any | None) -> Any:
    """Whether a claim is declared false on a set: ``first`` fails the rule, and so does ``again`` (the same set's
    statistic from other resamples, on fresh prompts where the claim allows; ``None``: no reproduction).
    Elementwise over intervals of tensors."""
    def fails(value: Any) -> Any:
        holds = rule.holds(value)
        return (not holds) if isinstance(holds, bool) else ~holds

    return fails(first) if again is None else fails(first) & fails(again)


@dataclass(frozen=True)
class Judgement:
    """A claim's decision on one prompt set: the interval, the rule, the scheme, and any reproduction."""

    rule: Rule
    scheme: FamilyWise
    interval: Any
    reproduction: tuple[Any, Any] | None = None
    """(prompts, interval) of the re-test of a failing set (fresh prompts and resamples), or None."""

    @property
    def holds(self) -> bool:
        return not declared_false(self.rule, self.interval,
                                  None if self.reproduction is None else self.reproduction[1])

    @property
    def threshold(self) -> str:
        return f"{self.rule.text} ({self.scheme.text})"

    @property
    def reproduced(self) -> str:
        """The re-test in words ('' when the set passed)."""
        if self.reproduction is None:
            return ""
        prompts, interval = self.reproduction
        verdict = "the failure reproduced" if not self.rule.holds(interval) else "the failure did NOT reproduce"
        return f"Re-tested with other resamples on {prompts!r}: {interval}; {verdict}."

    def explain(self, described: str) -> str:
        """An assertion message: the evidence's paragraph, the scheme and the re-test."""
        return "\n".join(x for x in (described, f"Judged {self.scheme.text}.", self.reproduced) if x)
