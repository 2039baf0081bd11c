"""Drafters: how a claim module lets discovery (``python -m circuit.discover``) draft its claim.

A claim module declares its drafter with :func:`drafts`; discovery calls every registered drafter with a
:class:`DraftContext` after drafting the built-in claims. The registry lives here, not in
``circuit.discover``, so that it is one registry whether discovery runs as a module (``python -m``) or is
imported.

Discovery does not fit and test on the same data. A drafter *chooses* on the draft half of the prompt sets
(:attr:`DraftContext.sets`: which heads, layers, signs) and *states* from the held-out half
(:attr:`DraftContext.held_out`, other seeds) with :meth:`DraftContext.rule` or :meth:`DraftContext.supports`:
the threshold sits the design margin (``circuit.decision.required_margin``) from the held-out estimate, so the
claim test is supported with the spec's power at its prompt budget; a fixed threshold (a sign, a gap, a
ratio of 1) is stated only when the held-out estimate clears it by that margin. Every threshold's estimate,
interval and margin is logged (:attr:`DraftContext.log`) and written beside the claim in the draft.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["DRAFTERS", "DraftContext", "Measured", "clearance", "drafts", "floor_to", "ceil_to", "width_of"]


def floor_to(x: float, grid: float) -> float:
    return round(math.floor(x / grid + 1e-9) * grid, 6)


def ceil_to(x: float, grid: float) -> float:
    return round(math.ceil(x / grid - 1e-9) * grid, 6)


def width_of(intervals: Sequence[Any]) -> float:
    """Half the median width of some intervals (0 for none): the statistic's noise, for a baseline tolerance."""
    import statistics

    return statistics.median(float(i.high - i.low) for i in intervals) / 2 if intervals else 0.0


@dataclass(frozen=True)
class Measured:
    """A statistic measured on the held-out sets, and the margin a claim test at the budget needs."""

    kind: str
    estimate: float
    """The mean of the held-out sets' estimates."""
    uncertainty: float
    """Half the width of the estimate's 95% interval: 1.96 standard errors of the mean over the held-out sets, the
    larger of the spread of their estimates (sets differ: operand orders, digit positions) and the largest of their
    bootstrap standard errors, over sqrt(number of sets)."""
    margin: float
    """Distance from the threshold at which the claim test is supported with the spec's power at the budget (from
    the noisiest held-out set's standard error, scaled to the budget)."""
    n_sets: int

    @property
    def bound(self) -> float:
        """The tightest threshold the evidence allows: the estimate's interval end on the claim's far side, less
        (``>=``) or plus (``<=``) the margin."""
        if self.kind in (">=", ">"):
            return self.estimate - self.uncertainty - self.margin
        return self.estimate + self.uncertainty + self.margin

    def clears(self, threshold: float) -> bool:
        """Whether the estimate's interval lies at least the margin beyond ``threshold`` on the claimed side."""
        from circuit.decision import Rule

        if self.kind == "excludes":
            return abs(self.estimate - threshold) - self.uncertainty >= self.margin
        return Rule(self.kind, threshold, interval=False).holds(self.bound)

    def text(self, threshold: float) -> str:
        return (f"held-out estimate {self.estimate:.4g} [95% CI {self.estimate - self.uncertainty:.4g}, "
                f"{self.estimate + self.uncertainty:.4g}] over {self.n_sets} sets, margin {self.margin:.3g} -> "
                f"{self.kind} {threshold:g}")


