"""Claim: the model solves the task: greedy decoding writes the product.

The source checks its model with TransformerLens' ``test_prompt``: for each answer token of one prompt, the
top predictions with the answer teacher-forced. Qwen2.5-0.5B there puts the leading " " and the first digit
("3" of " 3000801762") at rank 1 and later digits at ranks 2 to 10: it gets the answer's start, not the whole
product. Two statistics over the clean prompts of a set, each with a bootstrap interval over prompts:

- *exact match*: the fraction of prompts on which greedy decoding writes the whole answer (``" "``, every
  digit and, when the spec asks, the stop token): every answer token is the argmax with the answer
  teacher-forced (``circuit.evaluation``);
- *leading tokens*: the fraction of the first ``leading_tokens`` answer tokens that are the argmax (the
  source's check of the answer's start).

The report shows, per prompt, the argmax continuation and the rank of the correct token at every answer
position (1: the top prediction), the source's ``test_prompt`` as a table.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from circuit.decision import Rule
from circuit.discover import DraftContext, drafts
from circuit.spec import ClaimSpec, Fraction, Rank, register_claim

STATEMENT = ("The model solves the task: greedy decoding writes the product (exact match), or at least the "
             "answer's leading tokens, on a stated fraction of prompts.")


@register_claim("task-accuracy")
@dataclass(frozen=True)
class TaskAccuracy(ClaimSpec):
    """Parameters of the task-accuracy claim (one table per spec; state either number or both)."""

    min_exact_match: Fraction | None = None
    """Fraction of prompts greedy decoding answers exactly must be at least this (0..1; omit to not judge it)."""
    min_leading_top1: Fraction | None = None
    """Fraction of the first ``leading_tokens`` answer tokens that are the argmax must be at least this (0..1;
    omit to not judge it)."""
    leading_tokens: Rank = 2
    """How many answer tokens from the start the leading-token statistic reads (the leading " " is one)."""
    stop: bool = True
    """Whether the answer includes the stop token (EOS) after the digits: true for models trained to stop
    (the bundled ones), false for a pretrained model that goes on writing (Qwen2.5)."""

    def check(self) -> None:
        for name in ("min_exact_match", "min_leading_top1"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"{name} = {value}: a fraction of prompts, between 0 and 1.")
        if self.min_exact_match is None and self.min_leading_top1 is None:
            raise ValueError("states neither min_exact_match nor min_leading_top1: state at least one.")
        if self.leading_tokens < 1:
            raise ValueError(f"leading_tokens = {self.leading_tokens}: read at least 1 answer token.")


# --- statistics ---------------------------------------------------------------------------------------

def predictions(lab, ps, stop: bool):
    """Per clean prompt of ``ps``: ``circuit.evaluation.AnswerPrediction`` (cached in the lab)."""
    from circuit.evaluation import answer_predictions

    model = lab.model
    return lab._cached((ps, "answer_predictions", stop), lambda: answer_predictions(
        model.bridge, model.tokenizer, list(ps.clean), require_stop=stop, device=model.device))


def exact_match(lab, ps, stop: bool):
    """Interval of the fraction of prompts answered exactly (greedy)."""
    import torch

    return lab.ci(torch.tensor([float(p.correct) for p in predictions(lab, ps, stop)], dtype=torch.float64))


def leading_top1(lab, ps, leading_tokens: int, stop: bool):
    """Interval of the mean over prompts of the fraction of the first ``leading_tokens`` answer tokens that are
    the argmax (fewer when an answer is shorter)."""
    import torch

    fractions = [sum(r == 1 for r in p.rank[:leading_tokens]) / len(p.rank[:leading_tokens])
                 for p in predictions(lab, ps, stop)]
    return lab.ci(torch.tensor(fractions, dtype=torch.float64))


def _table(lab, ps, stop: bool):
    from circuit.report import Table

    tok = lab.model.tokenizer
    rows = [[p.problem.prompt, p.problem.answer.strip(), tok.decode(list(p.predicted)).replace(tok.eos_token or "\0", "⏎"),
             " ".join(map(str, p.rank)), "yes" if p.correct else f"no (token {p.first_error})"]
            for p in predictions(lab, ps, stop)]
    return {"Per prompt: greedy answer and the rank of each correct answer token (teacher-forced)": (
        lambda: Table(["prompt", "product", "argmax at each answer position", "rank of the correct token, per answer token",
                       "exact"], rows),
        "Ranks read left to right from the leading ' ' (then one per digit" + (", then the stop token" if stop else "")
        + "); 1 is the top prediction. If the claim holds, the ranks are 1 where the spec says the model is right.")}


# --- the claim ----------------------------------------------------------------------------------------

@pytest.mark.claim(id="task-accuracy", statement=STATEMENT)
@given(data=st.data())
def test_greedy_decoding_writes_the_product(claim, verdict, data):
    if claim.min_exact_match is None:
        pytest.skip("the spec states no min_exact_match for task-accuracy")
    verdict.judge(data, "fraction of prompts answered exactly by greedy decoding",
                  lambda lab, ps: exact_match(lab, ps, claim.stop), Rule(">=", claim.min_exact_match, "min_exact_match"),
                  figures=lambda lab, ps: _table(lab, ps, claim.stop), task=False)


@pytest.mark.claim(id="task-accuracy", statement=STATEMENT)
@given(data=st.data())
def test_the_leading_answer_tokens_are_the_top_prediction(claim, verdict, data):
    if claim.min_leading_top1 is None:
        pytest.skip("the spec states no min_leading_top1 for task-accuracy")
    k = claim.leading_tokens
    verdict.judge(data, f"fraction of the first {k} answer tokens that are the top prediction",
                  lambda lab, ps: leading_top1(lab, ps, k, claim.stop),
                  Rule(">=", claim.min_leading_top1, "min_leading_top1"),
                  figures=lambda lab, ps: _table(lab, ps, claim.stop), task=False)


# --- discovery ----------------------------------------------------------------------------------------

@drafts("task-accuracy")
def _draft(ctx: DraftContext) -> tuple[TaskAccuracy | None, str]:
    """State exact match (with stop) where the held-out sets support a threshold of at least 0.5, else the leading
    two tokens' top-1 rate."""
    def exact(lab, ps):
        return exact_match(lab, ps, True)

    def leading(lab, ps):
        return leading_top1(lab, ps, 2, True)

    rule = ctx.rule(">=", exact, "min_exact_match")
    if rule.threshold >= 0.5:
        return TaskAccuracy(tolerance=ctx.tolerance(exact), min_exact_match=rule.threshold), ""
    not_exact = ctx.log[ctx.claim_id].pop("min_exact_match")
    rule = ctx.rule(">=", leading, "min_leading_top1")
    if rule.threshold >= 0.5:
        return TaskAccuracy(tolerance=ctx.tolerance(leading), min_leading_top1=rule.threshold), (
            f"exact match not stated: {not_exact} (< 0.5)")
    return None, f"not stated: exact match {not_exact}; leading two tokens top-1 {ctx.log[ctx.claim_id]['min_leading_top1']}"
