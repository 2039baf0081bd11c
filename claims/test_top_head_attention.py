"""Claim: the most important heads attend as the source describes.

Top heads are the ``top_k`` heads by |z patching effect| (mean over prompts). The source: "early heads
attend to every token equally, while later heads attend to just the bos token". Measured over all query
positions after BOS: a late top head's attention weight on BOS, and an early top head's attention
entropy divided by log(number of visible keys) (1 = uniform).
"""

import pytest
import torch
from hypothesis import given, settings
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


@pytest.mark.claim(id="top-head-attention", statement=STATEMENT)
@given(data=st.data())
def test_late_top_heads_attend_to_bos(model, lab, claim, evidence, data):
    prompt_set = lab.draw(data)
    late = [h for h in _top_heads(lab, prompt_set, claim.top_k) if h[0] >= claim.late_from_layer]
    if not late:
        some = Rule(">=", 1, interval=False)  # the claim is about them
        record = evidence.record(f"number of top-{claim.top_k} heads in layers {claim.late_from_layer}+", 0,
                                 threshold=some.text, holds=some.holds(0), prompt_set=prompt_set)
        pytest.fail(record.describe())

    def weakest(lab, ps):  # on fresh prompts, the top heads of those prompts
        heads = [h for h in _top_heads(lab, ps, claim.top_k) if h[0] >= claim.late_from_layer] or late
        to_bos = lab.attention(ps).to_bos.double().cpu()
        return lab.ci(torch.stack([to_bos[l, h] for l, h in heads]), lambda x: x.mean(-1).amin(-1))

    judged = lab.judge(Rule(">=", claim.min_bos_attention), prompt_set, weakest, n_sets=settings().max_examples)
    record = evidence.record(
        f"smallest mean attention to BOS among late top heads {[f'L{l}H{h}' for l, h in late]}", judged.interval,
        judgement=judged, prompt_set=prompt_set, figures=_figures(lab, prompt_set, late),
    )
    assert record.holds, judged.explain(record.describe())


@pytest.mark.claim(id="top-head-attention", statement=STATEMENT)
@given(data=st.data())
def test_early_top_heads_attend_uniformly(model, lab, claim, evidence, data):
    prompt_set = lab.draw(data)
    early = [h for h in _top_heads(lab, prompt_set, claim.top_k) if h[0] < claim.early_until_layer]
    if not early:
        some = Rule(">=", 1, interval=False)  # the claim is about them
        record = evidence.record(f"number of top-{claim.top_k} heads before layer {claim.early_until_layer}", 0,
                                 threshold=some.text, holds=some.holds(0), prompt_set=prompt_set)
        pytest.fail(record.describe())

    def weakest(lab, ps):  # on fresh prompts, the top heads of those prompts
        heads = [h for h in _top_heads(lab, ps, claim.top_k) if h[0] < claim.early_until_layer] or early
        entropy = lab.attention(ps).normalized_entropy.double().cpu()
        return lab.ci(torch.stack([entropy[l, h] for l, h in heads]), lambda x: x.mean(-1).amin(-1))

    judged = lab.judge(Rule(">=", claim.min_normalized_entropy), prompt_set, weakest,
                       n_sets=settings().max_examples)
    record = evidence.record(
        f"smallest mean normalized attention entropy among early top heads {[f'L{l}H{h}' for l, h in early]}",
        judged.interval, judgement=judged, prompt_set=prompt_set, figures=_figures(lab, prompt_set, early),
    )
    assert record.holds, judged.explain(record.describe())
