"""Claim: the most important heads attend as the source describes.

Top heads are the ``top_k`` heads by |z patching effect| (mean over prompts). The source: "early heads
attend to every token equally, while later heads attend to just the bos token". Measured over all query
positions after BOS: a late top head's attention weight on BOS, and an early top head's attention
entropy divided by log(number of visible keys) (1 = uniform).

Discovery drafts it (:func:`_draft_top_head_attention`): the number of top heads and the two bands are chosen
on the draft sets, the two thresholds stated from the held-out sets, and the claim only where they say what
the source says (``MIN_STATED_BOS``, ``MIN_STATED_ENTROPY``).
"""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from circuit.attention import head_patterns
from circuit.decision import Inconclusive, Rule
from circuit.discover import DraftContext, drafts
from circuit.drafts import clearance
from circuit.report import attention_figure, heads_of
from circuit.spec import TopHeadAttentionClaim

STATEMENT = ("Attention of the top heads: late top heads attend mostly to BOS; early top heads attend "
             "near-uniformly.")


MIN_STATED_BOS = 0.5
"""Discovery states the claim only with a threshold on the late top heads' attention to BOS of at least this
("mostly": more than half of a head's attention)."""
MIN_STATED_ENTROPY = 0.75
"""...and on the early top heads' normalized entropy of at least this ("near-uniformly": e.g. attention spread
evenly over 4 of 8 keys has 2/3, over 6 of 8 keys 0.86)."""
MAX_STATED_ENTROPY = 0.99
"""...and at most this: heads that attend exactly uniformly in float32 read 0.9999 in float16, where 1/n rounds
(measured on qwen2-planted-mult-2d, whose layer 0 is uniform), so a threshold of 1 drafted in float32 would be
refuted in a dtype the suite runs."""


def _top_heads(lab, prompt_set, k):
    return heads_of(lab.effects(lab.patch(prompt_set, "z")).mean(-1), k)


def _figures(lab, prompt_set, heads):
    if not heads:
        return {}
    batch = lab.inputs(prompt_set)[0]
    patterns = head_patterns(lab.model, batch, heads, cache=lab.run(prompt_set)[1])
    return {"Attention patterns of the top heads (first prompt)": (lambda: attention_figure(
        patterns.patterns[:, 0], head_labels=list(patterns.labels), tokens=list(patterns.str_tokens[0]),
        title="Top heads by |z patching|: attention patterns, first prompt"),
        "Rows are query tokens, columns key tokens. If the claim holds, late top heads put most attention on "
        "the first (BOS) column, and early top heads spread theirs over the prompt's tokens.")}


def _weakest(claim, band, summary, where):
    """A measure: the smallest mean ``summary`` (an attention summary ``[layer, head, batch]``) among the top heads
    (by |z patching| on the prompts measured) whose layer is in ``band``; inconclusive when none is."""
    from circuit.decision import Inconclusive

    def measure(lab, ps):
        heads = [h for h in _top_heads(lab, ps, claim.top_k) if band(h[0])]
        if not heads:
            raise Inconclusive(f"none of the top-{claim.top_k} heads by |z patching| lies in {where}, so the claim "
                               f"is about no head here")
        values = getattr(lab.attention(ps), summary).double().cpu()
        return lab.ci(torch.stack([values[l, h] for l, h in heads]), lambda x: x.mean(-1).amin(-1))

    return measure


def _band_figures(claim, band):
    return lambda lab, ps: _figures(lab, ps, [h for h in _top_heads(lab, ps, claim.top_k) if band(h[0])])


@pytest.mark.claim(id="top-head-attention", statement=STATEMENT)
@given(data=st.data())
def test_late_top_heads_attend_to_bos(claim, verdict, data):
    late = lambda layer: layer >= claim.late_from_layer  # noqa: E731
    verdict.judge(data, f"smallest mean attention to BOS among the top-{claim.top_k} heads in layers "
                        f"{claim.late_from_layer}+",
                  _weakest(claim, late, "to_bos", f"layers {claim.late_from_layer}+"),
                  Rule(">=", claim.min_bos_attention, "min_bos_attention"), figures=_band_figures(claim, late))


