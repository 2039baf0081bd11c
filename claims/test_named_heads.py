"""Claim: the heads the analysis names are among the most important ones, with the stated sign.

Two rankings of all heads: by |z patching effect| (``patched - corrupted`` when one head's output is
patched at every position, mean over prompts) and by |direct logit attribution| (the head's direct
contribution to the logit difference on clean prompts, mean over prompts). A head's rank is the number
of heads whose magnitude is at least its own, itself included: ties count against it, so heads whose
effects are all 0 rank last, not first. Its interval comes from resampling the prompts. The sign is
that of its direct logit attribution (the source: "L23H1 contributes a lot positively, L22H7 a lot
negatively").
"""

import pytest
from hypothesis import given, settings
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


@pytest.mark.claim(id="named-heads", statement=STATEMENT)
@given(data=st.data())
def test_named_heads_rank_in_top_k_by_z_patching(model, lab, claim, evidence, data):
    heads = [h for h in claim.heads if "z_patching" in h.by]
    if not heads:
        pytest.skip("the spec names no head by z_patching")
    prompt_set = lab.draw(data)
    judged = lab.judge(Rule("<=", claim.top_k, "top_k"), prompt_set,
                       lambda lab, ps: measures.worst_head_rank(lab, ps, heads, "z_patching"), n_sets=settings().max_examples)
    record = evidence.record(
        f"worst rank by |z patching effect| among {[h.head for h in heads]}", judged.interval, judgement=judged,
        prompt_set=prompt_set, figures=_figures(lab, prompt_set, claim.heads),
    )
    assert record.holds, judged.explain(record.describe())


@pytest.mark.claim(id="named-heads", statement=STATEMENT)
@given(data=st.data())
def test_named_heads_rank_in_top_k_by_attribution(model, lab, claim, evidence, data):
    heads = [h for h in claim.heads if "attribution" in h.by]
    if not heads:
        pytest.skip("the spec names no head by attribution")
    prompt_set = lab.draw(data)
    judged = lab.judge(Rule("<=", claim.top_k, "top_k"), prompt_set,
                       lambda lab, ps: measures.worst_head_rank(lab, ps, heads, "attribution"), n_sets=settings().max_examples)
    record = evidence.record(
        f"worst rank by |direct logit attribution| among {[h.head for h in heads]}", judged.interval, judgement=judged,
        prompt_set=prompt_set, figures=_figures(lab, prompt_set, claim.heads),
    )
    assert record.holds, judged.explain(record.describe())


@pytest.mark.claim(id="named-heads", statement=STATEMENT)
@given(data=st.data())
def test_named_heads_have_their_stated_sign(model, lab, claim, evidence, data):
    signed = [(h, 1.0 if h.sign == "positive" else -1.0) for h in claim.heads if h.sign != "any"]
    if not signed:
        pytest.skip("the spec states no head's sign")
    prompt_set = lab.draw(data)
    judged = lab.judge(Rule(">", 0), prompt_set, lambda lab, ps: measures.weakest_signed_attribution(lab, ps, signed),
                       n_sets=settings().max_examples)
    record = evidence.record(
        f"smallest sign-oriented mean direct logit attribution among "
        f"{[f'{h.head} ({h.sign})' for h, _ in signed]}", judged.interval, judgement=judged,
        prompt_set=prompt_set, figures=_figures(lab, prompt_set, claim.heads),
    )
    assert record.holds, judged.explain(record.describe())