@dataclass(frozen=True)
class DraftContext:
    """What a claim's drafter (:func:`drafts`) measures with, and the helpers that keep drafts consistent."""

    lab: Any
    """The lab at the spec's level (95%): choose on :attr:`sets` with it."""
    sets: tuple[Any, ...]
    """The draft half of the prompt sets: choose what to state here."""
    held_out: tuple[Any, ...]
    """The held-out half (other seeds): state thresholds from these only (:meth:`rule`, :meth:`supports`)."""
    options: Any
    """The ``circuit.discover.DiscoveryOptions`` (grid, power, budget, ...)."""
    n_layers: int
    n_heads: int
    stated: dict[str, Any]
    """The claims drafted so far, by id (e.g. ``stated.get("final-token-localization")`` for its late layer)."""
    claim_id: str = ""
    log: dict[str, dict[str, str]] = field(default_factory=dict)
    """Claim id -> threshold name -> how it was set (written beside the claim in the draft)."""

    def for_claim(self, claim_id: str) -> DraftContext:
        return replace(self, claim_id=claim_id)

    def intervals(self, measure: Any, *, held_out: bool = False) -> list[Any]:
        """``measure(lab, prompt_set)`` on every draft set (on every held-out set when ``held_out``)."""
        return [measure(self.lab, ps) for ps in (self.held_out if held_out else self.sets)]

    def measured(self, kind: str, measure: Any) -> Measured:
        """``measure`` on the held-out sets, with the margin the claim test needs (``circuit.decision``)."""
        from statistics import NormalDist

        from circuit.decision import Rule, Scheme, required_margin

        intervals = self.intervals(measure, held_out=True)
        smallest = min(self.held_out, key=lambda ps: len(ps.clean))
        size = len(smallest.clean)
        z = NormalDist().inv_cdf(1 - (1 - self.lab.level) / 2)
        se_at_size = max(float(i.high - i.low) / (2 * z) for i in intervals)  # the noisiest set: every set must pass
        se = se_at_size * math.sqrt(size / self.options.budget)
        stats = self.options.statistics
        scheme = Scheme(stats.family_level, looks=self.lab.looks(smallest), power=stats.power,
                        n_sets=self.options.n_sets)
        estimates = [float(i.estimate) for i in intervals]
        mean = sum(estimates) / len(estimates)
        spread = math.sqrt(sum((e - mean) ** 2 for e in estimates) / max(1, len(estimates) - 1))
        uncertainty = z * max(spread, se_at_size) / math.sqrt(len(estimates))
        return Measured(kind, mean, uncertainty, required_margin(se, scheme, Rule(kind, 0.0)), len(estimates))

    def rule(self, kind: str, measure: Any, name: str = "") -> Any:
        """The claims' ``Rule(kind, threshold)`` with the threshold the design margin from the held-out estimate
        (rounded outward to ``options.grid``); logged under ``name``."""
        from circuit.decision import Rule

        found = self.measured(kind, measure)
        grid = self.options.grid
        threshold = floor_to(found.bound, grid) if kind in (">=", ">") else ceil_to(found.bound, grid)
        self._log(name or kind, found.text(threshold))
        return Rule(kind, threshold, name)

    def supports(self, kind: str, measure: Any, threshold: float, name: str = "") -> bool:
        """Whether the held-out estimate clears the fixed ``threshold`` by the design margin; logged under
        ``name``."""
        found = self.measured(kind, measure)
        verdict = found.clears(threshold)
        self._log(name or f"{kind} {threshold:g}", found.text(threshold) + ("" if verdict else " NOT cleared"))
        return verdict

    def _log(self, name: str, text: str) -> None:
        self.log.setdefault(self.claim_id, {})[name] = text

    def tolerance(self, measure: Any) -> float:
        """A baseline tolerance: half the median width of ``measure``'s 95% intervals on the held-out sets,
        rounded up to the grid."""
        return ceil_to(width_of(self.intervals(measure, held_out=True)), self.options.grid)

    def top_heads(self, k: int) -> list[tuple[int, int]]:
        """The ``k`` heads ``(layer, head)`` with the largest |z patching effect|, averaged over the draft sets'
        means (the ranking named-heads drafts with), largest first."""
        import torch

        from circuit.measures import head_values

        z = torch.stack([head_values(self.lab, ps, "z_patching").mean(-1) for ps in self.sets]).mean(0)
        order = z.abs().flatten().argsort(descending=True, stable=True)[:k].tolist()
        return [divmod(flat, self.n_heads) for flat in order]

    @property
    def early_until_layer(self) -> int:
        """Where a fixed early band ends (``circuit.bands.draft_early_band``: the first sixth of the layers,
        below the late layers of final-token localization, else two thirds up)."""
        from circuit.bands import draft_early_band

        return draft_early_band(self.n_layers, self.late_from_layer)

    @property
    def late_from_layer(self) -> int | None:
        """The late layers found by final-token localization (None when that claim is not stated)."""
        claim = self.stated.get("final-token-localization")
        return None if claim is None else claim.late_from_layer

    def late_layers(self) -> list[int]:
        """Where the late layers may start, for a claim about late heads or bands: final-token localization's
        late layer (when stated) and every layer of the model's second half, always leaving layers before
        them (the source's late heads are layers 16+ of 24)."""
        second_half = range(math.ceil(self.n_layers / 2), self.n_layers)
        stated = [] if self.late_from_layer is None else [self.late_from_layer]
        return sorted({layer for layer in (*stated, *second_half) if 1 <= layer < self.n_layers})

    def early_bounds(self, late: int) -> list[int]:
        """Where an early band may end (the layers before it) when the late layers start at ``late``: at least
        one layer, at most the first half, and room for a middle band of at least one layer before ``late``
        (the source's early heads are layers 0..3 of 24)."""
        return [bound for bound in range(1, max(1, self.n_layers // 2) + 1) if bound < late]

    def best(self, candidates: Sequence[Any], score_of: Any) -> tuple[Any, list[float]] | None:
        """Choose, on the draft sets, the candidate (e.g. a band of layers) whose smallest score over the sets,
        ``score_of(candidate)(lab, prompt_set)`` (e.g. :func:`clearance`), is the largest; returns it and its
        per-set scores, or None when no candidate scores on every draft set.

        A candidate whose score raises ``ValueError`` (an empty band, a statistic that is not finite) or
        ``circuit.decision.Inconclusive`` (no head in its band) on some set is passed over. The sets are the
        outer loop, so that each set's patching sweeps are computed once (the lab keeps a few sets' results).
        The held-out sets then state the chosen candidate's threshold (:meth:`rule`): choosing among
        candidates here costs the held-out evidence nothing."""
        from circuit.decision import Inconclusive

        scores: dict[int, list[float]] = {i: [] for i in range(len(candidates))}
        for ps in self.sets:
            for i, candidate in enumerate(candidates):
                if i not in scores:
                    continue
                try:
                    scores[i].append(float(score_of(candidate)(self.lab, ps)))
                except (ValueError, Inconclusive):
                    del scores[i]
        if not scores:
            return None
        chosen = max(scores, key=lambda i: (min(scores[i]), -i))  # ties: the earlier candidate
        return candidates[chosen], scores[chosen]

    def choose(self, what: str, candidates: Sequence[Any], measure_of: Any, above: float) -> tuple[Any, str]:
        """The candidate chosen on the draft sets (:meth:`best` by :func:`clearance`): the one whose statistic,
        ``measure_of(candidate)(lab, prompt_set)``, lies furthest above ``above`` (the value the drafter states it
        above) in units of its noise; and the note's words for the choice. ``(None, reason)`` when no candidate
        measures on every draft set."""
        found = self.best(candidates, lambda c: lambda lab, ps: clearance(measure_of(c)(lab, ps), above))
        if found is None:
            return None, f"not stated: {what}: no candidate ({list(candidates)}) measures on every draft set"
        chosen, scores = found
        return chosen, (f"{what} chosen on the draft sets among {list(candidates)} (clearance of {above:g} per set, "
                        f"in half-widths: {[round(e, 2) for e in scores]})")


def clearance(interval: Any, above: float) -> float:
    """How far an interval's estimate lies above ``above``, in half-widths of the interval: the score to choose
    a candidate by (:meth:`DraftContext.best`) for a claim ``statistic >= threshold`` that is stated only above
    ``above``, since the margin the held-out sets need grows with the statistic's noise. A point interval (no
    noise) scores its distance times 1e12."""
    half = float(interval.high - interval.low) / 2
    return (float(interval.estimate) - above) / max(half, 1e-12)


DRAFTERS: dict[str, Any] = {}
"""Claim id -> its drafter, ``drafter(context: DraftContext) -> (parameters or None, note)``; filled by
:func:`drafts` in claim modules (``python -m circuit.discover`` imports those of ``--claims-dir``)."""


def drafts(claim_id: str) -> Any:
    """Decorator: declare a function as the drafter of ``claim_id`` for discovery.

    It receives a :class:`DraftContext` and returns ``(parameters, note)``: the claim's parameters (its
    ``@register_claim`` dataclass) when the held-out sets support it, else ``None`` and a note saying why, with
    the numbers (the note is written as a comment in the draft)."""
    def decorate(fn: Any) -> Any:
        DRAFTERS[claim_id] = fn
        return fn

    return decorate
