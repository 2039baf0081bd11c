"""Drafters: how a claim module lets discovery (``python -m circuit.discover``) draft its claim.

A claim module declares its drafter with :func:`drafts`; discovery calls every registered drafter with a
:class:`DraftContext` after drafting the built-in claims. The registry lives here, not in
``circuit.discover``, so that it is one registry whether discovery runs as a module (``python -m``) or is
imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DRAFTERS", "DraftContext", "drafts"]


@dataclass(frozen=True)
class DraftContext:
    """What a claim's drafter (:func:`drafts`) measures with, and the helpers that keep drafts consistent."""

    lab: Any
    """The lab at the per-set level a claim test is judged at (draft thresholds from its intervals)."""
    spread: Any
    """The lab at the spec's level (95%): intervals whose width sets a baseline ``tolerance``."""
    sets: tuple[Any, ...]
    """The measured prompt sets; a drafted claim must hold on every one."""
    options: Any
    """The ``circuit.discover.DiscoveryOptions`` (margin, grid, ...)."""
    n_layers: int
    n_heads: int
    stated: dict[str, Any]
    """The claims drafted so far, by id (e.g. ``stated.get("final-token-localization")`` for its late layer)."""

    def intervals(self, measure: Any, *, spread: bool = False) -> list[Any]:
        """``measure(lab, prompt_set)`` on every measured set (at the spec's level when ``spread``)."""
        lab = self.spread if spread else self.lab
        return [measure(lab, ps) for ps in self.sets]

    def rule(self, kind: str, intervals: Sequence[Any], name: str = "") -> Any:
        """The claims' rule with a threshold ``options.margin`` beyond every interval (:func:`draft_rule`)."""
        from circuit.discover import draft_rule

        return draft_rule(kind, intervals, self.options.margin, self.options.grid, name)

    def tolerance(self, measure: Any) -> float:
        """A baseline tolerance: half the median width of ``measure``'s 95% intervals, rounded up to the grid."""
        from circuit.discover import _ceil, width_of

        return _ceil(width_of(self.intervals(measure, spread=True)), self.options.grid)

    @property
    def late_from_layer(self) -> int | None:
        """The late layers found by final-token localization (None when that claim is not stated)."""
        claim = self.stated.get("final-token-localization")
        return None if claim is None else claim.late_from_layer


DRAFTERS: dict[str, Any] = {}
"""Claim id -> its drafter, ``drafter(context: DraftContext) -> (parameters or None, note)``; filled by
:func:`drafts` in claim modules (``python -m circuit.discover`` imports those of ``--claims-dir``)."""


def drafts(claim_id: str) -> Any:
    """Decorator: declare a function as the drafter of ``claim_id`` for discovery.

    It receives a :class:`DraftContext` and returns ``(parameters, note)``: the claim's parameters (its
    ``@register_claim`` dataclass) when the claim holds on every measured set, else ``None`` and a note saying
    why, with the numbers (the note is written as a comment in the draft)."""
    def decorate(fn: Any) -> Any:
        DRAFTERS[claim_id] = fn
        return fn

    return decorate