@pytest.mark.claim(id="top-head-attention", statement=STATEMENT)
@given(data=st.data())
def test_early_top_heads_attend_uniformly(claim, verdict, data):
    early = lambda layer: layer < claim.early_until_layer  # noqa: E731
    verdict.judge(data, f"smallest mean normalized attention entropy among the top-{claim.top_k} heads before layer "
                        f"{claim.early_until_layer}",
                  _weakest(claim, early, "normalized_entropy", f"layers before {claim.early_until_layer}"),
                  Rule(">=", claim.min_normalized_entropy, "min_normalized_entropy"),
                  figures=_band_figures(claim, early))


# --- discovery ----------------------------------------------------------------------------------------


def _late_bos(claim):
    return _weakest(claim, lambda layer: layer >= claim.late_from_layer, "to_bos", f"layers {claim.late_from_layer}+")


def _early_entropy(claim):
    return _weakest(claim, lambda layer: layer < claim.early_until_layer, "normalized_entropy",
                    f"layers before {claim.early_until_layer}")


def _both_above_the_stated_minimums(claim):
    """A score for choosing on the draft sets: how far the weaker of the two statistics lies above its stated
    minimum, in half-widths of its interval (``circuit.drafts.clearance``)."""
    def score(lab, ps):
        return min(clearance(_late_bos(claim)(lab, ps), MIN_STATED_BOS),
                   clearance(_early_entropy(claim)(lab, ps), MIN_STATED_ENTROPY))

    return score


@drafts("top-head-attention")
def _draft_top_head_attention(ctx: DraftContext):
    """Chosen on the draft sets: how many top heads (2 up to the options' share of all heads) and where the late
    and early bands lie (``DraftContext.late_layers``, ``early_bounds``), the candidate whose weaker statistic
    lies furthest above its stated minimum; the thresholds come from the held-out sets."""
    most = max(2, math.floor(ctx.options.max_rank_fraction * ctx.n_layers * ctx.n_heads))
    candidates = [TopHeadAttentionClaim(tolerance=0.0, top_k=k, late_from_layer=late, early_until_layer=early,
                                        min_bos_attention=0.0, min_normalized_entropy=0.0)
                  for late in ctx.late_layers() for early in ctx.early_bounds(late) for k in range(2, most + 1)]
    if not candidates:
        return None, (f"not stated: {ctx.n_layers} layers leave no room for an early and a late band with layers "
                      f"between them")
    found = ctx.best(candidates, _both_above_the_stated_minimums)
    if found is None:
        tops = [[f"L{layer}H{head}" for layer, head in _top_heads(ctx.lab, ps, most)] for ps in ctx.sets]
        return None, (f"not stated: on some draft set, for every choice of top_k <= {most} and bands (late layers "
                      f"from {ctx.late_layers()}), the early or the late band holds none of the top heads by "
                      f"|z patching| (top {most} per draft set: {tops})")
    chosen, _ = found
    where = (f"top_k {chosen.top_k}, late layers {chosen.late_from_layer}+, early layers before "
             f"{chosen.early_until_layer}, chosen on the draft sets")
    try:
        bos = ctx.rule(">=", _late_bos(chosen), "min_bos_attention")
        entropy = ctx.rule(">=", _early_entropy(chosen), "min_normalized_entropy")
    except Inconclusive as error:
        return None, f"not stated: {where}, but on a held-out set {error}"
    log = ctx.log[ctx.claim_id]
    if bos.threshold < MIN_STATED_BOS or entropy.threshold < MIN_STATED_ENTROPY:
        return None, (f"not stated ({where}): attention to BOS of the late top heads: {log['min_bos_attention']} "
                      f"(needs >= {MIN_STATED_BOS}); normalized entropy of the early top heads: "
                      f"{log['min_normalized_entropy']} (needs >= {MIN_STATED_ENTROPY})")
    if entropy.threshold > MAX_STATED_ENTROPY:
        log["min_normalized_entropy"] += f", stated at {MAX_STATED_ENTROPY} (the rounding of half precision)"
    tolerance = max(ctx.tolerance(_late_bos(chosen)), ctx.tolerance(_early_entropy(chosen)))
    return TopHeadAttentionClaim(tolerance=tolerance, top_k=chosen.top_k, late_from_layer=chosen.late_from_layer,
                                 early_until_layer=chosen.early_until_layer, min_bos_attention=bos.threshold,
                                 min_normalized_entropy=min(entropy.threshold, MAX_STATED_ENTROPY)), where
