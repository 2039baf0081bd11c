"""Claim: only a few heads really matter.

The source: "We see that only a few heads really matter - head L23H1 contributes a lot positively, while head L22H7
contributes a lot negatively" and "our model has 24 layers * 14 heads/layer = 336 heads, yet we could localise
this behaviour to a handful of specific heads". A statement about sparsity: the ``top_k`` heads, by |mean effect|
over prompts, carry at least ``min_share`` of the summed |mean effect| of all heads,

    share_k = sum of the k largest |mean effect_h| / sum over all heads of |mean effect_h|,

each head's effect being its direct logit attribution (``attribution``) or its z patching effect (``z_patching``:
``patched - corrupted`` with its output patched at every position; ``circuit.measures.head_values``). The share
is bounded (between ``k / n_heads`` and 1), so its bootstrap behaves where a ratio "top k over the rest" would
have a long tail when the rest is small, as ``mlp-over-attention`` judges a share rather than a ratio. The claim
is that *some* k heads carry the effect, not which (the named heads are ``named-heads'``), so the k heads are
chosen on the data; they are chosen on the set's first prompts and their share measured on the others, held fixed
in every resample (``circuit.measures.chosen_top_share``): chosen and measured on the same prompts, their share
would be biased upward where the k-th and the (k+1)-th heads tie, and a false claim supported too often. Equal
heads give ``k / n_heads``: a ``min_share`` at or below that says nothing, and the test refuses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from circuit import measures
from circuit.decision import Rule
from circuit.drafts import DraftContext, drafts
from circuit.spec import ClaimSpec, Fraction, Rank, register_claim

STATEMENT = ("Only a few heads matter: the top-k heads by |mean effect| carry at least a stated share of the summed "
             "|mean effect| of all heads (direct logit attribution and/or z patching).")

BY = ("attribution", "z_patching")

MOST = 0.5
"""Discovery chooses k as the fewest heads that carry at least this share (most of the effect) on every draft set."""
CONCENTRATION = 2.0
"""Discovery states the claim only with a threshold at least this many times the equal share ``k / n_heads``: the
few heads carry at least twice what equal heads would (a threshold of 0.5 or more is not required: the design
margin over the held-out sets can put a share that is most of the effect below it on a small model)."""


@register_claim("head-sparsity")
@dataclass(frozen=True)
class HeadSparsity(ClaimSpec):
    """Parameters of the head-sparsity claim."""

    TOP_K_OVER_HEADS = True

    top_k: Rank
    """How many heads ("a few"): the k heads with the largest |mean effect| (below the model's head count)."""
    min_share: Fraction
    """Their share of the summed |mean effect| of all heads must be above this (CI low); above top_k / heads."""
    by: tuple[str, ...] = ("attribution",)
    """The effects it is judged by, each its own test: 'attribution' (direct logit attribution) and/or
    'z_patching'."""

    def check(self) -> None:
        if not self.by or set(self.by) - set(BY):
            raise ValueError(f"by: is {list(self.by)}; use a non-empty subset of {list(BY)}.")


def says_nothing(min_share: float, top_k: int, n_heads: int) -> str | None:
    """Why a claim with these numbers would hold on any model (equal heads reach ``min_share``), or None."""
    uniform = top_k / n_heads
    if min_share > uniform:
        return None
    return (f"[claims.head-sparsity] min_share = {min_share:g}: with top_k = {top_k} of this model's {n_heads} heads, "
            f"equal heads already give a share of {uniform:.3g}, so the claim says nothing; state a min_share above "
            f"{uniform:.3g}.")


def top_k_share(lab, ps, by: str, top_k: int):
    """Interval over prompts of the share of the summed |mean effect| of all heads that the ``top_k`` largest carry,
    chosen on the set's first prompts and measured on the rest (``circuit.measures.chosen_top_share``)."""
    values = measures.head_values(lab, ps, by).double().flatten(0, 1)  # [layer * head, batch]
    if not 0 < top_k < values.shape[0]:
        raise ValueError(f"top_k={top_k} with {values.shape[0]} heads: use 1 <= top_k < {values.shape[0]}.")
    return measures.chosen_top_share(lab, values, top_k)


def _figures(lab, ps, by, top_k):
    from circuit.report import line_figure

    sizes = measures.head_values(lab, ps, by).double().mean(-1).abs().flatten().sort(descending=True).values
    return {f"Cumulative share of the summed |mean {by}| by the k largest heads": (
        lambda: line_figure(sizes.cumsum(0) / sizes.sum(), title=f"Share carried by the top k heads ({by})",
                            xlabel="k (heads, largest |mean effect| first)", ylabel="share of all heads' |effect|",
                            xticklabels=[str(k) for k in range(1, len(sizes) + 1)]),
        f"If the claim holds, the curve reaches the stated share by k = {top_k} (a steep start, then flat).")}


def _judge(model, claim, verdict, data, by):
    if by not in claim.by:
        pytest.skip(f"the spec does not judge head-sparsity by {by} (by = {list(claim.by)})")
    cfg = model.bridge.cfg
    n = cfg.n_layers * cfg.n_heads
    problem = says_nothing(claim.min_share, claim.top_k, n)
    if problem:
        pytest.fail(problem, pytrace=False)
    verdict.judge(data, f"share of the summed |mean {by}| of all {n} heads carried by the top {claim.top_k} "
                        f"(equal heads: {claim.top_k / n:.3g})",
                  lambda lab, ps: top_k_share(lab, ps, by, claim.top_k), Rule(">", claim.min_share, "min_share"),
                  figures=lambda lab, ps: _figures(lab, ps, by, claim.top_k))


@pytest.mark.claim(id="head-sparsity", statement=STATEMENT)
@given(data=st.data())
def test_few_heads_carry_most_of_the_direct_logit_attribution(model, claim, verdict, data):
    _judge(model, claim, verdict, data, "attribution")


@pytest.mark.claim(id="head-sparsity", statement=STATEMENT)
@given(data=st.data())
def test_few_heads_carry_most_of_the_z_patching_effect(model, claim, verdict, data):
    _judge(model, claim, verdict, data, "z_patching")


@drafts("head-sparsity")
def _draft(ctx: DraftContext) -> tuple[HeadSparsity | None, str]:
    """The smallest k (up to ``max_rank_fraction`` of the heads) whose share is at least :data:`MOST` on every draft
    set, by z patching and by attribution alike where both reach it; the share from the held-out sets, stated when
    at least :data:`CONCENTRATION` times the equal share ``k / n``."""
    n = ctx.n_layers * ctx.n_heads
    bound = max(1, int(ctx.options.max_rank_fraction * n))
    notes = []
    for k in range(1, min(bound, n - 1) + 1):
        by = tuple(b for b in BY if all(float(top_k_share(ctx.lab, ps, b, k).estimate) >= MOST for ps in ctx.sets))
        if by:
            break
    else:
        return None, (f"not stated: no k <= {bound} of {n} heads carries {MOST:g} of the summed |mean effect| on "
                      f"every draft set (by {' or '.join(BY)})")
    kept, low = [], 1.0
    for b in by:
        rule = ctx.rule(">", lambda lab, ps, b=b: top_k_share(lab, ps, b, k), f"min_share ({b}, top {k})")
        if rule.threshold >= CONCENTRATION * k / n:
            kept.append(b)
            low = min(low, rule.threshold)
        else:
            notes.append(f"by {b}: {ctx.log[ctx.claim_id][f'min_share ({b}, top {k})']} (below {CONCENTRATION:g} x the "
                         f"equal share {k / n:.3g})")
    if not kept:
        return None, "not stated: " + "; ".join(notes)
    tolerance = ctx.tolerance(lambda lab, ps: top_k_share(lab, ps, kept[0], k))
    return HeadSparsity(tolerance=tolerance, top_k=k, min_share=low, by=tuple(kept)), "; ".join(notes)
