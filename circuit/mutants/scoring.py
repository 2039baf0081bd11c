"""Scoring the claims against mutants whose truth is known by construction.

Each :class:`Mutant` says which claim tests must fail on it (``should_kill``) and whether it preserves the
model's function (then every other test must keep its outcome on the original). A claim test *kills* a
mutant when it does not pass: its verdict is ``refuted`` or ``inconclusive`` where the evidence records a
verdict, else its outcome is ``failed`` or ``error``. A test is scored on a mutant only when it did not skip
there (and, for a test judged under the original spec, not on the original either). :func:`score` gives,
per claim test, the mutants it should kill, those it killed, those it missed, and its *false kills*: tests
that passed on the original and failed on a function-preserving mutant that does not touch what they name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["KILLING_VERDICTS", "Mutant", "Score", "TestScore", "is_killed", "render_table", "score"]

KILLING_VERDICTS = ("refuted", "inconclusive")
"""Verdicts that kill a mutant (a test passes only when its claim is ``supported``)."""
KILLING_OUTCOMES = ("failed", "error")
"""Outcomes that kill a mutant where the evidence records no verdict."""


@dataclass(frozen=True)
class Mutant:
    """A model or spec mutant and its truth."""

    id: str
    """Short, folder-safe name (``permute-L0H1-L0H3``)."""
    kind: str
    """``relabel`` (function-preserving), ``spec``, ``ablation`` or ``random``."""
    description: str
    should_kill: frozenset[str]
    """Claim tests (function names) that must not pass on it."""
    preserves_function: bool = False
    """Every test outside ``should_kill`` must keep its outcome on the original (a kill there is a false kill)."""
    spec_only: bool = False
    """Judged under a mutated spec: tests that skipped on the original are still scored when they ran here."""


def is_killed(outcome: str, verdict: str | None = None) -> bool:
    """Whether a claim test with this outcome (and verdict, when recorded) did not pass."""
    if verdict:
        return verdict in KILLING_VERDICTS
    return outcome in KILLING_OUTCOMES


Outcome = tuple[str, "str | None"]
"""``(outcome, verdict or None)`` of one claim test."""


@dataclass
class TestScore:
    """One claim test's scores over all mutants (lists of mutant ids)."""

    test: str
    claim_id: str
    original: str
    should_kill: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    false_kills: list[str] = field(default_factory=list)
    other_kills: list[str] = field(default_factory=list)
    """Mutants it failed on where no outcome was expected (ablations and random weights: other claims)."""


@dataclass
class Score:
    tests: list[TestScore]
    mutants: list[Mutant]
    notes: list[str] = field(default_factory=list)

    @property
    def totals(self) -> dict[str, int]:
        return {"should_kill": sum(len(t.should_kill) for t in self.tests),
                "killed": sum(len(t.killed) for t in self.tests),
                "false_kills": sum(len(t.false_kills) for t in self.tests)}

    def to_json(self) -> dict[str, Any]:
        mutants = [{**asdict(m), "should_kill": sorted(m.should_kill)} for m in self.mutants]
        return {"totals": self.totals, "tests": [asdict(t) for t in self.tests], "mutants": mutants,
                "notes": list(self.notes)}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)


def score(mutants: Iterable[Mutant], original: Mapping[str, Outcome], outcomes: Mapping[str, Mapping[str, Outcome]],
          claim_ids: Mapping[str, str], notes: Iterable[str] = ()) -> Score:
    """Score every claim test of ``original`` (test -> outcome) against ``outcomes`` (mutant id -> test ->
    outcome); ``claim_ids`` maps tests to their claims."""
    mutants = list(mutants)
    rows = {test: TestScore(test, claim_ids.get(test, "?"), o[1] or o[0]) for test, o in original.items()}
    notes = list(notes)
    for mutant in mutants:
        got = outcomes.get(mutant.id)
        if got is None:
            notes.append(f"{mutant.id}: no outcomes (its run did not report it); not scored")
            continue
        for test, (outcome, verdict) in got.items():
            before = original.get(test, ("skipped", None))
            if outcome == "skipped" or (before[0] == "skipped" and not mutant.spec_only):
                continue
            row = rows.setdefault(test, TestScore(test, claim_ids.get(test, "?"), before[1] or before[0]))
            killed = is_killed(outcome, verdict)
            if test in mutant.should_kill:
                row.should_kill.append(mutant.id)
                (row.killed if killed else row.missed).append(mutant.id)
            elif killed and mutant.preserves_function and not is_killed(*before):
                row.false_kills.append(mutant.id)
            elif killed:
                row.other_kills.append(mutant.id)
    return Score(sorted(rows.values(), key=lambda r: (r.claim_id, r.test)), mutants, notes)


def render_table(result: Score) -> str:
    """A markdown table: per claim test, should-kill / killed / missed / false kills, with totals (tests that
    skipped everywhere are listed below it), then each mutant's counts."""
    def names(ids: list[str]) -> str:
        return ", ".join(ids) or "-"

    lines = ["| claim | test | original | should kill | killed | missed | false kills |",
             "|---|---|---|---|---|---|---|"]
    unscored = [t for t in result.tests if t.original == "skipped" and not (t.should_kill or t.false_kills or t.other_kills)]
    for t in result.tests:
        if t in unscored:
            continue
        lines.append(f"| {t.claim_id} | {t.test} | {t.original} | {len(t.should_kill)} | {len(t.killed)} | "
                     f"{names(t.missed)} | {names(t.false_kills)} |")
    totals = result.totals
    lines.append(f"| **total** | | | {totals['should_kill']} | {totals['killed']} | "
                 f"{totals['should_kill'] - totals['killed']} | {totals['false_kills']} |")
    def count(mutant_id: str, column: str) -> int:
        return sum(mutant_id in getattr(t, column) for t in result.tests)

    if unscored:
        lines += ["", f"Not scored ({len(unscored)} claim tests skipped on the original and on every mutant): "
                  + ", ".join(t.test for t in unscored)]
    lines += ["", "Mutants (should kill / killed / false kills, over the tests scored on it):"]
    lines += [f"- `{m.id}` ({m.kind}): {m.description}: {count(m.id, 'should_kill')} / {count(m.id, 'killed')} / "
              f"{count(m.id, 'false_kills')}" for m in result.mutants]
    lines += [f"- note: {n}" for n in result.notes]
    return "\n".join(lines) + "\n"
