"""Claim: on named prompts, the model gives stated tokens stated probabilities or ranks (pinned observations).

The source runs TransformerLens' ``utils.test_prompt("68067 x 44086 =", " 3000801762", model, prepend_bos=True)``
and reads: the leading " " is the top prediction at 84.42%, then (with " " teacher-forced) "3" is the top
prediction at 73.58%, then "0" is only third (12.84%, behind "1" and "2"). ``task-accuracy`` turns such readings
into rates over prompts; this claim keeps them as they were made, on one named prompt. Each *observation* of the
spec pins one reading: a prompt, the answer teacher-forced after it, which answer token's prediction is read
(0: the first token after the prompt), the token read there (by default the answer's own token) and its stated
probability range and/or rank range (1: the top prediction; ties count against it). Any ``test_prompt``-style
reading can be pinned, on any text, as many as the spec lists.

*The interval.* One prompt has nothing to resample: the model's probability on it is one number, computed
exactly up to the rounding of the dtype it runs in. So the interval is that number within the spec's numerical
tolerance ``atol`` at the model's dtype (``[p - atol, p + atol]``; a stated bound, not a confidence level): a
reading is *supported* when its whole interval lies inside the stated range, *refuted* when it lies wholly
outside, and *inconclusive* when the range's edge is within the dtype's rounding of it. A rank's interval runs
from the best to the worst rank the token can have when every probability moves by up to ``atol``. On the bundled
models bfloat16 moves these probabilities by up to 7e-4 and float16 by up to 6e-5 from float32 (117 prompts, every
answer token; ``tests/test_claims_pinned_prompt.py`` re-measures it against the drafted ``atol``).

Two claim tests, each over all the spec's observations: the smallest slack inside the stated probability ranges,
and the smallest slack inside the stated rank ranges; each is supported when its interval lies at or above 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from circuit.decision import Rule
from circuit.drafts import DraftContext, ceil_to, drafts, floor_to
from circuit.spec import ClaimSpec, Fraction, PerDtype, Rank, register_claim
from circuit.stats import Interval

STATEMENT = ("Pinned prompts: on each named prompt, with its answer teacher-forced, the stated token at the stated "
             "answer position has the stated probability and/or rank (TransformerLens' test_prompt).")

WIDTH = 0.05
"""Discovery pins a probability to within this of what it measured (the source's "84%" read to a few points)."""

DRAFT_ATOL = PerDtype(float32=1e-4, bfloat16=0.01, float16=0.001)
"""The numerical tolerance discovery states: about 15 times the largest move from float32 measured on the bundled
models (bfloat16 7e-4, float16 6e-5; float32 across devices well below 1e-4)."""


@dataclass(frozen=True)
class Observation:
    """One pinned reading of ``test_prompt``: a token's probability and/or rank at one answer position."""

    prompt: str
    """The prompt, as given to test_prompt (BOS is prepended), e.g. "68067 x 44086 =" ."""
    answer: str
    """The answer teacher-forced after the prompt, tokenized on its own as test_prompt does, e.g. " 3000801762"."""
    answer_token: int = 0
    """Which answer token's prediction is read: 0 is the first token after the prompt, i after answer tokens 0..i-1."""
    token: str | None = None
    """The token whose probability and rank are read there (exactly one token); default the answer's own token."""
    min_probability: Fraction | None = None
    """Its probability must be at least this (omit to leave the range open below)."""
    max_probability: Fraction | None = None
    """Its probability must be at most this (omit to leave it open above)."""
    min_rank: Rank | None = None
    """Its rank must be at least this (2: it is not the top prediction; omit to leave open)."""
    max_rank: Rank | None = None
    """Its rank must be at most this (1: it is the top prediction; omit to leave open)."""

    @property
    def text(self) -> str:
        token = "its answer token" if self.token is None else repr(self.token)
        return f"{self.prompt!r} + {self.answer!r}, answer token {self.answer_token} ({token})"


@register_claim("pinned-prompt")
@dataclass(frozen=True)
class PinnedPrompt(ClaimSpec):
    """Parameters of the pinned-prompt claim."""

    observations: tuple[Observation, ...]
    """The pinned readings (at least one), each with a probability range and/or a rank range."""
    atol: PerDtype
    """The numerical tolerance of a probability at each dtype: the interval of a reading is its value +- this."""

    def check(self) -> None:
        if not self.observations:
            raise ValueError("observations: pin at least one reading.")
        for i, o in enumerate(self.observations):
            where = f"observations[{i}]"
            if not o.prompt or not o.answer:
                raise ValueError(f"{where}: prompt and answer must be non-empty text.")
            if o.answer_token < 0:
                raise ValueError(f"{where}.answer_token: is {o.answer_token}; 0 is the first answer token.")
            if all(v is None for v in (o.min_probability, o.max_probability, o.min_rank, o.max_rank)):
                raise ValueError(f"{where}: states no probability or rank; state at least one of min_probability, "
                                 f"max_probability, min_rank, max_rank.")
            for low, high in (("min_probability", "max_probability"), ("min_rank", "max_rank")):
                a, b = getattr(o, low), getattr(o, high)
                if a is not None and b is not None and a > b:
                    raise ValueError(f"{where}: {low} = {a:g} is above {high} = {b:g}: nothing lies between them.")


# --- statistics ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """What the model gives one observation: the token read, its probability and rank, the rank it can have when
    every probability moves by up to ``atol`` (``best_rank`` .. ``worst_rank``), and the top predictions there."""

    observation: Observation
    token: str
    probability: float
    rank: int
    best_rank: int
    worst_rank: int
    top: tuple[tuple[str, float], ...]


def _token_id(tokenizer, observation: Observation, answer_ids) -> int:
    if observation.token is None:
        return answer_ids[observation.answer_token]
    ids = tokenizer(observation.token, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"pinned-prompt observation {observation.text}: token {observation.token!r} is "
                         f"{len(ids)} tokens {tokenizer.convert_ids_to_tokens(ids)}; name exactly one token.")
    return ids[0]


def read(model, observation: Observation, atol: float, top: int = 5) -> Reading:
    """The model's reading of ``observation`` (``circuit.evaluation.teacher_forced_probabilities``)."""
    from circuit.evaluation import teacher_forced_probabilities

    tok = model.tokenizer
    answer_ids, probabilities = teacher_forced_probabilities(model.bridge, tok, observation.prompt, observation.answer,
                                                             device=model.device)
    if observation.answer_token >= len(answer_ids):
        raise ValueError(f"pinned-prompt observation {observation.text}: the answer has {len(answer_ids)} tokens "
                         f"{tok.convert_ids_to_tokens(list(answer_ids))}; use answer_token 0..{len(answer_ids) - 1}.")
    return reading(observation, probabilities[observation.answer_token], _token_id(tok, observation, answer_ids),
                   atol, tok, top)


def reading(observation: Observation, probabilities, token_id: int, atol: float, tokenizer=None,
            top: int = 5) -> Reading:
    """The :class:`Reading` of ``probabilities`` (``[d_vocab]``) for ``token_id``: rank 1 is the largest, ties count
    against it; within ``atol`` the token may rise above every other probability more than ``2 atol`` below it."""
    p = float(probabilities[token_id])
    others = torch.cat([probabilities[:token_id], probabilities[token_id + 1:]])
    rank = 1 + int((others >= p).sum())
    best = 1 + int((others > p + 2 * atol).sum())
    worst = 1 + int((others >= p - 2 * atol).sum())
    values, ids = probabilities.topk(min(top, probabilities.shape[-1]))
    name = (lambda i: tokenizer.decode([i])) if tokenizer is not None else str
    return Reading(observation, name(token_id), p, rank, best, worst,
                   tuple((name(int(i)), float(v)) for v, i in zip(values, ids)))


def _interval(estimate: float, low: float, high: float) -> Interval:
    """A stated bound (level 1: the value within the numerical tolerance), not a bootstrap over prompts."""
    t = lambda x: torch.tensor(float(x), dtype=torch.float64)  # noqa: E731
    return Interval(t(estimate), t(low), t(high), 1.0)


def probability_slack(readings, atol: float) -> Interval:
    """The smallest slack of the readings' probabilities inside their stated ranges (``p - min_probability``,
    ``max_probability - p``; an omitted end is open), within ``+- atol``. Raises ValueError when no reading states a
    probability."""
    slacks = []
    for r in readings:
        o = r.observation
        slacks += [] if o.min_probability is None else [r.probability - o.min_probability]
        slacks += [] if o.max_probability is None else [o.max_probability - r.probability]
    if not slacks:
        raise ValueError("no observation states a probability")
    s = min(slacks)
    return _interval(s, s - atol, s + atol)


def rank_slack(readings) -> Interval:
    """The smallest slack of the readings' ranks inside their stated ranges (``max_rank - rank``, ``rank -
    min_rank``; an omitted end is open): its interval runs over the ranks each token can have within the tolerance
    (``best_rank`` .. ``worst_rank``). Raises ValueError when no reading states a rank."""
    rows = []  # (estimate, low, high) of one slack
    for r in readings:
        o = r.observation
        if o.max_rank is not None:
            rows.append((o.max_rank - r.rank, o.max_rank - r.worst_rank, o.max_rank - r.best_rank))
        if o.min_rank is not None:
            rows.append((r.rank - o.min_rank, r.best_rank - o.min_rank, r.worst_rank - o.min_rank))
    if not rows:
        raise ValueError("no observation states a rank")
    return _interval(*(min(column) for column in zip(*rows)))


# --- the claim tests ----------------------------------------------------------------------------------


def _readings(model, claim, atol):
    try:
        return [read(model, o, atol) for o in claim.observations]
    except ValueError as error:
        pytest.fail(str(error), pytrace=False)


def _table(readings, atol):
    from circuit.report import Table

    def stated(low, high, fmt):
        return f"[{'-' if low is None else fmt(low)}, {'-' if high is None else fmt(high)}]"

    rows = [[r.observation.prompt, r.observation.answer, r.observation.answer_token, repr(r.token),
             f"{r.probability:.4f}",
             r.rank if r.best_rank == r.worst_rank else f"{r.rank} ({r.best_rank}..{r.worst_rank})",
             stated(r.observation.min_probability, r.observation.max_probability, lambda x: f"{x:g}"),
             stated(r.observation.min_rank, r.observation.max_rank, str),
             ", ".join(f"{t!r} {p:.1%}" for t, p in r.top)] for r in readings]
    return {"Pinned readings (test_prompt): the token read, its probability and rank, and the top predictions": (
        lambda: Table(["prompt", "answer", "answer token", "token", "probability", "rank", "stated probability",
                       "stated rank", "top predictions"], rows),
        f"Each row is one observation of the spec, measured with the answer teacher-forced. If the claim holds, every "
        f"probability lies in its stated range by more than atol = {atol:g}, and every rank in its stated range.")}


def _judge(model, claim, verdict, what: str):
    dtype = str(model.dtype).removeprefix("torch.")
    atol = claim.atol.at(model.dtype)
    readings = _readings(model, claim, atol)
    stated = [r for r in readings if (what == "probability" and (r.observation.min_probability is not None or
                                                                 r.observation.max_probability is not None))
              or (what == "rank" and (r.observation.min_rank is not None or r.observation.max_rank is not None))]
    if not stated:
        pytest.skip(f"the spec pins no {what} for pinned-prompt")
    value = probability_slack(stated, atol) if what == "probability" else rank_slack(stated)
    described = "; ".join(f"{r.observation.text}: p = {r.probability:.4g}, rank {r.rank}" for r in stated)
    plural = "probabilities" if what == "probability" else "ranks"
    verdict.value(f"smallest slack of the pinned {plural} inside their stated ranges (>= 0: all inside), each "
                  f"probability +- atol[{dtype}] = {atol:g} (one prompt: no bootstrap)",
                  value, Rule(">=", 0), shown=list(dict.fromkeys(r.observation.prompt for r in stated)),
                  figures=_table(readings, atol), detail=f"Readings: {described}.",
                  bound=f"one prompt per reading, so the interval is the computed value within the spec's numerical "
                        f"tolerance atol[{dtype}] = {atol:g} on every probability, not a bootstrap over prompts")


@pytest.mark.claim(id="pinned-prompt", statement=STATEMENT)
def test_pinned_probabilities_lie_in_their_stated_ranges(model, claim, verdict):
    _judge(model, claim, verdict, "probability")


@pytest.mark.claim(id="pinned-prompt", statement=STATEMENT)
def test_pinned_tokens_have_their_stated_ranks(model, claim, verdict):
    _judge(model, claim, verdict, "rank")


# --- discovery ----------------------------------------------------------------------------------------


@drafts("pinned-prompt")
def _draft(ctx: DraftContext) -> tuple[PinnedPrompt | None, str]:
    """Pin the first clean prompt of the first held-out set, as the source pinned one prompt: its first two answer
    tokens' probabilities within :data:`WIDTH` of what the model gives them (an end past 0 or 1 left open), and their
    ranks where every dtype's rounding (:data:`DRAFT_ATOL`) leaves the rank as it is. Nothing is chosen on the draft
    sets, and one prompt has no held-out half of its own: the draft states what was read, to the stated tolerance."""
    model = ctx.lab.model
    problem = ctx.held_out[0].clean[0]
    atol = max(DRAFT_ATOL.values())
    observations, read_out = [], []
    for index in range(2):
        r = read(model, Observation(problem.prompt, problem.answer, index, max_rank=1), atol)
        low, high = floor_to(r.probability - WIDTH, 0.01), ceil_to(r.probability + WIDTH, 0.01)
        ranks = (None, None) if r.best_rank != r.worst_rank else (None, 1) if r.rank == 1 else (r.rank, r.rank)
        observations.append(Observation(problem.prompt, problem.answer, index, None,
                                        low if low > 0 else None, high if high < 1 else None, *ranks))
        read_out.append(f"answer token {index} ({r.token!r}): p = {r.probability:.4g}, rank {r.rank} "
                        f"({r.best_rank}..{r.worst_rank} within atol {atol:g})")
    ctx.log.setdefault(ctx.claim_id, {})["readings"] = "; ".join(read_out)
    return PinnedPrompt(tolerance=WIDTH, observations=tuple(observations), atol=DRAFT_ATOL), ""
