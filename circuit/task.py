"""The multiplication task: problems, their answers, and perturbed (wrong) answers.

A problem is ``"{a} x {b} ="`` with n-digit operands (1 <= n <= 9, as in the source analysis, which used
n = 5); the model should continue with ``" {a*b}"``. The logit-difference metrics compare the correct
product with a *perturbed* one: the source analysis drew it from twelve perturbations (±1, ±10, ×2, ÷2,
reversed digits, sorted digits, rotated left / right, +1 / −1 on every digit). Some perturbations can
give back the product itself (a palindrome reversed, already-sorted digits, an even number halved
twice...) or a negative number; such candidates are dropped, so a perturbation is never the answer.
Everything here is plain Python and seeded: the same seed gives the same problems.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_DIGITS",
    "PERTURBATIONS",
    "Problem",
    "check_digits",
    "context_needed",
    "make_problems",
    "perturb",
    "perturbations",
]

MAX_DIGITS = 9
"""Operands have 1..MAX_DIGITS digits."""


def check_digits(n_digits: int, *, name: str = "n_digits") -> int:
    """Return ``n_digits`` if it is an int in 1..MAX_DIGITS, else raise a ValueError saying so."""
    if isinstance(n_digits, bool) or not isinstance(n_digits, int) or not 1 <= n_digits <= MAX_DIGITS:
        raise ValueError(
            f"{name}={n_digits!r} is out of range: operands have 1 to {MAX_DIGITS} digits. "
            f"Pass an integer between 1 and {MAX_DIGITS}."
        )
    return n_digits


@dataclass(frozen=True)
class Problem:
    """One multiplication problem ``a x b``."""

    a: int
    b: int

    def __post_init__(self) -> None:
        for name, value in (("a", self.a), ("b", self.b)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Problem operand {name}={value!r} is not a non-negative integer.")

    @property
    def product(self) -> int:
        return self.a * self.b

    @property
    def prompt(self) -> str:
        """The prompt in the source's format, e.g. ``"70620 x 99460 ="``."""
        return f"{self.a} x {self.b} ="

    @property
    def answer(self) -> str:
        """The correct continuation, e.g. ``" 7023865200"``."""
        return f" {self.product}"

    def swapped(self) -> Problem:
        """The same problem with the operands in the other order."""
        return Problem(self.b, self.a)


def context_needed(tokenizer: Any, max_digits: int) -> int:
    """Positions the longest problem of ``max_digits``-digit operands takes: its prompt (with the BOS token the
    tokenizer adds) and its answer, which ``first_differing_token`` metrics teacher-force after the prompt."""
    largest = Problem(10 ** max_digits - 1, 10 ** max_digits - 1)
    prompt = tokenizer(largest.prompt)["input_ids"]
    answer = tokenizer(largest.answer, add_special_tokens=False)["input_ids"]
    return len(prompt) + len(answer)


def make_problems(
    n: int, n_digits: int, *, seed: int = 0, both_orders: bool = True, n_digits_b: int | None = None
) -> list[Problem]:
    """``n`` problems with ``n_digits``-digit operands (``n_digits_b`` for the second, if given), seeded.

    With ``both_orders`` (as in the source analysis) each drawn pair appears as ``a x b`` then ``b x a``,
    so ``n`` must be even.
    """
    check_digits(n_digits)
    digits_b = check_digits(n_digits if n_digits_b is None else n_digits_b, name="n_digits_b")
    if n < 1 or (both_orders and n % 2):
        raise ValueError(f"n={n} problems: need n >= 1, and an even n when both_orders=True.")
    rng = random.Random(seed)
    problems: list[Problem] = []
    while len(problems) < n:
        a = rng.randrange(10 ** (n_digits - 1), 10**n_digits)
        b = rng.randrange(10 ** (digits_b - 1), 10**digits_b)
        problems.append(Problem(a, b))
        if both_orders:
            problems.append(Problem(b, a))
    return problems


def _digits_map(value: int, step: int) -> int:
    return int("".join(str((int(d) + step) % 10) for d in str(value)))


PERTURBATIONS: dict[str, Callable[[int], int]] = {
    "plus_1": lambda x: x + 1,
    "minus_1": lambda x: x - 1,
    "plus_10": lambda x: x + 10,
    "minus_10": lambda x: x - 10,
    "double": lambda x: x * 2,
    "halve": lambda x: x // 2,
    "reverse_digits": lambda x: int(str(x)[::-1]),
    "sort_digits": lambda x: int("".join(sorted(str(x)))),
    "rotate_left": lambda x: int(str(x)[1:] + str(x)[0]),
    "rotate_right": lambda x: int(str(x)[-1] + str(x)[:-1]),
    "digits_plus_1": lambda x: _digits_map(x, 1),
    "digits_minus_1": lambda x: _digits_map(x, -1),
}
"""The twelve perturbations of the source analysis, by name (on non-negative integers)."""


def perturbations(answer: int) -> dict[str, int]:
    """Every perturbation of ``answer`` that is a valid wrong answer (non-negative, not ``answer``)."""
    if isinstance(answer, bool) or not isinstance(answer, int) or answer < 0:
        raise ValueError(f"answer={answer!r} is not a non-negative integer; perturbations need a product.")
    out = {}
    for name, fn in PERTURBATIONS.items():
        value = fn(answer)
        if value >= 0 and value != answer:
            out[name] = value
    return out


def perturb(answer: int, rng: random.Random, *, names: tuple[str, ...] | None = None) -> int:
    """A random valid perturbation of ``answer`` (among ``names`` if given), drawn with ``rng``."""
    candidates = perturbations(answer)
    if names is not None:
        unknown = set(names) - set(PERTURBATIONS)
        if unknown:
            raise ValueError(f"Unknown perturbation(s) {sorted(unknown)}: choose from {list(PERTURBATIONS)}.")
        candidates = {k: v for k, v in candidates.items() if k in names}
    if not candidates:
        raise ValueError(f"No perturbation of {answer} among {names or list(PERTURBATIONS)} differs from it.")
    return candidates[rng.choice(sorted(candidates))]
