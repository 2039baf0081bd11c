"""Claim: the most important heads attend as the source describes.

Top heads are the ``top_k`` heads by |z patching effect| (mean over prompts). The source: "early heads
attend to every token equally, while later heads attend to just the bos token". Measured over all query
positions after BOS: a late top head's attention weight on BOS, and an early top head's attention
entropy divided by log(number of visible keys) (1 = uniform).
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from circuit.attention import head_patterns
from circuit.decision import Rule
from circuit.report import attention_figure, heads_of

STATEMENT = ("Attention of the top heads: late top heads attend mostly to BOS; early top heads attend "
             "near-uniformly.")


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
