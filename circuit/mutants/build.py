"""Building every mutant of a model and its spec, each with the claim tests that must fail on it.

The truth of a mutant comes from what it changed and from which claim tests read the spec entries that
name the changed component (``circuit.mutants.reads``):

- ``relabel``: in each layer with a named head, the first named head trades slots with the least important
  head of its layer (``circuit.mutants.weights.permute_heads``), refused unless the logits stay within
  ``tolerance``. Must fail: the tests reading the entries that name a head of that layer. Every other test
  must keep its outcome (a kill there is a false kill).
- ``ablation``: each named head, attention layer and MLP layer zeroed. Must fail: the tests reading the
  entries that name it (a zeroed attention layer zeroes its heads too). Other tests are not scored.
- ``random``: transformers' own initialization of the config, seeded. Must fail: every test except the
  identities (:data:`IDENTITIES`), which hold for any weights.
- ``spec``: each named entry swapped for the least important alternative, each stated sign flipped
  (``circuit.mutants.specs``), judged on the unchanged model. Must fail: the mutated claim's tests that
  read the mutated field (for a flip: and a sign).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from circuit.mutants.scoring import Mutant
from circuit.mutants.specs import Component, SpecMutant, named_components, spec_mutants

__all__ = ["IDENTITIES", "KINDS", "Plan", "build_mutants", "merge_spec_mutants", "should_kill", "spec_should_kill"]

KINDS = ("relabel", "spec", "ablation", "random")
IDENTITIES = ("hf-equivalence", "attribution-completeness")
"""Claims that hold for any weights (the bridge computes what HF computes; attributions add up)."""


@dataclass
class Plan:
    """The mutants built: model folders to judge under the original spec, spec mutants to judge on the model."""

    models: list[tuple[Mutant, Path]] = field(default_factory=list)
    specs: list[tuple[Mutant, SpecMutant]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def should_kill(tests: Sequence[Any], spec: Any, hit: Callable[[Component], bool]) -> frozenset[str]:
    """Claim tests (``circuit.mutants.reads.ClaimTest``) that read a spec entry naming a component ``hit``."""
    fields = {(n.claim_id, n.field) for n in named_components(spec) if hit(n.component)}
    return frozenset(t.name for t in tests if any(t.claim_id == c and f in t.reads for c, f in fields))


def spec_should_kill(tests: Sequence[Any], mutant: SpecMutant) -> frozenset[str]:
    """Claim tests that must fail under a spec mutant: its claim's tests that read the mutated field (and, for
    a flipped sign, read a sign)."""
    return frozenset(t.name for t in tests if t.claim_id == mutant.claim_id and mutant.field in t.reads
                     and (not mutant.reads_sign or "sign" in t.attributes))


def merge_spec_mutants(spec: Any, mutants: Sequence[SpecMutant]) -> list[tuple[Any, list[SpecMutant]]]:
    """Rounds of spec mutants, at most one per claim in a round, each round one spec with all its mutations
    (claims read only their own entry, so mutants of different claims do not interact)."""
    rounds: list[list[SpecMutant]] = []
    for mutant in mutants:
        free = next((r for r in rounds if all(m.claim_id != mutant.claim_id for m in r)), None)
        if free is None:
            rounds.append(free := [])
        free.append(mutant)
    merged = []
    for group in rounds:
        claims = dict(spec.claims)
        for mutant in group:
            claims[mutant.claim_id] = mutant.spec.claims[mutant.claim_id]
        merged.append((replace(spec, claims=claims), group))
    return merged


def build_mutants(folder: str | Path, spec: Any, tests: Sequence[Any], workdir: str | Path, *,
                  kinds: Sequence[str] = KINDS, n_prompt_sets: int = 2, seed: int = 0,
                  tolerance: float = 1e-4) -> Plan:
    """Every mutant of ``kinds`` for the model in ``folder`` and its ``spec``; model mutants are saved in
    ``workdir`` as folders named ``<model>--<mutant id>``."""
    import torch

    from circuit.discover import draw_prompt_sets
    from circuit.lab import Lab
    from circuit.models import load_model
    from circuit.mutants.importance import measure_importance
    from circuit.mutants.weights import MutantError, ablate, load_hf, max_logit_difference, permute_heads, \
        random_weights, save_mutant

    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise MutantError(f"mutant kinds {unknown} are unknown: use some of {list(KINDS)}.")
    folder, workdir = Path(folder), Path(workdir)
    plan = Plan()
    named = named_components(spec)
    lab = Lab(load_model(folder, device="cpu", with_hf_reference=False), spec)
    sets = draw_prompt_sets(lab, n_prompt_sets, seed=seed)
    importance = measure_importance(lab, sets) if {"relabel", "spec"} & set(kinds) else None
    tokens = torch.cat([lab.inputs(ps)[0].tokens for ps in sets])
    original = load_hf(folder)

    def save(mutant: Mutant, model: Any) -> None:
        plan.models.append((mutant, save_mutant(model, folder, workdir / f"{folder.name}--{mutant.id}")))

    if "relabel" in kinds:
        for layer in sorted({n.component.layer for n in named if n.component.kind == "head"}):
            heads = [n for n in named if n.component.kind == "head" and n.component.layer == layer]
            first = heads[0]
            taken = [(layer, n.component.head) for n in heads]
            try:
                _, other = importance.least_head(first.entry.by[0], layer=layer, exclude=taken)
            except ValueError:
                plan.notes.append(f"relabel L{layer}: every head of the layer is named; no permutation")
                continue
            model = load_hf(folder)
            order, _ = permute_heads(model, layer, first.component.head, other)
            moved = max_logit_difference(original, model, tokens)
            if not moved < tolerance:
                raise MutantError(f"permuting layer {layer}'s heads {order} changed the logits by {moved:.3g} "
                                  f"(> {tolerance:g}): the model's attention is not Llama/Qwen2-style; do not relabel it.")
            save(Mutant(f"permute-{first.component.label}-L{layer}H{other}", "relabel",
                        f"layer {layer} query heads reordered {order} ({first.component.label} <-> least important "
                        f"L{layer}H{other}; max |logit difference| {moved:.2g})",
                        should_kill(tests, spec, lambda c, layer=layer: c.kind == "head" and c.layer == layer),
                        preserves_function=True), model)
    if "ablation" in kinds:
        for component in sorted({n.component for n in named}):
            must = should_kill(tests, spec, component.contains)
            if not must:  # an ablation scores only the tests naming it: none runs here
                plan.notes.append(f"ablate {component.label}: no claim test run here names it; not built")
                continue
            model = load_hf(folder)
            ablate(model, component.kind, component.layer, component.head)
            save(Mutant(f"ablate-{component.label.replace(' ', '-')}", "ablation", f"{component.label} output zeroed",
                        must), model)
    if "random" in kinds:
        save(Mutant(f"random-{seed}", "random", f"random weights of the same config (seed {seed})",
                    frozenset(t.name for t in tests if t.claim_id not in IDENTITIES)), random_weights(folder, seed))
    if "spec" in kinds:
        mutants, notes = spec_mutants(spec, importance)
        plan.notes += notes
        for m in mutants:
            plan.specs.append((Mutant(m.id, "spec", m.description, spec_should_kill(tests, m), spec_only=True), m))
    return plan
