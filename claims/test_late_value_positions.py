"""Claim: value patching, as the source computed it, matters most in late layers.

The source's value patching loops ``for head_index in range(n_heads)`` and writes
``hook_v[:, head_index, :, :]``. In TransformerLens ``hook_v`` is ``[batch, pos, kv_head, d_head]``, so
that index is a *position*: its "head h" of layer l patched the values of every key/value head at position
h (positions 0..13 of its 14-token prompts, for its 14 heads), not head h. Its sentence "Here we see that the
late heads matter most" therefore read a layer x position map. The suite tests the sentence per head
(``late-value-heads``, GQA-correct); this claim reproduces the source's computation, so that either reading
can be tested on any model:

- cells: ``hook_v`` of layer l patched at position p, all key/value heads (site ``v_pos``), for
  ``p < n_heads`` (the source's head indices; all positions when the prompts are shorter);
- the statistic is that of ``late-value-heads`` over these cells (``circuit.bands.late_over_earlier``): the
  late layers' mean |effect| over the earlier layers', each cell's size the |mean over prompts| of its effect.

Its own claim id, not a parameter of ``late-value-heads``: a spec states each claim once, and a reader
comparing the readings wants both stated, judged and reported side by side.
"""

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from circuit.bands import draft_late_over_earlier, late_over_earlier, refute_empty_bands
from circuit.decision import Rule
from circuit.discover import DraftContext, drafts
from circuit.report import heatmap
from circuit.spec import ClaimSpec, Layer, register_claim


@register_claim("late-value-positions")
@dataclass(frozen=True)
class LateValuePositions(ClaimSpec):
    """Value patching as the source computed it (``hook_v`` at positions 0..n_heads-1): late layers matter most."""

    late_from_layer: Layer
    """Layers from this one are late; the layers before it are the comparison."""
    min_ratio: float
    """mean |v_pos effect| of late layers' cells / that of the earlier layers' cells must be at least this (CI low)."""

    def check(self) -> None:
        if self.late_from_layer < 1:
            raise ValueError(f"late_from_layer: is {self.late_from_layer}, but must be at least 1: the late layers "
                             f"are compared with the layers before, and there would be none.")


def source_value_effects(lab, ps):
    """``[layer, position, batch]``: ``hook_v`` patched at positions ``0 .. min(n_heads, n_pos) - 1``."""
    effects = lab.effects(lab.patch(ps, "v_pos"))
    return effects[:, :lab.model.bridge.cfg.n_heads]


def late_value_position_ratio(lab, ps, late_from_layer):
    """Interval of the late layers' mean |effect| over the earlier layers', on the source's value cells."""
    return late_over_earlier(lab, source_value_effects(lab, ps), late_from_layer)


STATEMENT = ("Late value heads, as the source computed them: patching hook_v at positions 0..n_heads-1 (the "
             "source's head indices) matters most in the late layers.")


def _figures(lab, ps, late):
    effects = source_value_effects(lab, ps).mean(-1)
    return {"hook_v patched at position p (the source's 'head p'), per layer": (
        lambda: heatmap(effects, title="v_pos patching: patched - corrupted", xlabel="position (the source's head)",
                        ylabel="layer", colorbar_label="logit difference",
                        xticklabels=lab.tokens_of_first_prompt(ps)[:effects.shape[1]]),
        f"If the claim holds, the rows from layer {late} up hold the darkest cells.")}


@pytest.mark.claim(id="late-value-positions", statement=STATEMENT)
@given(data=st.data())
def test_late_layers_matter_most_by_the_source_s_value_patching(model, claim, verdict, data):
    n_layers, late = model.bridge.cfg.n_layers, claim.late_from_layer
    refute_empty_bands(verdict, n_layers, {"late": range(late, n_layers), "early and middle": range(late)})
    verdict.judge(data, f"mean |hook_v patching effect| at positions 0..n_heads-1 of layers {late}+ / of layers "
                        f"0..{late - 1}",
                  lambda lab, ps: late_value_position_ratio(lab, ps, late), Rule(">=", claim.min_ratio, "min_ratio"),
                  figures=lambda lab, ps: _figures(lab, ps, late))


@drafts("late-value-positions")
def _draft_late_value_positions(ctx: DraftContext):
    # The late bands late-value-heads chooses among: either reading, same cells.
    return draft_late_over_earlier(
        ctx, late_value_position_ratio, "layers",
        lambda late: f"mean |v_pos effect| (positions 0..n_heads-1) of layers {late}+ / of earlier layers",
        LateValuePositions)
