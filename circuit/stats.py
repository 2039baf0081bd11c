"""Statistics over prompts: bootstrap confidence intervals for per-prompt scores.

A claim is judged on an interval, not on a point value. The prompts of a run are a sample; the
percentile bootstrap resamples them with replacement (seeded, so a run is reproducible) and reports the
interval that holds ``level`` of the resampled statistic. The statistic is the mean over prompts unless
another reducer is given; every leading dimension (cells of a patching sweep, heads...) gets its own
interval, computed from the *same* resamples so that intervals of different cells are comparable.

The bootstrap refuses to pretend. Over one prompt every resample is that prompt, and the "interval" has
zero width; over two or three it is hardly wider than the data. So :func:`bootstrap_ci` refuses fewer
than ``min_prompts`` values per interval (:class:`TooFewPromptsError`; claims use the spec's
``[statistics] min_prompts``, 5 unless it says otherwise), and refuses values or a statistic that are
not finite (:class:`NonFiniteError`), naming how many and where, instead of returning a NaN interval that
no threshold can be compared with.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "Interval",
    "NonFiniteError",
    "TooFewPromptsError",
    "bootstrap_ci",
    "bootstrap_resamples",
    "check_finite",
    "expanded_tail",
]

class TooFewPromptsError(ValueError):
    """A bootstrap interval was asked for over fewer prompts than the minimum."""


class NonFiniteError(ValueError):
    """Values, or a statistic computed from them, are NaN or infinite."""


_DIVERGED = "the model diverged (check the weights and the dtype: float32 recommended) or a ratio divided by zero"


def check_finite(values: Tensor, what: str, *, hint: str = _DIVERGED) -> None:
    """Raise :class:`NonFiniteError` naming ``what`` (e.g. ``"The logits are"``), how many entries are NaN or
    infinite, the first one, and ``hint`` (what to check)."""
    bad = ~torch.isfinite(values)
    if bool(bad.any()):
        first = tuple(int(i) for i in bad.nonzero()[0])
        n_nan, n_inf = int(values.isnan().sum()), int(values.isinf().sum())
        raise NonFiniteError(
            f"{what} not finite: {n_nan} NaN and {n_inf} infinite of {values.numel()} (shape "
            f"{tuple(values.shape)}, first at index {first}): {hint}.")


@dataclass(frozen=True)
class Interval:
    """A statistic with its bootstrap confidence interval (tensors of the same shape)."""

    estimate: Tensor
    low: Tensor
    high: Tensor
    level: float

    def excludes(self, value: float) -> Tensor:
        """True where the interval lies entirely above or entirely below ``value``."""
        return (self.low > value) | (self.high < value)

    def __str__(self) -> str:
        if self.estimate.numel() == 1:  # digits enough to tell the ends apart (circuit.numbers)
            from circuit.numbers import interval_text

            return interval_text(self.estimate.item(), self.low.item(), self.high.item(), level=self.level)
        return f"Interval(shape={tuple(self.estimate.shape)}, level={self.level})"


def bootstrap_resamples(values: Float[Tensor, "... batch"], n_resamples: int, seed: int) -> Float[Tensor, "resample ... batch"]:
    """``n_resamples`` resamples (with replacement) of the last dimension, seeded."""
    batch = values.shape[-1]
    if batch < 1:
        raise TooFewPromptsError("Cannot bootstrap over zero prompts.")
    if n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples}: draw at least one resample (1000 or more is sensible).")
    index = _resample_index(batch, n_resamples, seed).to(values.device)
    return values[..., index].movedim(-2, 0)


def _resample_index(batch: int, n_resamples: int, seed: int) -> Tensor:
    """``[resample, batch]``: which prompt each resample draws at each of its places (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, batch, (n_resamples, batch), generator=generator)


def _resampled_means(values: Float[Tensor, "... batch"], n_resamples: int, seed: int) -> Float[Tensor, "resample ..."]:
    """The mean of each resample of :func:`bootstrap_resamples`, as one product with the resamples' counts
    (the same numbers, without materializing ``n_resamples`` copies of the values)."""
    batch = values.shape[-1]
    if n_resamples < 1:
        raise ValueError(f"n_resamples={n_resamples}: draw at least one resample (1000 or more is sensible).")
    index = _resample_index(batch, n_resamples, seed)
    counts = torch.zeros(n_resamples, batch, dtype=values.dtype).scatter_add_(
        1, index, torch.ones(n_resamples, batch, dtype=values.dtype)).to(values.device)
    return (values @ counts.T / batch).movedim(-1, 0)


