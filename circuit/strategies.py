"""Hypothesis strategies for the multiplication task.

Claims and tests draw their prompts from these, so a failing claim shrinks to a small prompt set that
still fails. Problems of one set share their operands' digit counts, which keeps their token lengths
equal for tokenizers that split digits (Qwen2.5's does); :func:`prompt_sets` checks the lengths with the
tokenizer itself and discards sets that would not line up.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from hypothesis import assume
from hypothesis import strategies as st

from circuit.prompts import UnequalLengthError, corrupt_reversed, corrupt_same_length, tokenize_prompts
from circuit.task import MAX_DIGITS, PERTURBATIONS, Problem, perturbations

__all__ = [
    "PromptSet",
    "digit_counts",
    "perturbation_names",
    "problem_sets",
    "problems",
    "prompt_sets",
]

CORRUPTIONS = ("same_length", "reversed")
"""How corrupted prompts are paired with clean ones (see circuit.prompts)."""


def digit_counts(min_digits: int = 1, max_digits: int = MAX_DIGITS) -> st.SearchStrategy[int]:
    """Operand digit counts in ``[min_digits, max_digits]`` (within 1..9)."""
    return st.integers(max(1, min_digits), min(MAX_DIGITS, max_digits))


@st.composite
def problems(draw: st.DrawFn, n_digits: int | None = None, n_digits_b: int | None = None) -> Problem:
    """One problem with operands of the given digit counts (drawn when ``None``)."""
    na = n_digits if n_digits is not None else draw(digit_counts())
    nb = n_digits_b if n_digits_b is not None else na
    a = draw(st.integers(10 ** (na - 1), 10**na - 1))
    b = draw(st.integers(10 ** (nb - 1), 10**nb - 1))
    return Problem(a, b)


def perturbation_names() -> st.SearchStrategy[str]:
    """One of the twelve perturbations of the source analysis."""
    return st.sampled_from(sorted(PERTURBATIONS))


@st.composite
def problem_sets(
    draw: st.DrawFn,
    *,
    min_size: int = 2,
    max_size: int = 8,
    min_digits: int = 1,
    max_digits: int = 5,
    both_orders: bool | None = None,
) -> list[Problem]:
    """A list of problems sharing digit counts; with ``both_orders`` each problem is followed by its swap."""
    na = draw(digit_counts(min_digits, max_digits))
    orders = draw(st.booleans()) if both_orders is None else both_orders
    nb = na if orders else draw(digit_counts(min_digits, max_digits))
    n = draw(st.integers(min_size, max_size))
    drawn = draw(st.lists(problems(na, nb), min_size=(n + 1) // 2 if orders else n,
                          max_size=(n + 1) // 2 if orders else n))
    if orders:
        drawn = [q for p in drawn for q in (p, p.swapped())]
    return drawn


@dataclass(frozen=True)
class PromptSet:
    """Clean problems, their wrong answers and corrupted problems, ready to tokenize."""

    clean: tuple[Problem, ...]
    incorrect: tuple[int, ...]
    corrupted: tuple[Problem, ...]
    corruption: str

    def __repr__(self) -> str:  # what a shrunk failing example shows
        rows = ", ".join(f"{c.prompt!r}->{c.product}|{x} vs {k.prompt!r}"
                         for c, x, k in zip(self.clean, self.incorrect, self.corrupted))
        return f"PromptSet({self.corruption}: {rows})"

    def summary(self, shown: int = 1) -> str:
        """The set in one short line: its size, its corruption and its first ``shown`` problems."""
        rows = "; ".join(f"{c.prompt!r} -> {c.product} (incorrect {x}, corrupted {k.prompt!r})"
                         for c, x, k in list(zip(self.clean, self.incorrect, self.corrupted))[:shown])
        more = f"; and {len(self.clean) - shown} more" if len(self.clean) > shown else ""
        return f"{len(self.clean)} prompts, {self.corruption} corruption: {rows}{more}"


@st.composite
def prompt_sets(
    draw: st.DrawFn,
    tokenizer: Any | None = None,
    *,
    min_size: int = 2,
    max_size: int = 8,
    min_digits: int = 1,
    max_digits: int = 5,
    corruptions: tuple[str, ...] = ("same_length",),
    both_orders: bool | None = None,
) -> PromptSet:
    """A prompt set: clean problems, a perturbed wrong answer for each, and corrupted problems.

    With a tokenizer, clean and corrupted prompts are checked to have equal token lengths (else the draw
    is discarded). The ``reversed`` corruption is the source's pairing; draws where it pairs a prompt with
    its own product are discarded.
    """
    unknown = set(corruptions) - set(CORRUPTIONS)
    if unknown:
        raise ValueError(f"Unknown corruption(s) {sorted(unknown)}: choose from {CORRUPTIONS}.")
    clean = draw(problem_sets(min_size=min_size, max_size=max_size, min_digits=min_digits,
                              max_digits=max_digits, both_orders=both_orders))
    incorrect = []
    for p in clean:
        options = perturbations(p.product)
        assume(options)
        incorrect.append(options[draw(st.sampled_from(sorted(options)))])
    corruption = draw(st.sampled_from(corruptions))
    if corruption == "reversed":
        corrupted = corrupt_reversed(clean)
        assume(all(c.product != x.product for c, x in zip(clean, corrupted)))
    else:
        corrupted = corrupt_same_length(clean, seed=draw(st.integers(0, 2**16)))
    if tokenizer is not None:
        try:
            tokenize_prompts(tokenizer, [p.prompt for p in (*clean, *corrupted)])
        except UnequalLengthError:
            assume(False)
    return PromptSet(tuple(clean), tuple(incorrect), tuple(corrupted), corruption)
