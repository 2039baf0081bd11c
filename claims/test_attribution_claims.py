"""Claims read from the direct path to the logits: the logit lens rises linearly, and late MLPs carry it.

The *logit lens* reads the metric (the logit difference) from the residual stream accumulated after each
sub-layer at the final position, through the final norm with the final residual's scale frozen
(``circuit.attribution.logit_lens``): entries ``0_pre, 0_mid, 1_pre, ..., final_post``, placed at depths
0, 0.5, 1, ..., n_layers. The source: "the model essentially improves with each layer nearly exactly
linearly". Measured as the R^2 of the least-squares line through the mean logit-lens curve (over prompts)
against depth, over the entries from ``from_layer`` on; optionally also the smallest step of that curve
(one sub-layer's direct logit attribution) as a fraction of the average step, which is negative when some
sub-layer lowers the curve.

*Direct logit attribution* per layer (``circuit.attribution.layer_attribution``) splits the final logit
difference into each attention and MLP layer's direct contribution; the steps of the logit lens are these.
The source: "while attn layer 23 matters, mostly it's the later MLP layers that matter". Measured as the
share of the MLP layers in the summed |mean attribution| of all attention and MLP layers from ``from_layer``
on, and, for the attention layers the spec names, the smallest sign-oriented mean attribution.

Both are read on the clean run alone (no corrupted run, nothing normalized by clean - corrupted), so neither
needs the task-solved precondition; the statistic's interval comes from resampling the prompts, and each
resample's statistic is computed from that resample's mean curve.
"""

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from jaxtyping import Float
from torch import Tensor

from circuit.decision import Rule
from circuit.discover import DraftContext, drafts
from circuit.report import line_figure
from circuit.spec import ClaimSpec, Fraction, Layer, register_claim

LENS_STATEMENT = ("Logit lens rises linearly: the logit difference read from the residual stream after each "
                  "layer grows nearly exactly linearly with depth (R^2 of a straight line).")
MLP_STATEMENT = ("Late MLP layers carry the direct logit attribution: from the late layers on, MLP layers' "
                 "|direct logit attribution| outweighs attention layers', and each named attention layer "
                 "contributes with its stated sign.")

MIN_STATED_R2 = 0.5
"""Discovery states ``logit-lens-linear`` only with a threshold at least this (a line explaining less than
half the curve's variance says little about linearity)."""
MIN_STATED_SHARE = 0.5
"""Discovery states ``late-mlp-attribution`` only with a threshold above this (MLPs carry the larger part)."""
_SIGNS = {"positive": 1.0, "negative": -1.0}


# --- parameters ---------------------------------------------------------------------------------------


@register_claim("logit-lens-linear")
@dataclass(frozen=True)
class LogitLensLinearClaim(ClaimSpec):
    """The logit lens rises nearly exactly linearly with depth."""

    from_layer: Layer
    """The line is fitted to the logit lens entries from this layer's input (``<from_layer>_pre``) to the final
    residual stream (0: the whole curve, from the embeddings on)."""
    min_r2: float
    """R^2 of the least-squares line through the mean logit lens curve against depth must be at least this
    (CI low; between 0 and 1)."""
    min_step: float | None = None
    """If given, every step of the mean curve from ``from_layer`` on (one attention or MLP sub-layer) must be at
    least this fraction of the average step (CI low of the smallest; at most 1, since the smallest step is
    at most the average; 0: the curve never falls). Unitless, so it reads the same on any logit scale."""

    def check(self) -> None:
        if not 0.0 <= self.min_r2 <= 1.0:
            raise ValueError(f"min_r2: an R^2 lies between 0 and 1, got {self.min_r2}.")
        if self.min_step is not None and self.min_step > 1.0:
            raise ValueError(f"min_step: the smallest step is at most the average step (1.0), so {self.min_step} "
                             f"can never hold.")