def _quantile(x: Tensor, q: float) -> Tensor:
    """``torch.quantile(x, q, dim=0)`` (linear interpolation), from two order statistics instead of a sort."""
    n = x.shape[0]
    position = q * (n - 1)
    below = min(int(position), n - 2) if n > 1 else 0
    frac = position - below
    if below + 2 <= n - below:  # near the low end: the smallest below + 2 values
        ends = x.topk(min(below + 2, n), dim=0, largest=False, sorted=True).values
        lower, upper = ends[below], ends[min(below + 1, n - 1)]
    else:  # near the high end: the largest n - below values, counted from the top
        ends = x.topk(n - below, dim=0, largest=True, sorted=True).values
        lower, upper = ends[n - below - 1], ends[max(n - below - 2, 0)]
    return torch.lerp(lower, upper, torch.full_like(lower, frac))


def _t_quantile(p: float, df: int) -> float:
    """Student's t quantile (Cornish-Fisher expansion in ``1 / df``; within 1e-3 of the exact value for df >= 4
    at the tails the claims use)."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(p)
    v = float(df)
    return (z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4))


def expanded_tail(tail: float, n: int) -> float:
    """The bootstrap quantile to read for a one-sided error ``tail`` over ``n`` prompts: the *expanded*
    percentile interval (Hesterberg 2015), whose normal quantile is ``sqrt(n / (n - 1)) * t(1 - tail, n - 1)``.
    The plain percentile bootstrap is as narrow as a z interval with the variance divided by ``n``, not
    ``n - 1``: over 16 prompts its one-sided 1.25% bound misses about 3% of the time."""
    from statistics import NormalDist

    if n < 2:
        return tail
    return 1 - NormalDist().cdf(math.sqrt(n / (n - 1)) * _t_quantile(1 - tail, n - 1))


def bootstrap_ci(
    values: Float[Tensor, "... batch"],
    *,
    level: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    statistic: Callable[[Tensor], Tensor] | None = None,
    min_prompts: int = 2,
    expand: bool = False,
) -> Interval:
    """Percentile bootstrap CI of ``statistic`` (default: mean over the last dim, the prompts).

    ``expand``: read the expanded percentile quantiles (:func:`expanded_tail`), with at least 10 resamples beyond
    each (the interval's ``level`` stays the nominal one). Claims judge with it.

    Raises:
        TooFewPromptsError: fewer than ``min_prompts`` prompts (values in the last dim; at least 2 always).
        NonFiniteError: a value, or the statistic on the values or on a resample, is NaN or infinite.
    """
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be between 0 and 1 (e.g. 0.95).")
    n_prompts = values.shape[-1] if values.dim() else 0
    if n_prompts < max(2, min_prompts):
        raise TooFewPromptsError(
            f"Cannot bootstrap over {n_prompts} prompt(s): an interval needs at least {max(2, min_prompts)} distinct "
            f"prompts (over one, every resample is the same prompt and the interval has zero width). Use more "
            f"prompts (a spec's [prompts] min_size).")
    values = values.detach().double()
    check_finite(values, f"Values to bootstrap over {n_prompts} prompts are")
    alpha = (1 - level) / 2
    if expand:
        alpha = expanded_tail(alpha, n_prompts)
        n_resamples = max(n_resamples, math.ceil(10 / alpha))
    stat = statistic or (lambda x: x.mean(-1))
    estimate = stat(values)
    check_finite(estimate, "The statistic of the values is")
    if statistic is None:
        resampled = _resampled_means(values, n_resamples, seed)
    else:
        resampled = stat(bootstrap_resamples(values, n_resamples, seed))
    check_finite(resampled, f"The statistic of the {n_resamples} bootstrap resamples is")
    low, high = _quantile(resampled, alpha), _quantile(resampled, 1 - alpha)
    return Interval(estimate, low, high, level)
