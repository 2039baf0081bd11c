"""Metrics: how much a model prefers the correct product to a perturbed one.

Three encodings of "the model prefers the right answer", each a per-prompt score (and its mean):

(a) **Seed-compatible logit difference** (:func:`seed_logit_diff`). The source analysis tokenized each
    answer *with a BOS prepended*, zero-padded correct and incorrect answers to the longest, and read
    every one of those token slots at the *final prompt position*, averaging ``logit[correct] -
    logit[incorrect]`` over slots. The BOS and space slots contribute exactly 0, padding slots compare a
    digit with token 0 (``"!"``), and all slots are read at one position although only the first answer
    token is predicted there. We reproduce it, quirks included, so the source's numbers can be checked.
(b) **Teacher-forced log-probability difference** (:func:`teacher_forced_logprob_diff`). The log-prob of
    the whole correct answer minus that of the incorrect one, each answer token scored after the prompt
    and the previous answer tokens. It needs the answers in the input: rows ``0..B-1`` of the token
    batch are ``prompt + correct answer``, rows ``B..2B-1`` are ``prompt + incorrect answer``.
(c) **First differing token** (:func:`first_token_logit_diff`). Teacher-force the answers' common prefix
    and read ``logit[correct] - logit[incorrect]`` at the first token where they differ.

Every metric is an :class:`AnswerMetric`: a callable ``logits -> Float[Tensor, "batch"]`` that also
declares which positions (per row of the token batch) and which vocabulary entries it reads, so that
the patching engine can compute only those logits. Swapping correct and incorrect negates each metric.
A metric returns exactly one finite value per prompt: logits that are not finite are refused
(:class:`~circuit.stats.NonFiniteError`), and so is a score of another shape than the batch's
(:class:`MetricShapeError`, also checked by :func:`check_per_prompt` wherever a metric is called).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuit.prompts import PromptBatch, bos_token_id, tokenize_prompts
from circuit.stats import check_finite
from circuit.task import Problem

__all__ = [
    "AnswerMetric",
    "LogitDiffMetric",
    "LogProbDiffMetric",
    "MetricInputs",
    "MetricShapeError",
    "answer_token_ids",
    "check_per_prompt",
    "first_difference",
    "first_token_logit_diff",
    "seed_logit_diff",
    "teacher_forced_logprob_diff",
]


class MetricShapeError(ValueError):
    """A metric returned something other than one value per prompt."""


def check_per_prompt(values: Any, n_prompts: int, what: str = "The metric") -> None:
    """Raise :class:`MetricShapeError` unless ``values`` has shape ``(n_prompts,)``: one value per prompt."""
    shape = tuple(getattr(values, "shape", ()))
    if shape != (n_prompts,):
        raise MetricShapeError(
            f"{what} returned shape {shape} for a batch of {n_prompts} prompts: a metric returns one value per "
            f"prompt, shape ({n_prompts},). Reduce over read positions and answer tokens inside the metric, never "
            f"over prompts.")


def answer_token_ids(tokenizer: Any, answer: str | int) -> list[int]:
    """Token ids of an answer such as ``" 7023865200"`` (no BOS). Raises if it is not a number."""
    text = f" {answer}" if isinstance(answer, int) and not isinstance(answer, bool) else answer
    if not isinstance(text, str) or not text.strip().isdigit() or text != f" {text.strip()}":
        raise ValueError(
            f"Answer {answer!r} is not a number in the task's format (a space then digits, e.g. ' 7023865200'). "
            f"Pass the product as an int or as ' <digits>'."
        )
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class AnswerMetric:
    """A per-prompt score computed from a few entries of the logits.

    Subclasses set ``positions`` (the positions read, per row of the token batch: ``[row, read]``) and
    ``vocab`` (the token ids read, or ``None`` for the whole vocabulary), and implement :meth:`score` on
    the selected logits. ``metric(logits)`` is ``metric.score(metric.select(logits))``.
    """

    positions: Int[Tensor, "row read"]
    vocab: Int[Tensor, " v"] | None

    def select(self, logits: Float[Tensor, "row pos d_vocab"]) -> Float[Tensor, "row read v"]:
        """The logits this metric reads, at ``positions`` and (if set) ``vocab``."""
        check_finite(logits, "The logits are", hint="the model diverged; check the dtype (float32 recommended) "
                                                     "and the weights")
        positions = self.positions.to(logits.device)
        if logits.shape[0] != positions.shape[0]:
            raise ValueError(f"Logits have {logits.shape[0]} rows but the metric reads {positions.shape[0]}.")
        rows = torch.arange(positions.shape[0], device=logits.device)[:, None]
        picked = logits[rows, positions]
        return picked if self.vocab is None else picked[..., self.vocab.to(logits.device)]

    def score(self, selected: Float[Tensor, "row read v"]) -> Float[Tensor, " batch"]:
        raise NotImplementedError

    @property
    def n_prompts(self) -> int:
        """Prompts scored: one per row of ``positions`` (subclasses that read several rows per prompt say so)."""
        return int(self.positions.shape[0])

    def __call__(self, logits: Float[Tensor, "row pos d_vocab"]) -> Float[Tensor, " batch"]:
        values = self.score(self.select(logits))
        check_per_prompt(values, self.n_prompts, f"The metric {type(self).__name__}")
        return values

    def mean(self, logits: Float[Tensor, "row pos d_vocab"]) -> Float[Tensor, ""]:
        return self(logits).mean()


@dataclass(frozen=True, eq=False)
class LogitDiffMetric(AnswerMetric):
    """Weighted mean over read slots of ``logit[correct] - logit[incorrect]`` (one row per prompt)."""

    positions: Int[Tensor, "batch read"]
    correct: Int[Tensor, "batch read"]
    incorrect: Int[Tensor, "batch read"]
    weights: Float[Tensor, "batch read"]

    @property
    def vocab(self) -> Int[Tensor, " v"]:  # type: ignore[override]
        return torch.unique(torch.cat([self.correct.flatten(), self.incorrect.flatten()]))

    def score(self, selected: Float[Tensor, "batch read v"]) -> Float[Tensor, " batch"]:
        vocab = self.vocab.to(selected.device)
        c = torch.searchsorted(vocab, self.correct.to(selected.device))
        i = torch.searchsorted(vocab, self.incorrect.to(selected.device))
        diff = selected.gather(-1, c[..., None])[..., 0] - selected.gather(-1, i[..., None])[..., 0]
        return (diff * self.weights.to(diff)).sum(-1)

    def swapped(self) -> LogitDiffMetric:
        """The same metric with correct and incorrect exchanged (its value is negated)."""
        return replace(self, correct=self.incorrect, incorrect=self.correct)


@dataclass(frozen=True, eq=False)
class LogProbDiffMetric(AnswerMetric):
    """``sum log p(correct tokens) - sum log p(incorrect tokens)``; rows ``[0, B)`` correct, ``[B, 2B)`` not.

    ``positions[r, k]`` is the position whose logits predict ``targets[r, k]``; ``mask`` drops padding.
    """

    positions: Int[Tensor, "row read"]
    targets: Int[Tensor, "row read"]
    mask: Float[Tensor, "row read"]
    correct_first: bool = True
    """Whether rows ``[0, B)`` hold the correct answer (``swapped()`` flips it)."""
    vocab = None

    @property
    def n_prompts(self) -> int:
        """Two rows per prompt: its correct and its incorrect answer."""
        return int(self.positions.shape[0]) // 2

    def score(self, selected: Float[Tensor, "row read d_vocab"]) -> Float[Tensor, " batch"]:
        logp = selected.log_softmax(-1).gather(-1, self.targets.to(selected.device)[..., None])[..., 0]
        total = (logp * self.mask.to(logp)).sum(-1)
        half = total.shape[0] // 2
        first, second = total[:half], total[half:]
        return first - second if self.correct_first else second - first

    def swapped(self) -> LogProbDiffMetric:
        """The same metric with correct and incorrect exchanged (its value is negated)."""
        return replace(self, correct_first=not self.correct_first)


@dataclass(frozen=True)
class MetricInputs:
    """Tokens to run (clean or corrupted) and the metric that reads their logits."""

    tokens: Int[Tensor, "row pos"]
    metric: AnswerMetric
    batch: PromptBatch | None = None


def _check_answers(problems: Sequence[Problem], incorrect: Sequence[int]) -> None:
    if len(problems) != len(incorrect):
        raise ValueError(f"{len(problems)} problems but {len(incorrect)} incorrect answers.")
    same = [p.prompt for p, x in zip(problems, incorrect) if p.product == x]
    if same:
        raise ValueError(f"The incorrect answer equals the correct product for {same}: use task.perturb().")


def seed_logit_diff(
    tokenizer: Any, batch: PromptBatch, problems: Sequence[Problem], incorrect: Sequence[int]
) -> LogitDiffMetric:
    """Metric (a): the source analysis' logit difference, quirks included (see the module docstring)."""
    _check_answers(problems, incorrect)
    bos = bos_token_id(tokenizer)
    pairs = [([bos, *answer_token_ids(tokenizer, p.product)], [bos, *answer_token_ids(tokenizer, x)])
             for p, x in zip(problems, incorrect)]
    slots = max(max(len(c), len(i)) for c, i in pairs)
    correct = torch.tensor([c + [0] * (slots - len(c)) for c, _ in pairs])
    wrong = torch.tensor([i + [0] * (slots - len(i)) for _, i in pairs])
    positions = batch.final_position[:, None].expand(-1, slots).clone()
    weights = torch.full(correct.shape, 1.0 / slots)
    return LogitDiffMetric(positions, correct, wrong, weights)


