"""Bands of layers: early, middle and late, as the source analysis reads its per-layer plots.

The source speaks of "early heads" (layers 0-3 of Qwen2.5-0.5B's 24), "middle heads" and "late heads"
(layers 16+, where final-token localization starts). A claim about bands states its bounds in its spec
(``early_until_layer``: the early band is the layers before it; ``late_from_layer``: the late band is that
layer and after; the middle band lies between). This module holds what every band claim shares:

- :func:`draft_early_band`, where discovery ends a fixed early band for a model of any depth (the claims that
  choose their bands on the draft sets take their candidates from ``circuit.drafts.DraftContext`` instead):
  the first sixth of the layers (the source's 4 of 24), at least one layer, below the late band;
- :func:`empty_bands` / :func:`require_bands`: a band that holds no layer of the model is refused with
  the reason (a 3-layer model with late layers from 1 has no middle band);
- :func:`refute_empty_bands`: a claim test's verdict (the ``verdict`` fixture) refuted, with the reason,
  when a band its spec states holds no layer of the model under test;
- :func:`late_over_earlier`: the interval of the late band's mean |effect| over that of the layers before it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["EmptyBandError", "draft_early_band", "empty_bands", "late_over_earlier", "refute_empty_bands",
           "require_bands", "span"]


class EmptyBandError(ValueError):
    """A band of layers the statistic compares has no heads on this model."""


def draft_early_band(n_layers: int, late_from_layer: int | None = None) -> int:
    """Where discovery ends the early band of an ``n_layers`` model (the early layers are those before it): the
    first sixth of the layers (the source's early heads, layers 0..3 of 24), at least one layer, and below the
    late band, which starts at ``late_from_layer`` (final-token localization's, when stated) or else two thirds
    up (the source's 16 of 24)."""
    late = late_from_layer if late_from_layer is not None else round(n_layers * 2 / 3)
    return max(1, min(late - 1, round(n_layers / 6)))


def span(layers: range) -> str:
    """``"a..b"`` for a non-empty range of layers, else ``"none"``."""
    return f"{layers.start}..{layers.stop - 1}" if layers else "none"


def empty_bands(n_layers: int, bands: Mapping[str, range]) -> list[str]:
    """The names of the bands (``name -> range of layers``) that hold no layer of an ``n_layers`` model."""
    return [name for name, layers in bands.items() if not any(0 <= layer < n_layers for layer in layers)]


def require_bands(n_layers: int, bands: Mapping[str, range]) -> None:
    """Raise :class:`EmptyBandError`, naming every band and its layers, when a band holds no layer."""
    empty = empty_bands(n_layers, bands)
    if empty:
        raise EmptyBandError(f"the {' and '.join(empty)} band(s) hold no layer of this {n_layers}-layer model "
                             f"({', '.join(f'{name}: layers {span(r)}' for name, r in bands.items())}).")


def refute_empty_bands(verdict: Any, n_layers: int, bands: Mapping[str, range]) -> None:
    """Refute a claim test through its ``verdict`` (recording why) when a band it compares has no layer."""
    from circuit.decision import Rule

    empty = empty_bands(n_layers, bands)
    if empty:
        verdict.value(f"layers in the {' and '.join(empty)} band(s) of this {n_layers}-layer model", 0,
                      Rule(">=", 1, interval=False),
                      detail=f"The spec's bands: {', '.join(f'{name} layers {span(r)}' for name, r in bands.items())}; "
                             f"choose bands that each hold a layer of this model.")


def late_over_earlier(lab: Any, effects: Any, late_from_layer: int):
    """Interval of mean_c |mean effect| over the cells of layers >= ``late_from_layer`` / the same over the
    cells of the layers before; ``effects`` is ``[layer, cell, batch]`` (heads or positions), and a cell's size
    is the magnitude of its mean over the prompts (taken inside each resample)."""
    n_layers, n_cells = effects.shape[:2]
    require_bands(n_layers, {"late": range(late_from_layer, n_layers), "early and middle": range(late_from_layer)})
    split = late_from_layer * n_cells

    def ratio(x):  # [..., layer * cell, batch]
        size = x.mean(-1).abs()
        return size[..., split:].mean(-1) / size[..., :split].mean(-1)

    return lab.ci(effects.flatten(0, 1), ratio)


def draft_late_over_earlier(ctx: Any, ratio: Any, cells: str, statistic: Any, claim: Any):
    """A drafter's answer ``(claim or None, note)`` for "the late layers' cells matter most": the late band chosen on
    the draft sets among ``ctx.late_layers()`` (a ``circuit.drafts.DraftContext``) by ``ratio(lab, ps, late)``
    (an interval of :func:`late_over_earlier`), ``min_ratio`` stated from the held-out sets and only above 1.
    ``cells`` names what is compared ("heads", "layers"), ``statistic(late)`` the ratio in a note, and
    ``claim(tolerance=, late_from_layer=, min_ratio=)`` builds the claim's parameters."""
    candidates = ctx.late_layers()
    if not candidates:
        return None, f"not stated: no layer of {ctx.n_layers} leaves earlier {cells} to compare late {cells} with"
    late, where = ctx.choose("late layers", candidates, lambda late: lambda lab, ps: ratio(lab, ps, late), 1.0)
    if late is None:
        return None, where

    def measure(lab, ps):
        return ratio(lab, ps, late)

    rule = ctx.rule(">=", measure, "min_ratio")
    if rule.threshold <= 1.0:
        return None, (f"not stated: {statistic(late)}: {ctx.log[ctx.claim_id]['min_ratio']}: no threshold above 1 "
                      f"({where})")
    return claim(tolerance=ctx.tolerance(measure), late_from_layer=late, min_ratio=rule.threshold), where