@dataclass(frozen=True)
class SignedLayer:
    """One attention layer the analysis names, with the sign of its direct logit attribution."""

    layer: Layer
    """The layer whose attention output (all heads and the bias) is named."""
    sign: str
    """Its stated direct effect on the logit difference: 'positive' or 'negative'."""


@register_claim("late-mlp-attribution")
@dataclass(frozen=True)
class LateMlpAttributionClaim(ClaimSpec):
    """Late MLP layers carry most of the direct logit attribution; named attention layers have their sign."""

    from_layer: Layer
    """Only layers from this one on are summed (the late layers; 0: all)."""
    min_mlp_share: Fraction
    """sum |mean DLA| of the MLP layers / (that + sum |mean DLA| of the attention layers), layers from
    ``from_layer`` on, must be at least this (CI low; between 0 and 1)."""
    attention_layers: tuple[SignedLayer, ...] = ()
    """Attention layers named with a sign (e.g. ``[{layer = 23, sign = "positive"}]``): each one's mean direct
    logit attribution, oriented by its sign, must be above 0 (CI low of the smallest). Empty (the default):
    not tested."""

    def check(self) -> None:
        if not 0.0 <= self.min_mlp_share <= 1.0:
            raise ValueError(f"min_mlp_share: a share lies between 0 and 1, got {self.min_mlp_share}.")
        for i, named in enumerate(self.attention_layers):
            if named.sign not in _SIGNS:
                raise ValueError(f"attention_layers[{i}].sign: is {named.sign!r}; use one of {list(_SIGNS)}.")
        layers = [named.layer for named in self.attention_layers]
        twice = sorted({layer for layer in layers if layers.count(layer) > 1})
        if twice:
            raise ValueError(f"attention_layers: layer(s) {twice} named more than once; name each layer once.")


# --- statistics ---------------------------------------------------------------------------------------


def lens_depths(labels: tuple[str, ...] | list[str]) -> list[float]:
    """Each logit lens entry's depth in layers: ``'<l>_pre'`` -> l, ``'<l>_mid'`` -> l + 0.5 (after the
    attention of layer l), ``'final_post'`` -> the number of layers."""
    n_layers = 1 + max(int(label.partition("_")[0]) for label in labels if label.partition("_")[0].isdigit())
    offsets = {"pre": 0.0, "mid": 0.5}
    depths = []
    for label in labels:
        where, _, kind = label.partition("_")
        if where == "final":
            depths.append(float(n_layers))
        elif where.isdigit() and kind in offsets:
            depths.append(int(where) + offsets[kind])
        else:
            raise ValueError(f"Logit lens entry {label!r} is not '<layer>_pre', '<layer>_mid' or 'final_post'.")
    return depths


def linear_fit(curve: Float[Tensor, "*resample point"],
               x: Float[Tensor, " point"]) -> tuple[Float[Tensor, " *resample"], Float[Tensor, " *resample"]]:
    """Slope and intercept of the least-squares line through ``(x, curve)`` along the last dim."""
    x = x.to(curve)
    centred = x - x.mean()
    slope = ((curve - curve.mean(-1, keepdim=True)) * centred).sum(-1) / centred.pow(2).sum()
    return slope, curve.mean(-1) - slope * x.mean()


def r_squared(curve: Float[Tensor, "*resample point"], x: Float[Tensor, " point"]) -> Float[Tensor, " *resample"]:
    """R^2 of the least-squares line through ``(x, curve)`` along the last dim: 1 - residual / total sum of
    squares (1 for points on a line; NaN for a flat curve, which no line explains)."""
    slope, intercept = linear_fit(curve, x)
    residual = curve - (intercept[..., None] + slope[..., None] * x.to(curve))
    total = curve - curve.mean(-1, keepdim=True)
    return 1 - residual.pow(2).sum(-1) / total.pow(2).sum(-1)


