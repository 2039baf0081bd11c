"""Claim: the heads with the largest positive direct effect attend to themselves; the most negative, to BOS.

The source plots the attention patterns of its top 3 positive and top 3 negative heads by direct logit
attribution and reads: "The top positive logit attribution heads show strong diagonal attention patterns
... Meanwhile, the negative attribution heads appear to be attending to the first token". Made precise:

- the *positive heads* are the ``top_k`` heads with the largest mean direct logit attribution among the heads
  whose mean is above 0 (the source's ``topk(per_head_logit_diffs)``, without admitting a negative head when
  fewer than ``top_k`` are positive); the *negative heads* likewise with the most negative mean;
- "diagonal": a query's attention weight on its own position (``circuit.attention``, ``to_self``), "the
  first token": the weight on BOS; each averaged over the query positions after BOS (``query = "all"``, the
  whole pattern the source plotted) or read from the final position only (``query = "final"``);
- the statistic is the *weakest* such head's mean (over prompts) weight, with an interval over prompts;
  the heads are chosen on the prompts measured and held fixed within the interval's resamples.

A model with no head of a sign makes that half of the claim inconclusive, with the reason.
"""

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from circuit import measures
from circuit.attention import head_patterns
from circuit.decision import Inconclusive, Rule
from circuit.discover import DraftContext, drafts
from circuit.report import attention_figure
from circuit.spec import ClaimSpec, Fraction, Rank, register_claim

QUERIES = ("all", "final")


@register_claim("sign-head-attention")
@dataclass(frozen=True)
class SignHeadAttention(ClaimSpec):
    """The top positive direct-effect heads attend to themselves; the top negative ones attend to BOS."""

    TOP_K_OVER_HEADS = True

    top_k: Rank
    """How many heads of each sign, by mean direct logit attribution (the source: 3)."""
    min_self_attention: Fraction
    """Every positive head's mean attention to its own position must be at least this (CI low)."""
    min_bos_attention: Fraction
    """Every negative head's mean attention to BOS must be at least this (CI low)."""
    query: str = "all"
    """Which query positions: "all" (every position after BOS, averaged: the pattern's diagonal) or "final"."""

    def check(self) -> None:
        if self.query not in QUERIES:
            raise ValueError(f"query: is {self.query!r}, but must be one of {list(QUERIES)} (the query positions "
                             f"the attention is read from).")


# --- statistics ---------------------------------------------------------------------------------------


def signed_top_heads(lab, ps, top_k, sign):
    """The ``top_k`` heads ``(layer, head)`` whose mean direct logit attribution on ``ps`` has ``sign`` (+1 or -1),
    largest ``sign * mean`` first; fewer when fewer heads have that sign."""
    mean = measures.head_values(lab, ps, "attribution").mean(-1) * sign
    n_heads = mean.shape[1]
    order = mean.flatten().argsort(descending=True, stable=True).tolist()
    return [divmod(i, n_heads) for i in order if float(mean.flatten()[i]) > 0][:top_k]


def weakest_attention(lab, ps, heads, field, query):
    """Interval of the smallest mean (over prompts) attention summary ``field`` among ``heads``."""
    values = getattr(lab.attention(ps, query), field).double().cpu()
    return lab.ci(torch.stack([values[l, h] for l, h in heads]), lambda x: x.mean(-1).amin(-1))


WHAT = {1: ("positive", "to_self", "its own position"), -1: ("negative", "to_bos", "BOS")}


def signed_heads_attention(lab, ps, top_k, sign, query):
    """Interval of the weakest attention of the top ``sign`` heads: to themselves (+1) or to BOS (-1)."""
    name, field, target = WHAT[sign]
    heads = signed_top_heads(lab, ps, top_k, sign)
    if not heads:
        raise Inconclusive(f"no head has a {name} mean direct logit attribution on these prompts, so the claim "
                           f"about the {name} heads' attention to {target} is about no head here")
    return weakest_attention(lab, ps, heads, field, query)


# --- the claim tests ----------------------------------------------------------------------------------

STATEMENT = ("Attention by sign of direct effect: the heads with the largest positive direct logit attribution "
             "attend to their own position (diagonal patterns); those with the most negative attend to BOS.")


def _figures(claim, sign):
    def figures(lab, ps):
        heads = signed_top_heads(lab, ps, claim.top_k, sign)
        if not heads:
            return {}
        patterns = head_patterns(lab.model, lab.inputs(ps)[0], heads, cache=lab.run(ps)[1])
        name, _, target = WHAT[sign]
        return {f"Attention patterns of the top {name} heads (first prompt)": (lambda: attention_figure(
            patterns.patterns[:, 0], head_labels=list(patterns.labels), tokens=list(patterns.str_tokens[0]),
            title=f"Top {name} heads by direct logit attribution: attention, first prompt"),
            f"Rows are query tokens, columns key tokens. If the claim holds, these heads put most attention on "
            f"{'the diagonal' if sign > 0 else 'the first (BOS) column'}.")}
    return figures


def _query_text(query):
    return "averaged over query positions after BOS" if query == "all" else "from the final position"


@pytest.mark.claim(id="sign-head-attention", statement=STATEMENT)
@given(data=st.data())
def test_top_positive_heads_attend_to_themselves(claim, verdict, data):
    verdict.judge(data, f"smallest mean attention to its own position ({_query_text(claim.query)}) among the top-"
                        f"{claim.top_k} positive heads by direct logit attribution",
                  lambda lab, ps: signed_heads_attention(lab, ps, claim.top_k, 1, claim.query),
                  Rule(">=", claim.min_self_attention, "min_self_attention"), figures=_figures(claim, 1))


@pytest.mark.claim(id="sign-head-attention", statement=STATEMENT)
@given(data=st.data())
def test_top_negative_heads_attend_to_bos(claim, verdict, data):
    verdict.judge(data, f"smallest mean attention to BOS ({_query_text(claim.query)}) among the top-{claim.top_k} "
                        f"negative heads by direct logit attribution",
                  lambda lab, ps: signed_heads_attention(lab, ps, claim.top_k, -1, claim.query),
                  Rule(">=", claim.min_bos_attention, "min_bos_attention"), figures=_figures(claim, -1))


# --- drafter (discovery) ------------------------------------------------------------------------------

MOSTLY = 0.5
"""A head "attends to" a position when the stated threshold gives it at least half of its attention."""


@drafts("sign-head-attention")
def _draft_sign_head_attention(ctx: DraftContext):
    k = ctx.options.n_heads_named  # the source's top 3 of each sign
    for sign in (1, -1):
        if any(not signed_top_heads(ctx.lab, ps, k, sign) for ps in ctx.sets + ctx.held_out):
            return None, f"not stated: a prompt set has no head with a {WHAT[sign][0]} mean direct logit attribution"
    thresholds = {}
    for sign, name in ((1, "min_self_attention"), (-1, "min_bos_attention")):
        thresholds[name] = ctx.rule(">=", lambda lab, ps, s=sign: signed_heads_attention(lab, ps, k, s, "all"),
                                    name).threshold
    if min(thresholds.values()) < MOSTLY:
        log = ctx.log[ctx.claim_id]
        return None, (f"not stated: the top {k} heads of each sign by direct logit attribution, attention over query "
                      f"positions after BOS: to themselves (positive heads) {log['min_self_attention']}; to BOS "
                      f"(negative heads) {log['min_bos_attention']}: no threshold of at least {MOSTLY} for both")
    return SignHeadAttention(
        tolerance=ctx.tolerance(lambda lab, ps: signed_heads_attention(lab, ps, k, 1, "all")), top_k=k,
        query="all", **thresholds), ""
