"""Prompt batches: tokenizing problems so that positions line up across a batch.

Patching and attribution compare activations position by position across prompts, so every prompt of a
batch must have the same number of tokens (the source analysis chose 5-digit operands for that). By
default :func:`tokenize_prompts` checks it and raises :class:`UnequalLengthError`, naming the prompts and
showing their tokens. The alternative is left padding: the final token of every prompt then sits at the
last position and ``attention_mask`` marks the padding.

Corrupted prompts, for patching, come from the clean ones: the source's *reversed-batch* pairing (prompt i
is corrupted by prompt n-1-i; with operand-swapped pairs this can pair a prompt with one of the same
product) and a better *same-length* pairing (fresh operands of the same digit counts and a different
product). :func:`check_corruption` refuses a pairing in which a corrupted answer equals its clean answer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from circuit.task import Problem

__all__ = [
    "CorruptionError",
    "PromptBatch",
    "UnequalLengthError",
    "bos_token_id",
    "check_corruption",
    "corrupt_reversed",
    "corrupt_same_length",
    "tokenize_prompts",
]


class UnequalLengthError(ValueError):
    """The prompts of a batch do not have the same number of tokens."""


class CorruptionError(ValueError):
    """A corrupted prompt has the same answer as its clean prompt."""


@dataclass(frozen=True)
class PromptBatch:
    """Tokenized prompts whose positions line up.

    Attributes:
        prompts: the prompt strings.
        tokens: token ids, BOS first when ``prepend_bos``.
        attention_mask: 1 on real tokens, 0 on (left) padding.
        final_position: the position of each prompt's last token (all equal to ``pos - 1``).
        bos: whether a BOS token was prepended.
    """

    prompts: tuple[str, ...]
    tokens: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    final_position: Int[Tensor, " batch"]
    bos: bool

    @property
    def padded(self) -> bool:
        return bool((self.attention_mask == 0).any())

    def __len__(self) -> int:
        return len(self.prompts)


def bos_token_id(tokenizer: Any) -> int:
    """The token prepended as BOS: the tokenizer's BOS, else its EOS (Qwen's ``<|endoftext|>``)."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos is None:
        raise ValueError("The tokenizer has neither a BOS nor an EOS token to prepend; pass prepend_bos=False.")
    return int(bos)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_prompts(
    tokenizer: Any, prompts: Sequence[str], *, prepend_bos: bool = True, padding: str = "error"
) -> PromptBatch:
    """Tokenize ``prompts`` into one batch whose positions line up.

    Args:
        tokenizer: any HF tokenizer.
        prompts: the prompt strings.
        prepend_bos: prepend the BOS token (Qwen has none: its ``<|endoftext|>`` is used, as in the source).
        padding: ``"error"`` raises :class:`UnequalLengthError` on unequal lengths; ``"left"`` left-pads with
            the pad token and masks it.
    """
    if padding not in {"error", "left"}:
        raise ValueError(f"padding={padding!r}: use 'error' (equal lengths required) or 'left'.")
    if not prompts:
        raise ValueError("No prompts given: a batch needs at least one prompt.")
    bos = [bos_token_id(tokenizer)] if prepend_bos else []
    ids = [bos + _encode(tokenizer, p) for p in prompts]
    lengths = [len(x) for x in ids]
    longest = max(lengths)
    if len(set(lengths)) > 1 and padding == "error":
        rows = "\n".join(
            f"  {n:3d} tokens  {p!r}: {tokenizer.convert_ids_to_tokens(x)}" for p, x, n in zip(prompts, ids, lengths)
        )
        raise UnequalLengthError(
            f"Prompts have unequal token lengths ({sorted(set(lengths))}); positions would not line up "
            f"across the batch:\n{rows}\nUse operands with the same digit counts, or padding='left'."
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (bos[0] if bos else 0)
    tokens = torch.tensor([[pad] * (longest - len(x)) + x for x in ids], dtype=torch.long)
    mask = torch.tensor([[0] * (longest - len(x)) + [1] * len(x) for x in ids], dtype=torch.long)
    final = torch.full((len(prompts),), longest - 1, dtype=torch.long)
    return PromptBatch(tuple(prompts), tokens, mask, final, bool(prepend_bos))


def check_corruption(clean: Sequence[Problem], corrupted: Sequence[Problem]) -> None:
    """Raise :class:`CorruptionError` if the pairing is uneven or a corrupted answer equals its clean one."""
    if len(clean) != len(corrupted):
        raise CorruptionError(f"{len(clean)} clean problems but {len(corrupted)} corrupted ones.")
    same = [(c.prompt, x.prompt) for c, x in zip(clean, corrupted) if c.product == x.product]
    if same:
        raise CorruptionError(
            f"{len(same)} corrupted prompt(s) have the same product as their clean prompt, so patching them "
            f"measures nothing: {same[:4]}. Use corrupt_same_length()."
        )


def corrupt_reversed(clean: Sequence[Problem]) -> list[Problem]:
    """The source analysis' pairing: clean prompt i is corrupted by clean prompt n-1-i.

    It is not checked: with an odd count the middle prompt, and with operand-swapped pairs in mirrored
    places, a prompt is paired with its own product. Call :func:`check_corruption` to find out.
    """
    return list(reversed(list(clean)))


def corrupt_same_length(clean: Sequence[Problem], *, seed: int = 0, max_tries: int = 1000) -> list[Problem]:
    """For each problem, fresh operands with the same digit counts and a different product (seeded).

    Same digit counts means the same token length for tokenizers that split digits (Qwen2.5 does).
    """
    rng = random.Random(seed)
    out = []
    for problem in clean:
        na, nb = len(str(problem.a)), len(str(problem.b))
        for _ in range(max_tries):
            a = rng.randrange(10 ** (na - 1), 10**na)
            b = rng.randrange(10 ** (nb - 1), 10**nb)
            if a * b != problem.product:
                out.append(Problem(a, b))
                break
        else:  # pragma: no cover - needs a pathological problem
            raise CorruptionError(f"No corrupted problem with a different product found for {problem.prompt!r}.")
    check_corruption(clean, out)
    return out
