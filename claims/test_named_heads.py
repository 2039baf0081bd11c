"""Claim: the heads the analysis names are among the most important ones, with the stated sign.

Two rankings of all heads: by |z patching effect| (``patched - corrupted`` when one head's output is
patched at every position, mean over prompts) and by |direct logit attribution| (the head's direct
contribution to the logit difference on clean prompts, mean over prompts). "In the top k" is tested against
the alternatives: the named head's magnitude minus that of the best head ranked beyond k, paired on the same
prompts (``circuit.measures.head_gap``), must have an interval above 0. A minor head in the named slot, or a
named head no better than the others, leaves the gap at or below 0: the claim is refuted or inconclusive, never
passed for lack of evidence. The sign is that of its direct logit attribution (the source: "L23H1 contributes
a lot positively, L22H7 a lot negatively"), and its interval must exclude 0 on the stated side.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from circuit import measures
from circuit.decision import Rule
from circuit.report import heatmap

STATEMENT = "Named heads matter: each head the spec names is in the top-k heads, with its stated sign."


def _heatmap(values, title, heads, label):
    return (lambda: heatmap(values, title=title, xlabel="head", ylabel="layer", colorbar_label=label,
                            xticklabels=[str(h) for h in range(values.shape[1])],
                            highlight=[(h.layer, h.index) for h in heads]),
            "If the claim holds, the boxed (named) heads are among the darkest cells, blue for a head named "
            "positive and red for one named negative.")


def _figures(lab, prompt_set, heads):
    z = lab.effects(lab.patch(prompt_set, "z")).mean(-1)
    dla = lab.head_attribution(prompt_set).mean
    return {"z patching effect per head (named heads boxed)":
                _heatmap(z, "z patching: patched - corrupted", heads, "logit difference"),
            "Direct logit attribution per head (named heads boxed)":
                _heatmap(dla, "Direct logit attribution", heads, "logit difference")}


def _in_top_k(claim, verdict, data, by, what):
    heads = [h for h in claim.heads if by in h.by]
    if not heads:
        pytest.skip(f"the spec names no head by {by}")
    verdict.judge(data, f"smallest gap |{what}| of {[h.head for h in heads]} minus that of the best head ranked "
                        f"beyond top_k (> 0: every named head is in the top {claim.top_k})",
                  lambda lab, ps: measures.head_gap(lab, ps, heads, by, claim.top_k), Rule(">", 0),
                  figures=lambda lab, ps: _figures(lab, ps, claim.heads))


@pytest.mark.claim(id="named-heads", statement=STATEMENT)
@given(data=st.data())
def test_named_heads_rank_in_top_k_by_z_patching(claim, verdict, data):
    _in_top_k(claim, verdict, data, "z_patching", "mean z patching effect")


@pytest.mark.claim(id="named-heads", statement=STATEMENT)
@given(data=st.data())
def test_named_heads_rank_in_top_k_by_attribution(claim, verdict, data):
    _in_top_k(claim, verdict, data, "attribution", "mean direct logit attribution")


@pytest.mark.claim(id="named-heads", statement=STATEMENT)
@given(data=st.data())
def test_named_heads_have_their_stated_sign(claim, verdict, data):
    signed = [(h, 1.0 if h.sign == "positive" else -1.0) for h in claim.heads if h.sign != "any"]
    if not signed:
        pytest.skip("the spec states no head's sign")
    verdict.judge(data, f"smallest sign-oriented mean direct logit attribution among "
                        f"{[f'{h.head} ({h.sign})' for h, _ in signed]}",
                  lambda lab, ps: measures.weakest_signed_attribution(lab, ps, signed), Rule(">", 0),
                  figures=lambda lab, ps: _figures(lab, ps, claim.heads))
