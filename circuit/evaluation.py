"""Task accuracy: does the model, decoding greedily, write the exact product?

A problem counts as solved when greedy decoding after ``BOS + "a x b ="`` produces the answer's tokens
(``" "`` then one token per digit) followed by the stop token (EOS), i.e. the model writes the product and
stops. Greedy decoding reproduces a given sequence exactly when, with that sequence teacher-forced, the
argmax at every answer position is the next token of the sequence: if all argmaxes agree, greedy decoding
follows the sequence; if one disagrees, greedy decoding leaves it there. So one batched forward pass
over ``prompt + answer + EOS`` decides exact match for a whole batch, with no generation loop. Rows are
right-padded; under causal attention padding after a row's last token changes none of its logits.

Works with any callable mapping token ids to logits: a Hugging Face causal LM (its output's ``.logits``)
or a TransformerLens bridge / ``HookedTransformer`` (a logits tensor).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuit.task import Problem

__all__ = ["AnswerPrediction", "ExactMatchResult", "answer_predictions", "exact_match_accuracy",
           "teacher_forced_probabilities"]


@dataclass(frozen=True)
class ExactMatchResult:
    """Per-problem exact match of greedy decoding.

    Attributes:
        problems: the problems, in the order given.
        correct: whether greedy decoding wrote each problem's answer (and then the stop token).
        first_error: per problem, the index of the first wrong answer token (0 is the leading space), or
            ``-1`` when correct.
    """

    problems: tuple[Problem, ...]
    correct: tuple[bool, ...]
    first_error: tuple[int, ...]

    @property
    def accuracy(self) -> float:
        """Fraction of problems solved exactly."""
        return sum(self.correct) / len(self.correct)

    @property
    def n_correct(self) -> int:
        return sum(self.correct)

    def by_digits(self) -> dict[str, float]:
        """Accuracy per operand digit counts, keyed ``"{digits of a}x{digits of b}"``."""
        groups: dict[str, list[bool]] = {}
        for problem, ok in zip(self.problems, self.correct):
            groups.setdefault(f"{len(str(problem.a))}x{len(str(problem.b))}", []).append(ok)
        return {key: sum(v) / len(v) for key, v in sorted(groups.items())}


def _logits(model: Any, tokens: Int[Tensor, "batch pos"]) -> Tensor:
    out = model(tokens)
    return out if isinstance(out, Tensor) else out.logits


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@dataclass(frozen=True)
class AnswerPrediction:
    """What the model predicts at each answer token of one problem, with the answer teacher-forced.

    Attributes:
        expected: the answer's token ids (``" "``, one per digit, then the stop token when required).
        predicted: the argmax token id at each of those positions.
        rank: the rank of the expected token there (1: the argmax; ties count against it).
    """

    problem: Problem
    expected: tuple[int, ...]
    predicted: tuple[int, ...]
    rank: tuple[int, ...]

    @property
    def correct(self) -> bool:
        """Whether greedy decoding writes the whole answer (every expected token is the argmax)."""
        return self.expected == self.predicted

    @property
    def first_error(self) -> int:
        """The index of the first answer token that is not the argmax, or -1."""
        return next((i for i, (e, p) in enumerate(zip(self.expected, self.predicted)) if e != p), -1)


@torch.no_grad()
def answer_predictions(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Problem],
    *,
    batch_size: int = 256,
    prepend_bos: bool = True,
    require_stop: bool = True,
    device: str | torch.device | None = None,
) -> list[AnswerPrediction]:
    """Per problem, the argmax and the rank of the expected token at every answer position (one batched
    forward pass per ``batch_size`` problems over ``prompt + answer``); arguments as :func:`exact_match_accuracy`.
    """
    if not problems:
        raise ValueError("No problems given: exact-match accuracy needs at least one problem.")
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    if (prepend_bos and bos is None) or (require_stop and eos is None):
        raise ValueError("The tokenizer has no EOS token: pass prepend_bos=False and require_stop=False.")
    if device is None:
        first = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
        device = first.device if first is not None else torch.device("cpu")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos if eos is not None else 0
    out: list[AnswerPrediction] = []
    for start in range(0, len(problems), batch_size):
        chunk = problems[start : start + batch_size]
        rows, spans = [], []
        for problem in chunk:
            prompt = ([bos] if prepend_bos else []) + _ids(tokenizer, problem.prompt)
            answer = _ids(tokenizer, problem.answer) + ([eos] if require_stop else [])
            rows.append(prompt + answer)
            spans.append((len(prompt), len(answer)))
        length = max(map(len, rows))
        tokens = torch.tensor([r + [pad] * (length - len(r)) for r in rows], device=device)
        logits = _logits(model, tokens)  # [batch, pos, vocab]: the prediction for the next token
        for i, (problem, (begin, n)) in enumerate(zip(chunk, spans)):
            read = logits[i, begin - 1 : begin - 1 + n].float()  # only the answer positions, in float32
            target = tokens[i, begin : begin + n]
            rank = (read >= read.gather(-1, target[:, None])).sum(-1)
            out.append(AnswerPrediction(problem, tuple(target.tolist()), tuple(read.argmax(-1).tolist()),
                                        tuple(rank.tolist())))
    return out


@torch.no_grad()
def exact_match_accuracy(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Problem],
    *,
    batch_size: int = 256,
    prepend_bos: bool = True,
    require_stop: bool = True,
    device: str | torch.device | None = None,
) -> ExactMatchResult:
    """Greedy exact-match accuracy of ``model`` on ``problems``, in batches of ``batch_size``.

    Args:
        model: token ids ``[batch, pos]`` -> logits (HF causal LM or TransformerLens model).
        tokenizer: the model's tokenizer; its EOS is the BOS prepended (Qwen has none) and the stop token.
        problems: the problems; prompts may have different lengths.
        prepend_bos: prepend the BOS (or, lacking one, the EOS) token to each prompt, as in training.
        require_stop: also require the stop token (EOS) right after the last digit.
        device: where to put the tokens (default: the model's first parameter's device, else cpu).
    """
    predictions = answer_predictions(model, tokenizer, problems, batch_size=batch_size, prepend_bos=prepend_bos,
                                     require_stop=require_stop, device=device)
    return ExactMatchResult(tuple(problems), tuple(p.correct for p in predictions),
                            tuple(p.first_error for p in predictions))


@torch.no_grad()
def teacher_forced_probabilities(
    model: Any,
    tokenizer: Any,
    prompt: str,
    answer: str,
    *,
    prepend_bos: bool = True,
    device: str | torch.device | None = None,
) -> tuple[tuple[int, ...], Float[Tensor, "pos d_vocab"]]:
    """What TransformerLens' ``utils.test_prompt(prompt, answer, model, prepend_bos=True)`` prints, as numbers: the
    answer's token ids and, at each of them, the next-token probabilities with the answer teacher-forced (row ``i``:
    the distribution the model gives answer token ``i`` after ``BOS + prompt + answer[:i]``; softmax in float32).
    ``prompt`` and ``answer`` are tokenized separately, as ``test_prompt`` does; any text works.

    Raises:
        ValueError: an empty prompt or answer (one line naming it).
    """
    if not prompt or not answer:
        raise ValueError(f"prompt {prompt!r}, answer {answer!r}: both must be non-empty text (the answer is "
                         f"teacher-forced after the prompt and read token by token).")
    eos = tokenizer.eos_token_id
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    if prepend_bos and bos is None:
        raise ValueError("The tokenizer has no BOS or EOS token to prepend: pass prepend_bos=False.")
    if device is None:
        first = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
        device = first.device if first is not None else torch.device("cpu")
    start = ([bos] if prepend_bos else []) + _ids(tokenizer, prompt)
    answer_ids = _ids(tokenizer, answer)
    tokens = torch.tensor([start + answer_ids], device=device)
    logits = _logits(model, tokens)[0, len(start) - 1 : len(start) - 1 + len(answer_ids)]
    return tuple(answer_ids), logits.float().softmax(-1).cpu()
