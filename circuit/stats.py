"""Statistics over prompts: bootstrap confidence intervals for per-prompt scores.

A claim is judged on an interval, not on a point value. The prompts of a run are a sample; the
percentile bootstrap resamples them with replacement (seeded, so a run is reproducible) and reports the
interval that holds ``level`` of the resampled statistic. The statistic is the mean over prompts unless
another reducer is given; every leading dimension (cells of a patching sweep, heads...) gets its own
interval, computed from the *same* resamples so that intervals of different cells are comparable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["Interval", "bootstrap_ci", "bootstrap_resamples"]


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
        if self.estimate.numel() == 1:
            return f"{self.estimate.item():.4g} [{self.level:.0%} CI {self.low.item():.4g}, {self.high.item():.4g}]"
        return f"Interval(shape={tuple(self.estimate.shape)}, level={self.level})"


def bootstrap_resamples(values: Float[Tensor, "... batch"], n_resamples: int, seed: int) -> Float[Tensor, "resample ... batch"]:
    """``n_resamples`` resamples (with replacement) of the last dimension, seeded."""
    batch = values.shape[-1]
    if batch < 1:
        raise ValueError("Cannot bootstrap over zero prompts.")
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(0, batch, (n_resamples, batch), generator=generator).to(values.device)
    return values[..., index].movedim(-2, 0)


def bootstrap_ci(
    values: Float[Tensor, "... batch"],
    *,
    level: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
    statistic: Callable[[Tensor], Tensor] | None = None,
) -> Interval:
    """Percentile bootstrap CI of ``statistic`` (default: mean over the last dim, the prompts)."""
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be between 0 and 1 (e.g. 0.95).")
    values = values.detach().double()
    if values.isnan().any():
        raise ValueError(f"Values contain NaN ({int(values.isnan().sum())} of {values.numel()}): cannot bootstrap.")
    stat = statistic or (lambda x: x.mean(-1))
    resampled = stat(bootstrap_resamples(values, n_resamples, seed))
    alpha = (1 - level) / 2
    low = torch.quantile(resampled, alpha, dim=0)
    high = torch.quantile(resampled, 1 - alpha, dim=0)
    return Interval(stat(values), low, high, level)
