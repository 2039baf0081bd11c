"""Numbers as a person reads them: few digits, but never so few that two different numbers print alike.

A claim's message and report print a statistic, its interval and the threshold the rule compares it with.
Four significant digits read well, but they can lie: an interval ``[0.9999935, 0.9999987]`` judged by
``CI high >= 1`` prints as ``[1, 1]`` next to ``>= 1``, and the reader sees a rule that holds reported as
failing. :func:`digits_apart` is the one rule for this: the fewest significant digits, at least
:data:`DIGITS`, at which every number printed differs from every other one (and from the thresholds it is
read against) whenever the two really differ. :func:`interval_text` prints an estimate and its interval
with those digits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["DIGITS", "digits_apart", "interval_text", "number"]

DIGITS = 4
"""Significant digits a number gets when fewer do not make two different numbers print alike."""
MOST = 17
"""Enough significant digits to print any float64 exactly."""


def _float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def number(value: object, digits: int = DIGITS) -> str:
    """``value`` with ``digits`` significant digits ("—" for no number; ``nan``, ``inf`` as such)."""
    number_ = _float(value)
    return "—" if number_ is None else f"{number_:.{digits}g}"


def digits_apart(values: Iterable[object], against: Iterable[object] = (), digits: int = DIGITS) -> int:
    """The fewest significant digits, at least ``digits``, at which any two of ``values`` (and any of them and
    any of ``against``, e.g. a rule's threshold) that differ also print differently. Non-numbers and non-finite
    numbers are left out (they print as themselves)."""
    shown = [v for v in map(_float, values) if v is not None and math.isfinite(v)]
    others = [v for v in map(_float, against) if v is not None and math.isfinite(v)]
    pairs = [(a, b) for i, a in enumerate(shown) for b in (*shown[i + 1:], *others) if a != b]
    for count in range(digits, MOST + 1):
        if all(f"{a:.{count}g}" != f"{b:.{count}g}" for a, b in pairs):
            return count
    return MOST


def interval_text(estimate: object, low: object = None, high: object = None, *, level: float | None = None,
                  against: Iterable[object] = (), digits: int = DIGITS) -> str:
    """``estimate [level CI low, high]`` (only the estimate without both ends), every number with the digits
    :func:`digits_apart` gives for them and ``against`` (the thresholds the reader compares them with)."""
    ends = () if low is None or high is None else (low, high)
    count = digits_apart((estimate, *ends), against, digits)
    if not ends:
        return number(estimate, count)
    prefix = f"{level:.0%} CI " if level else ""
    return f"{number(estimate, count)} [{prefix}{number(low, count)}, {number(high, count)}]"
