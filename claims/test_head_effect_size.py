"""Claim: a named head's effect on the logit difference has a stated size.

The source: "there are *negative* heads - eg L22H7 makes the incorrect logit e^-0.137 = 0.872x *more* likely".
That is a magnitude, not a rank: the head's direct logit attribution (its direct contribution to the logit
difference on clean prompts, ``circuit.attribution.head_attribution``) is about -0.137, so it multiplies the odds
of the correct answer against the incorrect one by about ``e^-0.137``. ``named-heads`` tests that such a head
ranks in the top k with its sign; this claim tests the size, as a range ``[min_effect, max_effect]`` (either
end may be left open) in the units of the spec's metric (the factor is ``e^effect``).

Each head is measured by ``attribution`` (direct logit attribution) or ``z_patching`` (``patched - corrupted``
when its output is patched at every position), as ``circuit.measures.head_values`` ranks heads for
``named-heads``. Two statistics, each over all the heads the spec names, with a bootstrap interval over prompts
(the heads' means are taken inside each resample):

- *lower bounds*: the smallest ``mean effect - min_effect`` over the heads with a ``min_effect``: above 0 means
  every such head's effect is at least its lower bound;
- *upper bounds*: the smallest ``max_effect - mean effect`` over the heads with a ``max_effect``.

A head whose effect is smaller (or larger) than stated leaves a bound's slack at or below 0: refuted, or
inconclusive where the prompts cannot tell.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from circuit import measures
from circuit.decision import Rule
from circuit.drafts import DraftContext, drafts
from circuit.spec import ClaimSpec, Head, parse_head, register_claim

STATEMENT = ("Head effect size: each named head's mean effect on the logit difference (direct logit attribution "
             "or z patching) lies in the spec's range (the head multiplies the correct answer's odds by e^effect).")

BY = ("attribution", "z_patching")


@dataclass(frozen=True)
class HeadEffect:
    """One head and the range its mean effect must lie in."""

    head: Head
    """The head, as 'L<layer>H<head>'."""
    by: str = "attribution"
    """Its effect: 'attribution' (direct logit attribution on clean prompts) or 'z_patching' (patched - corrupted
    logit difference with its output patched at every position)."""
    min_effect: float | None = None
    """Its mean effect must be at least this (CI low of mean - min_effect > 0); omit to leave the range open below."""
    max_effect: float | None = None
    """Its mean effect must be at most this (CI low of max_effect - mean > 0); omit to leave it open above."""

    @property
    def layer(self) -> int:
        return parse_head(self.head)[0]

    @property
    def index(self) -> int:
        return parse_head(self.head)[1]

    @property
    def text(self) -> str:
        low = "-inf" if self.min_effect is None else f"{self.min_effect:g}"
        high = "inf" if self.max_effect is None else f"{self.max_effect:g}"
        return f"{self.head} ({self.by}) in [{low}, {high}]"


@register_claim("head-effect-size")
@dataclass(frozen=True)
class HeadEffectSize(ClaimSpec):
    """Parameters of the head-effect-size claim."""

    heads: tuple[HeadEffect, ...]
    """The heads and the range of each one's mean effect (in the spec metric's units)."""

    def check(self) -> None:
        if not self.heads:
            raise ValueError("heads: name at least one head with its range.")
        for i, h in enumerate(self.heads):
            if h.by not in BY:
                raise ValueError(f"heads[{i}].by: is {h.by!r}; use one of {list(BY)}.")
            if h.min_effect is None and h.max_effect is None:
                raise ValueError(f"heads[{i}] ({h.head}): states neither min_effect nor max_effect; state at least "
                                 f"one.")
            if h.min_effect is not None and h.max_effect is not None and h.min_effect >= h.max_effect:
                raise ValueError(f"heads[{i}] ({h.head}): min_effect = {h.min_effect:g} is not below max_effect = "
                                 f"{h.max_effect:g}: no effect lies between them.")


# --- statistics ---------------------------------------------------------------------------------------


def head_effect(lab, ps, head) -> torch.Tensor:
    """``[batch]``: the per-prompt effect of ``head`` (an object with layer, index and by), float64."""
    return measures.head_values(lab, ps, head.by)[head.layer, head.index].double()


def mean_effect(lab, ps, head):
    """Interval over prompts of ``head``'s mean effect (its ``by``)."""
    return lab.ci(head_effect(lab, ps, head))