def _teacher_forced_rows(
    tokenizer: Any, problems: Sequence[Problem], answers: Sequence[Sequence[int]], prepend_bos: bool
) -> tuple[list[list[int]], list[int]]:
    batch = tokenize_prompts(tokenizer, [p.prompt for p in problems], prepend_bos=prepend_bos)
    prompt_len = batch.tokens.shape[1]
    return [row + list(a) for row, a in zip(batch.tokens.tolist(), answers)], [prompt_len] * len(problems)


def teacher_forced_logprob_diff(
    tokenizer: Any, problems: Sequence[Problem], incorrect: Sequence[int], *, prepend_bos: bool = True
) -> MetricInputs:
    """Metric (b): tokens ``[prompt+correct; prompt+incorrect]`` (2B rows, right-padded) and its metric."""
    _check_answers(problems, incorrect)
    correct = [answer_token_ids(tokenizer, p.product) for p in problems]
    wrong = [answer_token_ids(tokenizer, x) for x in incorrect]
    rows, starts = _teacher_forced_rows(tokenizer, [*problems, *problems], [*correct, *wrong], prepend_bos)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    reads = max(len(r) - s for r, s in zip(rows, starts))
    positions = torch.zeros(len(rows), reads, dtype=torch.long)
    targets = torch.zeros(len(rows), reads, dtype=torch.long)
    mask = torch.zeros(len(rows), reads)
    for r, (row, start) in enumerate(zip(rows, starts)):
        n = len(row) - start
        positions[r, :n] = torch.arange(start - 1, start - 1 + n)
        targets[r, :n] = torch.tensor(row[start:])
        mask[r, :n] = 1.0
    tokens = torch.tensor([row + [pad] * (width - len(row)) for row in rows])
    return MetricInputs(tokens, LogProbDiffMetric(positions, targets, mask))