def relative_steps(curve: Float[Tensor, "*resample point"]) -> Float[Tensor, "*resample step"]:
    """Each step of ``curve`` as a fraction of the average step's size: ``diff / |mean diff|`` (all 1 for a
    straight rise; negative where the curve falls)."""
    steps = curve.diff(dim=-1)
    return steps / steps.mean(-1, keepdim=True).abs()


def mlp_share(mlp: Float[Tensor, "*resample layer"],
              attention: Float[Tensor, "*resample layer"]) -> Float[Tensor, " *resample"]:
    """``sum |mlp| / (sum |mlp| + sum |attention|)`` over the last dim (of mean attributions per layer)."""
    mlp, attention = mlp.abs().sum(-1), attention.abs().sum(-1)
    return mlp / (mlp + attention)


def _lens_from(lab, ps, from_layer: int) -> tuple[Tensor, Tensor]:
    """``(depths [point], values [point, batch])`` of the logit lens entries from ``from_layer`` on, float64."""
    lens = lab.logit_lens(ps)
    depths = torch.tensor(lens_depths(lens.labels), dtype=torch.float64)
    keep = depths >= from_layer
    if int(keep.sum()) < 3:
        raise ValueError(f"from_layer={from_layer}: only {[label for label, k in zip(lens.labels, keep) if k]} of "
                         f"the logit lens entries lie from there on, and a line through fewer than 3 points fits "
                         f"exactly. State an earlier from_layer.")
    return depths[keep], lens.values.double().cpu()[keep]


def lens_linearity(lab, ps, from_layer: int):
    """Interval of the R^2 of the least-squares line through the mean logit lens curve, from ``from_layer`` on."""
    depths, values = _lens_from(lab, ps, from_layer)
    return lab.ci(values, lambda x: r_squared(x.mean(-1), depths))


def lens_smallest_step(lab, ps, from_layer: int):
    """Interval of the smallest step of the mean logit lens curve from ``from_layer`` on, as a fraction of the
    average step (:func:`relative_steps`)."""
    _, values = _lens_from(lab, ps, from_layer)
    return lab.ci(values, lambda x: relative_steps(x.mean(-1)).amin(-1))


def _layer_rows(labels: tuple[str, ...], kind: str) -> dict[int, int]:
    """Layer -> row of the layer attribution for ``kind`` (``'attn_out'`` or ``'mlp_out'``)."""
    return {int(label.partition("_")[0]): i for i, label in enumerate(labels) if label.endswith(f"_{kind}")}


def late_mlp_share(lab, ps, from_layer: int):
    """Interval of the MLP layers' share of sum |mean DLA| over attention and MLP layers from ``from_layer`` on."""
    attribution = lab.layer_attribution(ps)
    mlp, attention = _layer_rows(attribution.labels, "mlp_out"), _layer_rows(attribution.labels, "attn_out")
    layers = [layer for layer in sorted(mlp) if layer >= from_layer]
    values = attribution.values.double().cpu()
    stacked = values[[mlp[layer] for layer in layers] + [attention[layer] for layer in layers]]
    n = len(layers)
    return lab.ci(stacked, lambda x: mlp_share(x.mean(-1)[..., :n], x.mean(-1)[..., n:]))


def weakest_signed_attention(lab, ps, named: tuple[SignedLayer, ...]):
    """Interval of the smallest sign-oriented mean DLA among the named attention layers."""
    attribution = lab.layer_attribution(ps)
    rows = _layer_rows(attribution.labels, "attn_out")
    values = attribution.values.double().cpu()
    oriented = torch.stack([_SIGNS[n.sign] * values[rows[n.layer]] for n in named])  # [layer, batch]
    return lab.ci(oriented, lambda x: x.mean(-1).amin(-1))


# --- figures ------------------------------------------------------------------------------------------


