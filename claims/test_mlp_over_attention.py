"""Claim: at the final position, MLP layers matter more than attention layers.

The source: "mostly it's the later MLP layers that matter" and "attention layers matter much less than
MLP layers". Measured as the summed |patching effect| (``patched - corrupted``, mean over prompts) of the
MLP outputs at the final position over the layers the spec names, divided by the same sum for the
attention outputs; by exact activation patching, and by attribution patching (its gradient
approximation), which must agree.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from circuit import measures
from circuit.decision import Rule
from circuit.report import heatmap, line_figure

STATEMENT = ("MLP over attention: at the final position, the summed |effect| of MLP outputs exceeds that of "
             "attention outputs (activation patching and attribution patching agree).")


def _figures(lab, prompt_set, method):
    tokens = lab.tokens_of_first_prompt(prompt_set)
    figures = {
        f"{site} {method} patching: effect (patched - corrupted), layer x position":
            (lambda site=site: heatmap(lab.effects(lab.patch(prompt_set, site, method)).mean(-1),
                                       title=f"{site} ({method} patching)", xlabel="position", ylabel="layer",
                                       xticklabels=tokens, colorbar_label="patched - corrupted logit diff"),
             "If the claim holds, the mlp_out map has larger effects (darker cells; compare the colour bar "
             "ranges) than the attn_out map.")
        for site in ("attn_out", "mlp_out")
    }
    attribution = lab.layer_attribution(prompt_set)
    figures["Direct logit attribution per layer component (clean, final position)"] = lambda: line_figure(
        attribution.mean, title="Direct logit attribution by component", xlabel="component",
        ylabel="logit difference", xticklabels=list(attribution.labels))
    return figures


def _judge(claim, verdict, data, method):
    share = claim.min_ratio / (1 + claim.min_ratio)  # sum|MLP| / sum|attention| > r  <=>  MLP share > r / (1 + r)
    verdict.judge(data, f"MLP share sum |MLP effect| / (sum |MLP effect| + sum |attention effect|) at the final "
                        f"position, layers {claim.from_layer}+ ({method} patching)",
                  lambda lab, ps: measures.mlp_attention_share(lab, ps, method, claim.from_layer),
                  Rule(">", round(share, 6), f"min_ratio / (1 + min_ratio), min_ratio = {claim.min_ratio:g}"),
                  figures=lambda lab, ps: _figures(lab, ps, method))


@pytest.mark.claim(id="mlp-over-attention", statement=STATEMENT)
@given(data=st.data())
def test_mlp_outweighs_attention_by_activation_patching(claim, verdict, data):
    _judge(claim, verdict, data, "activation")


@pytest.mark.claim(id="mlp-over-attention", statement=STATEMENT)
@given(data=st.data())
def test_mlp_outweighs_attention_by_attribution_patching(claim, verdict, data):
    _judge(claim, verdict, data, "attribution")
