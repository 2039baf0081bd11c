"""Claim: direct logit attribution adds up.

With the final norm's scale frozen at its value in the run, the logit difference is linear in the final
residual stream, which is a sum of components. So the per-head attributions, the attention biases and the
rest (embeddings, MLPs, unembedding bias) must add up to the logit difference the model computes: an
identity, checked on the model under test. A gap means the attribution reads the model wrongly (hooks,
folded weights, the norm), and every attribution figure would be off by it. Where the model transforms its
logits after the unembedding in a way that is not linear (Gemma-2's soft-cap ``30 * tanh(logit / 30)``),
DLA splits the logits before the transform, and the sum is compared with the logit difference read there
(``circuit.attribution.attribution_target``); the statistic's name says so.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from circuit.decision import Rule
from circuit.report import line_figure

STATEMENT = ("Attribution adds up: the per-head direct logit attributions plus the remaining components "
             "equal the model's logit difference on every prompt.")


@pytest.mark.claim(id="attribution-completeness", statement=STATEMENT)
@given(data=st.data())
def test_head_attributions_sum_to_the_logit_difference(model, lab, claim, verdict, data):
    prompt_set = lab.draw(data)
    transform = lab.directions(prompt_set).logits_transform
    if transform is None:
        target, what = lab.logit_diffs(prompt_set)[0], "logit difference"
    else:  # not linear (a soft-cap): DLA splits the logits before it, and is compared with them
        target, what = lab.attribution_target(prompt_set), f"logit difference before the model's {transform}"
    error = (lab.head_attribution(prompt_set).total.detach().cpu().double() - target.double()).abs()
    lens = lab.logit_lens(prompt_set)
    dtype = str(model.dtype).removeprefix("torch.")
    # an identity on every prompt: the largest error itself is judged, no interval
    verdict.value(
        f"largest per-prompt |sum of attributions - {what}|", float(error.max()),
        Rule("<=", claim.atol.at(model.dtype), f"atol[{dtype}]", interval=False), shown=prompt_set,
        figures={"Logit lens (clean, final position): the last entry is the logit difference": (lambda: line_figure(
            lens.mean, title="Logit lens", xlabel="residual stream", ylabel="logit difference",
            xticklabels=list(lens.labels)),
            "The logit difference read off the residual stream after each block. Its last point is the model's "
            "logit difference: if the claim holds, the attributions of all components sum to it within atol.")})
