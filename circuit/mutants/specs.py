"""Spec mutants, and what a spec names: the components a claim states something about.

A claim spec names components in a few fields (:data:`NAMED_FIELDS`): heads (``named-heads``), attention
layers with a sign (``attn-out-by-position``, ``late-mlp-attribution``) and MLP cells, a layer at a position
(``mlp-out-by-position``). :func:`named_components` lists them as :class:`Component` s. Two spec mutants are
built from each named entry, whose claim tests must then fail on the unchanged model:

- *swap*: the entry names the least important alternative component of its kind instead
  (``circuit.mutants.importance``), keeping its sign and ranking;
- *flip*: a stated sign is reversed (``positive`` <-> ``negative`` / ``not_positive``), the entry left alone in
  its field (so that a test picking the entries of one sign judges the flipped one, not the others).

Only the mutated claim's tests that read the mutated field (and, for a flip, a sign) are expected to fail
(``circuit.mutants.reads``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

__all__ = ["NAMED_FIELDS", "Component", "NamedEntry", "SpecMutant", "named_components", "spec_mutants"]

NAMED_FIELDS = {
    ("named-heads", "heads"): "head",
    ("attn-out-by-position", "layers"): "attn",
    ("late-mlp-attribution", "attention_layers"): "attn",
    ("mlp-out-by-position", "cells"): "mlp",
}
"""``(claim id, field) -> kind`` of the component each entry of the field names: a ``"head"``, an ``"attn"``
(attention) layer or an ``"mlp"`` layer (at a position)."""

FLIPPED = {
    ("named-heads", "heads"): {"positive": "negative", "negative": "positive"},
    ("attn-out-by-position", "layers"): {"positive": "not_positive", "not_positive": "positive"},
    ("late-mlp-attribution", "attention_layers"): {"positive": "negative", "negative": "positive"},
}
"""The opposite of each stated sign, per field (``"any"`` states none)."""


@dataclass(frozen=True, order=True)
class Component:
    """A head (``kind="head"``), an attention layer (``"attn"``) or an MLP layer (``"mlp"``) of the model."""

    kind: str
    layer: int
    head: int | None = None

    @property
    def label(self) -> str:
        return f"L{self.layer}H{self.head}" if self.kind == "head" else f"{self.kind} L{self.layer}"

    def contains(self, other: Component) -> bool:
        """Whether zeroing this component's output zeroes ``other``'s (a layer's attention: its heads)."""
        return self == other or (self.kind == "attn" and other.kind == "head" and other.layer == self.layer)


@dataclass(frozen=True)
class NamedEntry:
    """One entry of a spec field that names a component."""

    claim_id: str
    field: str
    index: int
    component: Component
    entry: Any
    """The spec's own entry (``NamedHead``, a signed layer, a cell)."""

    @property
    def label(self) -> str:
        position = getattr(self.entry, "position", None)
        return self.component.label + (f" at {position}" if position else "")


@dataclass(frozen=True)
class SpecMutant:
    """A spec with one named entry changed; the tests of ``claim_id`` that read ``field`` must fail."""

    id: str
    description: str
    claim_id: str
    field: str
    spec: Any
    reads_sign: bool = False
    """Only the tests that read a stated sign must fail (a flip changes nothing else)."""


def named_components(spec: Any) -> list[NamedEntry]:
    """Every entry of ``spec`` that names a component (fields of :data:`NAMED_FIELDS`)."""
    from circuit.spec import parse_head

    found = []
    for (claim_id, field), kind in NAMED_FIELDS.items():
        claim = spec.claims.get(claim_id)
        for index, entry in enumerate(getattr(claim, field, ()) or ()):
            if kind == "head":
                component = Component("head", *parse_head(entry.head))
            else:
                component = Component(kind, int(entry.layer))
            found.append(NamedEntry(claim_id, field, index, component, entry))
    return found


def _with_entry(spec: Any, named: NamedEntry, entry: Any) -> Any:
    claim = spec.claims[named.claim_id]
    entries = list(getattr(claim, named.field))
    entries[named.index] = entry
    claims = dict(spec.claims)
    claims[named.claim_id] = replace(claim, **{named.field: tuple(entries)})
    return replace(spec, claims=claims)


def _swap(spec: Any, named: NamedEntry, importance: Any) -> tuple[Any, str] | None:
    """The entry with the least important alternative component, or None when there is none."""
    siblings = [n for n in named_components(spec) if (n.claim_id, n.field) == (named.claim_id, named.field)]
    kind = named.component.kind
    if kind == "head":
        taken = [(n.component.layer, n.component.head) for n in siblings]
        layer, head = importance.least_head(named.entry.by[0], exclude=taken)
        return replace(named.entry, head=f"L{layer}H{head}"), f"L{layer}H{head}"
    if named.field == "cells":
        cell = importance.least_cell(exclude=[(n.component.layer, n.entry.position) for n in siblings])
        if cell is None:
            return None
        return replace(named.entry, layer=cell[0], position=cell[1]), f"mlp L{cell[0]} at {cell[1]}"
    layer = importance.least_attention(exclude=[n.component.layer for n in siblings])
    if layer is None:
        return None
    return replace(named.entry, layer=layer), f"attn L{layer}"


def spec_mutants(spec: Any, importance: Any) -> tuple[list[SpecMutant], list[str]]:
    """Swap and flip mutants of every named entry of ``spec``; and notes on the mutants that cannot be built."""
    mutants, notes = [], []
    for named in named_components(spec):
        stem = f"spec-{named.claim_id}-{named.field}-{named.index}"
        swapped = _swap(spec, named, importance)
        if swapped is None:
            notes.append(f"{named.claim_id} {named.field}: no alternative to {named.label} (every one is named)")
        else:
            entry, label = swapped
            mutants.append(SpecMutant(f"{stem}-swap", f"{named.claim_id}: {named.label} -> least important {label}",
                                      named.claim_id, named.field, _with_entry(spec, named, entry)))
        sign = getattr(named.entry, "sign", None)
        opposite = FLIPPED.get((named.claim_id, named.field), {}).get(sign)
        if opposite is not None:
            alone = replace(named, index=0)  # the flipped entry alone: tests that pick entries by sign judge it
            claim = spec.claims[named.claim_id]
            only = replace(spec, claims={**spec.claims, named.claim_id: replace(claim, **{named.field: (named.entry,)})})
            mutants.append(SpecMutant(f"{stem}-flip", f"{named.claim_id}: {named.label} {sign} -> {opposite} "
                                      f"(the only entry of {named.field})", named.claim_id, named.field,
                                      _with_entry(only, alone, replace(named.entry, sign=opposite)), reads_sign=True))
    return mutants, notes