def _lens_figure(lab, prompt_set, from_layer: int):
    lens = lab.logit_lens(prompt_set)
    depths = torch.tensor(lens_depths(lens.labels), dtype=torch.float64)
    mean = lens.mean.double().cpu()
    keep = depths >= from_layer
    slope, intercept = linear_fit(mean[keep], depths[keep])
    line = torch.where(keep, intercept + slope * depths, torch.full_like(depths, math.nan))
    return {"Logit lens: the logit difference read after each sub-layer (final position), with the fitted line":
            (lambda: line_figure({"logit lens (mean over prompts)": mean,
                                  f"least-squares line from layer {from_layer}": line},
                                 title="Logit difference from the accumulated residual stream",
                                 xlabel="residual stream (n_pre: into layer n; n_mid: after its attention)",
                                 ylabel="logit difference",
                                 xticklabels=list(lens.labels)),
             "If the claim holds, the logit lens curve lies close to the straight line from the marked layer "
             "on: each layer adds about the same to the logit difference.")}


def _attribution_figure(lab, prompt_set, from_layer: int):
    attribution = lab.layer_attribution(prompt_set)
    mean = attribution.mean.double().cpu()
    mlp, attention = _layer_rows(attribution.labels, "mlp_out"), _layer_rows(attribution.labels, "attn_out")
    layers = sorted(mlp)
    return {"Direct logit attribution per layer: attention vs MLP (clean, final position)":
            (lambda: line_figure({"attention": mean[[attention[layer] for layer in layers]],
                                  "MLP": mean[[mlp[layer] for layer in layers]]},
                                 title="Direct logit attribution by layer", xlabel="layer",
                                 ylabel="logit difference", xticklabels=[str(layer) for layer in layers]),
             f"If the claim holds, from layer {from_layer} on the MLP line lies much further from 0 than the "
             f"attention line, and each named attention layer lies on its stated side of 0.")}


# --- claims -------------------------------------------------------------------------------------------


@pytest.mark.claim(id="logit-lens-linear", statement=LENS_STATEMENT)
@given(data=st.data())
def test_logit_lens_rises_linearly(claim, verdict, data):
    from_layer = claim.from_layer
    verdict.judge(data, f"R^2 of a straight line through the mean logit lens curve against depth, from layer "
                        f"{from_layer}",
                  lambda lab, ps: lens_linearity(lab, ps, from_layer), Rule(">=", claim.min_r2, "min_r2"),
                  figures=lambda lab, ps: _lens_figure(lab, ps, from_layer))


@pytest.mark.claim(id="logit-lens-linear", statement=LENS_STATEMENT)
@given(data=st.data())
def test_every_layer_raises_the_logit_lens(claim, verdict, data):
    if claim.min_step is None:
        pytest.skip("the spec states no min_step")
    from_layer = claim.from_layer
    verdict.judge(data, f"smallest step of the mean logit lens curve / |average step|, from layer {from_layer}",
                  lambda lab, ps: lens_smallest_step(lab, ps, from_layer), Rule(">=", claim.min_step, "min_step"),
                  figures=lambda lab, ps: _lens_figure(lab, ps, from_layer))


@pytest.mark.claim(id="late-mlp-attribution", statement=MLP_STATEMENT)
@given(data=st.data())
def test_late_mlp_layers_carry_the_attribution(claim, verdict, data):
    from_layer = claim.from_layer
    verdict.judge(data, f"MLP share of sum |mean direct logit attribution| over attention and MLP layers, layers "
                        f"{from_layer}+",
                  lambda lab, ps: late_mlp_share(lab, ps, from_layer),
                  Rule(">=", claim.min_mlp_share, "min_mlp_share"),
                  figures=lambda lab, ps: _attribution_figure(lab, ps, from_layer))


@pytest.mark.claim(id="late-mlp-attribution", statement=MLP_STATEMENT)
@given(data=st.data())
def test_named_attention_layers_have_their_sign(claim, verdict, data):
    named = claim.attention_layers
    if not named:
        pytest.skip("the spec names no attention layer")
    verdict.judge(data, f"smallest sign-oriented mean direct logit attribution among attention layers "
                        f"{[f'{n.layer} ({n.sign})' for n in named]}",
                  lambda lab, ps: weakest_signed_attention(lab, ps, named), Rule(">", 0),
                  figures=lambda lab, ps: _attribution_figure(lab, ps, claim.from_layer))