def first_difference(tokenizer: Any, answer: int, other: int) -> tuple[list[int], int, int] | None:
    """``(common prefix, answer's token, other's token)`` at the first token where two answers differ, or
    ``None`` when one answer's tokens only extend the other's."""
    a, b = answer_token_ids(tokenizer, answer), answer_token_ids(tokenizer, other)
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
    return None if k is None else (a[:k], a[k], b[k])


def first_token_logit_diff(
    tokenizer: Any, problems: Sequence[Problem], incorrect: Sequence[int], *, prepend_bos: bool = True
) -> MetricInputs:
    """Metric (c): tokens ``prompt + common answer prefix`` (right-padded) and the logit diff at the split."""
    _check_answers(problems, incorrect)
    prefixes, firsts = [], []
    for p, x in zip(problems, incorrect):
        split = first_difference(tokenizer, p.product, x)
        if split is None:
            raise ValueError(f"Answers {p.answer!r} and ' {x}' differ only in length after a common prefix: "
                             f"there is no first differing token. Choose another perturbation.")
        prefixes.append(split[0])
        firsts.append(split[1:])
    rows, starts = _teacher_forced_rows(tokenizer, problems, prefixes, prepend_bos)
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    tokens = torch.tensor([row + [pad] * (width - len(row)) for row in rows])
    positions = torch.tensor([[len(row) - 1] for row in rows])
    correct = torch.tensor([[c] for c, _ in firsts])
    wrong = torch.tensor([[i] for _, i in firsts])
    return MetricInputs(tokens, LogitDiffMetric(positions, correct, wrong, torch.ones(len(rows), 1)))
