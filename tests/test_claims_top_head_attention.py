"""The drafter of ``top-head-attention`` (claims/test_top_head_attention.py) on hand-made effects and attention.

A lab whose per-head z patching effects and attention summaries are given (no model): the drafter chooses the
number of top heads and the bands where the top heads attend as the source says, states the thresholds the
(noiseless) held-out values give, and says why not, with the numbers, where the attention says otherwise.
"""

from __future__ import annotations

from types import SimpleNamespace

from test_claims_head_bands import ROOT, GivenEffects, _draft_context, constant
from claim_helpers import claims_module

CLAIMS = ROOT / "claims" / "test_top_head_attention.py"


attention = claims_module(CLAIMS)


class GivenAttention(GivenEffects):
    """Given per-head effects and attention summaries ``[layer, head, batch]`` (no model)."""

    def __init__(self, to_bos, normalized_entropy, **effects):
        super().__init__(**effects)
        self.summary = SimpleNamespace(to_bos=to_bos, normalized_entropy=normalized_entropy)

    def attention(self, ps, query="all"):
        return self.summary


def _six_layers(late_bos, early_entropy=0.95):
    """Six layers of two heads: the top heads by |z| are L0H0 (10), L5H1 (9) and L1H0 (1)."""
    z = [[0.1, 0.1] for _ in range(6)]
    z[0][0], z[5][1], z[1][0] = 10.0, 9.0, 1.0
    to_bos = [[0.1, 0.1] for _ in range(6)]
    entropy = [[0.3, 0.3] for _ in range(6)]
    to_bos[5][1], entropy[0][0] = late_bos, early_entropy
    return GivenAttention(constant(to_bos), constant(entropy), z=constant(z))


def test_the_drafter_chooses_top_heads_and_bands_where_they_attend_as_the_source_says():
    from circuit.discover import DRAFTERS

    ctx = _draft_context(_six_layers(late_bos=0.9), 6, 2)
    drafted, note = DRAFTERS["top-head-attention"](ctx)
    # top 2: L0H0 (early, entropy 0.95) and L5H1 (late, BOS 0.9); the top 3 would add L1H0 (entropy 0.3) to an
    # early band of two layers. Ties go to the first candidate: late layers from 3, early band layer 0.
    assert (drafted.top_k, drafted.late_from_layer, drafted.early_until_layer) == (2, 3, 1), note
    assert (drafted.min_bos_attention, drafted.min_normalized_entropy) == (0.9, 0.95), note


def test_the_drafter_leaves_exactly_uniform_heads_the_rounding_of_half_precision():
    """Exactly uniform in float32 (normalized entropy 1) reads 0.9999 in float16: a threshold of 1 would be
    refuted there, so the drafter states MAX_STATED_ENTROPY and says so."""
    from circuit.discover import DRAFTERS

    ctx = _draft_context(_six_layers(0.9, early_entropy=1.0), 6, 2)
    drafted, note = DRAFTERS["top-head-attention"](ctx)
    assert drafted.min_normalized_entropy == attention.MAX_STATED_ENTROPY == 0.99, note
    assert str(ctx.log).count("stated at 0.99 (the rounding of half precision)") == 1, ctx.log


def test_the_drafter_states_nothing_where_the_late_top_head_does_not_attend_to_bos():
    from circuit.discover import DRAFTERS

    ctx = _draft_context(_six_layers(late_bos=0.3), 6, 2)
    drafted, note = DRAFTERS["top-head-attention"](ctx)
    assert drafted is None
    assert note.startswith("not stated") and "held-out estimate 0.3 [95% CI 0.3, 0.3]" in note, note
    assert f"needs >= {attention.MIN_STATED_BOS}" in note, note


def test_the_drafter_says_why_when_no_band_holds_a_top_head():
    """Three layers: the one choice of bands is layer 0 (early) and layer 2 (late); with both top heads in
    layer 1, neither band holds one."""
    from circuit.discover import DRAFTERS

    z = constant([[0.0, 0.0], [5.0, 4.0], [0.0, 0.0]])
    lab = GivenAttention(constant([[0.9, 0.9]] * 3), constant([[0.9, 0.9]] * 3), z=z)
    drafted, note = DRAFTERS["top-head-attention"](_draft_context(lab, 3, 2))
    assert drafted is None and "holds none of the top heads" in note, note