# --- discovery ----------------------------------------------------------------------------------------


@drafts("logit-lens-linear")
def _draft_logit_lens_linear(ctx: DraftContext) -> tuple[LogitLensLinearClaim | None, str]:
    """The whole curve (from layer 0, as the source plots it); ``min_step`` only where the held-out sets support a
    step above 0 (no sub-layer lowers the curve)."""
    def linearity(lab, ps):
        return lens_linearity(lab, ps, 0)

    def smallest_step(lab, ps):
        return lens_smallest_step(lab, ps, 0)

    rule = ctx.rule(">=", linearity, "min_r2")
    if rule.threshold < MIN_STATED_R2:
        return None, (f"not stated: R^2 of a line through the logit lens from layer 0: "
                      f"{ctx.log[ctx.claim_id]['min_r2']}, below {MIN_STATED_R2}")
    step_rule = ctx.rule(">=", smallest_step, "min_step")
    min_step, note = None, ""
    if step_rule.threshold > 0:
        min_step = step_rule.threshold
    else:
        note = f"min_step not stated: {ctx.log[ctx.claim_id].pop('min_step')} (some sub-layer lowers the curve)"
    return LogitLensLinearClaim(tolerance=ctx.tolerance(linearity), from_layer=0, min_r2=rule.threshold,
                                min_step=min_step), note


@drafts("late-mlp-attribution")
def _draft_late_mlp_attribution(ctx: DraftContext) -> tuple[LateMlpAttributionClaim | None, str]:
    """From the latest of: the late layers (final-token localization's), the second half, all layers, where the
    held-out sets support an MLP share above ``MIN_STATED_SHARE``; names the attention layer with the largest
    |mean attribution| on the draft sets when its sign clears 0 on the held-out sets."""
    candidates = sorted({layer for layer in (ctx.late_from_layer, ctx.n_layers // 2, 0) if layer is not None},
                        reverse=True)
    tried = []
    for from_layer in candidates:
        def share(lab, ps, from_layer=from_layer):
            return late_mlp_share(lab, ps, from_layer)

        rule = ctx.rule(">=", share, "min_mlp_share")
        if rule.threshold > MIN_STATED_SHARE:
            break
        tried.append(f"from layer {from_layer}: {ctx.log[ctx.claim_id]['min_mlp_share']}")
    else:
        return None, (f"not stated: the MLP share of |direct logit attribution| is not above {MIN_STATED_SHARE} "
                      f"with margin ({'; '.join(tried)})")
    attributions = [ctx.lab.layer_attribution(ps) for ps in ctx.sets]
    rows = _layer_rows(attributions[0].labels, "attn_out")
    means = torch.stack([a.mean.double().cpu()[[rows[layer] for layer in sorted(rows)]] for a in attributions])
    largest = int(means.mean(0).abs().argmax())
    sign = "positive" if float(means.mean(0)[largest]) > 0 else "negative"
    candidate = (SignedLayer(layer=largest, sign=sign),)
    named: tuple[SignedLayer, ...] = ()
    if ctx.supports(">", lambda lab, ps: weakest_signed_attention(lab, ps, candidate), 0.0, f"attention {largest} {sign}"):
        named = candidate
    notes = [f"not from a later layer ({'; '.join(tried)})"] if tried else []
    if not named:
        notes.append(f"attention_layers not stated: attention layer {largest} has the largest |mean attribution| "
                     f"({[round(float(m[largest]), 3) for m in means]} per draft set), but its sign does not clear 0 "
                     f"on the held-out sets")
    return LateMlpAttributionClaim(tolerance=ctx.tolerance(share), from_layer=from_layer,
                                   min_mlp_share=rule.threshold, attention_layers=named), "; ".join(notes)
