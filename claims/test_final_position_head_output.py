"""Claim: the named heads' output matters on the final token.

The source sums up: "late heads (L23H1, L22H7, L0H11) whose output matters on the final token". Its output
(z) patching patched each head at every position; the claim is that the final position carries that effect.
For the named heads, the share of their all-position z patching effect that patching their output at the
final position only reproduces (sites ``z`` and ``z_final``, ``circuit.patching``):
``sum_h mean(z_final_h) * sign(mean(z_h)) / sum_h |mean(z_h)|`` (means over prompts, taken inside each
resample): 1 when the final position carries all of it, 0 when none. The heads are named in the spec (the
source names them; discovery names the top heads by |z patching|).
"""

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from circuit.decision import Rule
from circuit.discover import DraftContext, drafts
from circuit.report import heatmap
from circuit.spec import ClaimSpec, Head, parse_head, register_claim


@register_claim("final-position-head-output")
@dataclass(frozen=True)
class FinalPositionHeadOutput(ClaimSpec):
    """The named heads' output patching effect is carried by the final position."""

    heads: tuple[Head, ...]
    """The heads, as 'L<layer>H<head>' (the source: L23H1, L22H7, L0H11)."""
    min_fraction: float
    """sum_h z_final_h * sign(z_h) / sum_h |z_h| over the named heads must be at least this (CI low)."""

    def check(self) -> None:
        if not self.heads:
            raise ValueError("heads: is empty; name at least one head, e.g. heads = ['L23H1'].")


def final_share(lab, ps, heads):
    """Interval of the share of the named heads' z patching effect that their final-position patch reproduces."""
    z, final = lab.effects(lab.patch(ps, "z")), lab.effects(lab.patch(ps, "z_final"))
    stacked = torch.stack([torch.stack([final[l, h] for l, h in heads]), torch.stack([z[l, h] for l, h in heads])])

    def share(x):  # [..., 2, head, batch]
        means = x.mean(-1)
        at_final, output = means[..., 0, :], means[..., 1, :]
        return (at_final * output.sign()).sum(-1) / output.abs().sum(-1)

    return lab.ci(stacked, share)


STATEMENT = ("Named heads' output matters on the final token: patching their output at the final position alone "
             "reproduces most of their output patching effect.")


def _figures(lab, ps, heads):
    def panel(site, title):
        values = lab.effects(lab.patch(ps, site)).mean(-1)
        return (lambda: heatmap(values, title=title, xlabel="head", ylabel="layer",
                                colorbar_label="patched - corrupted",
                                xticklabels=[str(h) for h in range(values.shape[1])], highlight=list(heads)),
                "The boxed cells are the named heads. If the claim holds, their cells have about the same colour in "
                "both maps.")
    return {"Output (z) patching at every position, per head": panel("z", "z patching, all positions"),
            "Output (z) patching at the final position only, per head": panel("z_final", "z patching, final position")}


@pytest.mark.claim(id="final-position-head-output", statement=STATEMENT)
@given(data=st.data())
def test_named_heads_output_matters_on_the_final_token(claim, verdict, data):
    heads = [parse_head(h) for h in claim.heads]
    verdict.judge(data, f"share of the z patching effect of {list(claim.heads)} reproduced at the final position, "
                        f"sum z_final * sign(z) / sum |z|",
                  lambda lab, ps: final_share(lab, ps, heads), Rule(">=", claim.min_fraction, "min_fraction"),
                  figures=lambda lab, ps: _figures(lab, ps, heads))


# --- drafter (discovery) ------------------------------------------------------------------------------

MOSTLY = 0.5
""""Matters on the final token": stated when the threshold gives the final position at least half of the effect."""


@drafts("final-position-head-output")
def _draft_final_position_head_output(ctx: DraftContext):
    heads = ctx.top_heads(ctx.options.n_heads_named)  # chosen on the draft sets

    def measure(lab, ps):
        return final_share(lab, ps, heads)

    rule = ctx.rule(">=", measure, "min_fraction")
    labels = [f"L{l}H{h}" for l, h in heads]
    if rule.threshold < MOSTLY:
        return None, (f"not stated: share of the z patching effect of the top heads by |z| {labels} reproduced at "
                      f"the final position: {ctx.log[ctx.claim_id]['min_fraction']}: below {MOSTLY}")
    return FinalPositionHeadOutput(tolerance=ctx.tolerance(measure), heads=tuple(labels),
                                   min_fraction=rule.threshold), "heads: the top heads by |z patching|, draft sets"