def smallest_slack(lab, ps, heads, end: str):
    """Interval of the smallest slack of the heads' mean effects inside their bounds at ``end``: ``mean - min_effect``
    (``end = "min"``) or ``max_effect - mean`` (``"max"``), over the heads that state that bound."""
    rows = []
    for h in heads:
        bound = getattr(h, f"{end}_effect")
        if bound is not None:
            values = head_effect(lab, ps, h)
            rows.append(values - bound if end == "min" else bound - values)
    return lab.ci(torch.stack(rows), lambda x: x.mean(-1).amin(-1))


# --- the claim tests ----------------------------------------------------------------------------------


def _figures(lab, ps, heads):
    from circuit.report import heatmap

    figures = {}
    for by in sorted({h.by for h in heads}):
        values = measures.head_values(lab, ps, by).mean(-1)
        boxed = [(h.layer, h.index) for h in heads if h.by == by]
        figures[f"Mean {by} per head (the named heads boxed)"] = (
            lambda values=values, boxed=boxed, by=by: heatmap(
                values, title=f"{by}: mean effect on the logit difference", xlabel="head", ylabel="layer",
                colorbar_label="logit difference", xticklabels=[str(i) for i in range(values.shape[1])],
                highlight=boxed),
            "If the claim holds, each boxed head's value lies in its stated range.")
    return figures


def _judge(claim, verdict, data, end: str):
    heads = [h for h in claim.heads if getattr(h, f"{end}_effect") is not None]
    if not heads:
        pytest.skip(f"the spec states no {end}_effect for head-effect-size")
    what = "mean effect - min_effect" if end == "min" else "max_effect - mean effect"
    verdict.judge(data, f"smallest {what} among {[h.text for h in heads]} (> 0: every head's effect is within its "
                        f"{'lower' if end == 'min' else 'upper'} bound; the factor on the odds is e^effect)",
                  lambda lab, ps: smallest_slack(lab, ps, heads, end), Rule(">", 0),
                  figures=lambda lab, ps: _figures(lab, ps, claim.heads))


@pytest.mark.claim(id="head-effect-size", statement=STATEMENT)
@given(data=st.data())
def test_head_effects_reach_their_lower_bounds(claim, verdict, data):
    _judge(claim, verdict, data, "min")


@pytest.mark.claim(id="head-effect-size", statement=STATEMENT)
@given(data=st.data())
def test_head_effects_stay_below_their_upper_bounds(claim, verdict, data):
    _judge(claim, verdict, data, "max")


# --- discovery ----------------------------------------------------------------------------------------


@drafts("head-effect-size")
def _draft(ctx: DraftContext) -> tuple[HeadEffectSize | None, str]:
    """Per ranking (attribution, z patching): the head with the largest |mean effect| on the draft sets, with the
    range the held-out sets support; stated only where that range excludes 0 (a size with a sign)."""
    stated, not_stated = [], []
    for by in BY:
        means = torch.stack([measures.head_values(ctx.lab, ps, by).mean(-1) for ps in ctx.sets]).mean(0)
        layer, index = divmod(int(means.abs().flatten().argmax()), means.shape[1])
        head = HeadEffect(f"L{layer}H{index}", by)

        def measure(lab, ps, head=head):
            return mean_effect(lab, ps, head)

        low = ctx.rule(">=", measure, f"{head.head} min_effect ({by})")
        high = ctx.rule("<=", measure, f"{head.head} max_effect ({by})")
        if low.threshold > 0 or high.threshold < 0:
            stated.append(HeadEffect(head.head, by, low.threshold, high.threshold))
        else:
            not_stated.append(f"{head.head} by {by}: range [{low.threshold:g}, {high.threshold:g}] includes 0")
    if not stated:
        return None, f"not stated: {'; '.join(not_stated)}"
    note = f"heads not stated: {'; '.join(not_stated)}" if not_stated else ""
    first = stated[0]
    return HeadEffectSize(tolerance=ctx.tolerance(lambda lab, ps: mean_effect(lab, ps, first)),
                          heads=tuple(stated)), note

