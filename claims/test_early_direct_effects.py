"""Claim: the early layers matter only through their direct effect on the logits.

The source, on attention patching by layer and position: "As with direct logit attribution, layer 22 is
positive and layer 3 is not, suggesting that the early layers only matter for direct logit effects." Made
precise as a split of the early layers' patching effects into a direct and an indirect part:

- the *total* effect of a cell is activation patching of the layer's output (``site``: ``attn_out`` or
  ``mlp_out``) at one position, clean into corrupted (``patched - corrupted`` logit difference);
- the *direct* effect of the cell at the position the metric reads is what that patch changes through the
  path straight to the logits, with the corrupted run's final-norm scale frozen
  (``circuit.attribution.direct_patch_effects``); at every other position it is 0 (only the read position is
  unembedded);
- the *indirect* effect is the rest: total - direct at the read position, the total at every other position.

The statistic is the direct share of the early layers' (layers before ``early_until_layer``) effect,
``sum_l |D_l| / (sum_l |D_l| + sum_l |T_l - D_l| + sum_{l, p != read} |T_{l,p}|)`` of the means over prompts
(taken inside each resample): 1 when the early layers act only directly, 0 when only through later layers.
It is bounded, so its interval is not stretched by a small denominator.
"""

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from circuit.decision import Rule
from circuit.discover import DraftContext, drafts
from circuit.report import heatmap
from circuit.spec import ClaimSpec, Fraction, LayerBound, register_claim

SITES = ("attn_out", "mlp_out")


@register_claim("early-direct-effects")
@dataclass(frozen=True)
class EarlyDirectEffects(ClaimSpec):
    """The early layers' patching effect is direct (through the logits), not through later layers."""

    early_until_layer: LayerBound
    """The early layers are those before this one (at least one layer)."""
    min_direct_share: Fraction
    """The direct share of the early layers' |patching effect| must be at least this (CI low)."""
    site: str = "attn_out"
    """Which layer outputs: "attn_out" (attention layers, the source's sentence) or "mlp_out"."""

    def check(self) -> None:
        if self.early_until_layer < 1:
            raise ValueError(f"early_until_layer: is {self.early_until_layer}, but the early layers (those before "
                             f"it) need at least one layer.")
        if self.site not in SITES:
            raise ValueError(f"site: is {self.site!r}, but must be one of {list(SITES)}.")


def read_position(lab, ps) -> int:
    """The one position the metric reads on every row (the final position)."""
    positions = lab.directions(ps).positions
    if bool((positions != positions.flatten()[0]).any()):
        raise ValueError(f"The metric reads several positions ({sorted(set(positions.flatten().tolist()))}): the "
                         f"direct share needs one read position per prompt set; use the 'seed' or "
                         f"'first_differing_token' metric.")
    return int(positions.flatten()[0])


def direct_share(lab, ps, early_until_layer, site="attn_out"):
    """Interval of the direct share of the early layers' patching effect (module docstring)."""
    effects = lab.effects(lab.patch(ps, site))[:early_until_layer]  # layer pos batch
    n_early = effects.shape[0]
    direct = lab.direct_effects(ps)
    rows = [direct.labels.index(f"{layer}_{site}") for layer in range(n_early)]
    d = direct.values[rows].double().cpu()  # layer batch
    read = read_position(lab, ps) % effects.shape[1]
    others = torch.cat([effects[:, :read], effects[:, read + 1:]], dim=1).flatten(0, 1)
    stacked = torch.cat([d, effects[:, read], others])

    def share(x):  # [..., cells, batch]
        means = x.mean(-1)
        dm, tm, om = means[..., :n_early], means[..., n_early:2 * n_early], means[..., 2 * n_early:]
        size = dm.abs().sum(-1)
        return size / (size + (tm - dm).abs().sum(-1) + om.abs().sum(-1))

    return lab.ci(stacked, share)


STATEMENT = ("Early layers matter only directly: most of the early layers' patching effect is their direct effect "
             "on the logits, not an effect through later layers.")


def _figures(lab, ps, early, site):
    effects = lab.effects(lab.patch(ps, site)).mean(-1)
    return {f"{site} patching effect by layer and position (early layers: rows below {early})": (
        lambda: heatmap(effects, title=f"{site} patching: patched - corrupted", xlabel="position", ylabel="layer",
                        colorbar_label="logit difference", xticklabels=lab.tokens_of_first_prompt(ps)),
        f"If the claim holds, the rows below layer {early} are pale except at the final position, where the "
        f"effect is the layer's direct effect.")}


@pytest.mark.claim(id="early-direct-effects", statement=STATEMENT)
@given(data=st.data())
def test_early_layers_matter_only_through_their_direct_effect(claim, verdict, data):
    early, site = claim.early_until_layer, claim.site
    verdict.judge(data, f"direct share of the |{site} patching effect| of layers 0..{early - 1}, sum |direct| / "
                        f"(sum |direct| + sum |indirect|)",
                  lambda lab, ps: direct_share(lab, ps, early, site),
                  Rule(">=", claim.min_direct_share, "min_direct_share"),
                  figures=lambda lab, ps: _figures(lab, ps, early, site))


# --- drafter (discovery) ------------------------------------------------------------------------------

MOSTLY = 0.5
""""Only direct": stated when the threshold gives the direct effect at least half of the early layers' effect."""


@drafts("early-direct-effects")
def _draft_early_direct_effects(ctx: DraftContext):
    early = ctx.early_until_layer

    def measure(lab, ps):
        return direct_share(lab, ps, early, "attn_out")

    rule = ctx.rule(">=", measure, "min_direct_share")
    if rule.threshold < MOSTLY:
        return None, (f"not stated: direct share of the attention patching effect of layers 0..{early - 1}: "
                      f"{ctx.log[ctx.claim_id]['min_direct_share']}: below {MOSTLY}")
    return EarlyDirectEffects(tolerance=ctx.tolerance(measure), early_until_layer=early, site="attn_out",
                              min_direct_share=rule.threshold), "early layers: the first sixth (circuit.bands)"
