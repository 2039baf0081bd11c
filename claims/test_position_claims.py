"""Claims: where in the prompt the attention and MLP outputs matter (patching by layer x position).

Patching one layer's clean attention output (``attn_out``) or MLP output (``mlp_out``) at one position into
the corrupted run gives a map of effects (``patched - corrupted`` logit difference, mean over prompts)
over layers and positions. The source reads two things off these maps:

- ``attn-out-by-position``: "several attention layers are significant but ..., matching the residual
  stream results, early layers slightly matter on the multiplicands, but mostly everything matters on the
  final token. Extremely localised! As with direct logit attribution, layer 22 is positive and layer 3 is
  not". Tested as (A) the sign of each named layer's attention effect at the final position, and (B) the
  early layers' effect on the operand tokens, as a fraction of all layers' effect at the final position:
  at most a bound (``mostly everything matters on the final token``) and above 0 (``slightly matter``).
- ``mlp-out-by-position``: "the MLP layer 7 does matter" and "MLP0 matters on the second subject token".
  Tested as the rank of each named cell (a layer at a named position) among all layer x position cells by
  |mean MLP patching effect|.

Positions are named, not numbered, so one spec fits every operand length: ``"a"`` (the first operand's
digit tokens), ``"b"`` (the second operand's) and ``"final"`` (the last position the metric reads: the
prompt's " =", or the last answer-prefix token that the 'first_differing_token' metric appends after it).
:func:`operand_positions` finds them in the tokenized prompts and refuses a set whose prompts place their
operands at different positions.

A layer's sign is that of its effect *toward the clean run*: per prompt ``patched - corrupted`` times the
sign of that prompt's ``clean - corrupted``, averaged, and divided by the mean ``|clean - corrupted|`` (so the
statistic is in units of the gap, like the source's normalized patching, 1 meaning "restores the clean run").
"positive" means patching the clean attention output moves the corrupted run toward the clean one. Signing
each prompt by its own gap, rather than dividing means (the source's ``(patched - corrupted) / (clean -
corrupted)``), keeps the sign meaningful when some prompts' gaps are small or of the other sign (the source's
own mean clean and corrupted numbers, 0.229 and 0.27, have a negative gap).

The attention statistics read only *informative* prompts, whose clean and corrupted logit differences differ:
on the others every effect is 0 up to rounding (the 'seed' metric adds the logits of the answer's tokens at
one position, so an answer perturbed by reordering its digits scores the same in every run), and a resample
of only those would divide 0 by 0. A set with fewer than ``[statistics] min_prompts`` informative prompts
fails as a precondition, with that reason.
"""

import re
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from circuit.decision import Rule
from circuit.discover import DraftContext, drafts
from circuit.report import heatmap
from circuit.spec import ClaimSpec, Layer, LayerBound, Rank, register_claim
from circuit.stats import TooFewPromptsError

POSITION_NAMES = ("a", "b", "final")
"""The positions a spec may name: the first operand's digits, the second operand's, the last position."""

SIGNS = ("positive", "not_positive")
"""The signs a spec may state for a layer's attention effect at the final position."""


# --- the parameters --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedLayer:
    """An attention layer and the sign of its patching effect at the final position."""

    layer: Layer
    """The attention layer."""
    sign: str
    """'positive' (mean effect toward the clean run > 0: patching it in moves the corrupted run toward the clean
    one) or 'not_positive' (the interval lies at or below 0)."""


@register_claim("attn-out-by-position")
@dataclass(frozen=True)
class AttnOutByPositionClaim(ClaimSpec):
    """Attention outputs matter at the final position, with the named layers' signs; early layers matter
    only slightly on the operands."""

    layers: tuple[SignedLayer, ...]
    """The layers whose attention effect at the final position has a stated sign, e.g.
    [{layer = 22, sign = "positive"}, {layer = 3, sign = "not_positive"}]."""
    early_until_layer: LayerBound
    """Layers before this one are early (at least 1)."""
    max_operand_fraction: float
    """sum over early layers and operand positions of |mean attention effect|, divided by the sum over all
    layers of |mean attention effect| at the final position, is at most this (CI high); the early layers' summed effect at the operands, toward the clean run,
    must have an interval that excludes 0 ('slightly matter')."""

    def check(self) -> None:
        for i, named in enumerate(self.layers):
            if named.sign not in SIGNS:
                raise ValueError(f"layers[{i}].sign: is {named.sign!r}; use one of {list(SIGNS)}.")
        repeated = sorted({n.layer for n in self.layers if [m.layer for m in self.layers].count(n.layer) > 1})
        if repeated:
            raise ValueError(f"layers: layer(s) {repeated} are named more than once; name each layer once.")
        if self.early_until_layer < 1:
            raise ValueError(f"early_until_layer: is {self.early_until_layer}, so no layer is early; use 1 or more.")
        if not self.max_operand_fraction >= 0:
            raise ValueError(f"max_operand_fraction: must be >= 0 (a ratio of sums of magnitudes), got "
                             f"{self.max_operand_fraction}.")


@dataclass(frozen=True)
class NamedCell:
    """An MLP layer at a named position."""

    layer: Layer
    """The MLP layer."""
    position: str
    """'a' (the first operand's digit tokens), 'b' (the second operand's) or 'final' (the last position). An
    operand ranks by its best digit position."""


@register_claim("mlp-out-by-position")
@dataclass(frozen=True)
class MlpOutByPositionClaim(ClaimSpec):
    """The named (MLP layer, position) cells are among the top-k cells by |MLP patching effect|."""

    top_k: Rank
    """Each named cell ranks within the top k of all layer x position cells: its |effect| minus that of the best cell
    ranked beyond k must have an interval above 0."""
    cells: tuple[NamedCell, ...]
    """The cells, e.g. [{layer = 7, position = "final"}, {layer = 0, position = "b"}]."""

    def check(self) -> None:
        for i, cell in enumerate(self.cells):
            if cell.position not in POSITION_NAMES:
                raise ValueError(f"cells[{i}].position: is {cell.position!r}; use one of {list(POSITION_NAMES)}.")
        seen = [(c.layer, c.position) for c in self.cells]
        repeated = sorted({c for c in seen if seen.count(c) > 1})
        if repeated:
            raise ValueError(f"cells: {repeated} named more than once; name each cell once.")


# --- positions -------------------------------------------------------------------------------------------


class PositionError(ValueError):
    """The operands of a prompt set cannot be located, or are not at the same positions in every prompt."""


@dataclass(frozen=True)
class OperandPositions:
    """Token positions (indices into the batch's ``pos`` axis) shared by every prompt of a batch."""

    a: tuple[int, ...]
    """The first operand's digit tokens."""
    b: tuple[int, ...]
    """The second operand's digit tokens."""
    final: int
    """The last position (where the metric is read)."""

    def of(self, name: str) -> tuple[int, ...]:
        """The positions named ``name`` ('a', 'b' or 'final')."""
        if name not in POSITION_NAMES:
            raise ValueError(f"position {name!r}: use one of {list(POSITION_NAMES)}.")
        return (self.final,) if name == "final" else getattr(self, name)

    @property
    def operands(self) -> tuple[int, ...]:
        return self.a + self.b


_PROMPT = re.compile(r"^(\d+) x (\d+) =$")


def _operand_layout(batch, row: int, tokenizer) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Positions of the tokens of prompt ``row`` that overlap each operand's characters."""
    prompt = batch.prompts[row]
    match = _PROMPT.match(prompt)
    if match is None:
        raise PositionError(f"Prompt {prompt!r} is not of the form '<a> x <b> =': its operands cannot be located.")
    ids = batch.tokens[row].tolist()
    start = batch.attention_mask[row].tolist().index(1) + (1 if batch.bos else 0)
    ends, text = [], ""
    for k in range(start, len(ids)):  # decode growing prefixes: each token's end in the prompt's characters
        text = tokenizer.decode(ids[start:k + 1], clean_up_tokenization_spaces=False)
        ends.append(len(text))
        if len(text) >= len(prompt):
            break
    if text != prompt:
        raise PositionError(f"The tokens of prompt {prompt!r} decode to {text!r}: token positions cannot be mapped "
                            f"to its characters.")
    starts = [0, *ends[:-1]]

    def overlapping(span: tuple[int, int]) -> tuple[int, ...]:
        return tuple(start + k for k, (s, e) in enumerate(zip(starts, ends)) if s < span[1] and e > span[0])

    return overlapping(match.span(1)), overlapping(match.span(2))


def operand_positions(batch, tokenizer) -> OperandPositions:
    """The positions of 'a', 'b' and 'final' in a tokenized batch (a ``circuit.prompts.PromptBatch``).

    A token belongs to an operand when its characters overlap the operand's digits. Tokens after the prompt
    (an answer prefix the metric appends) belong to neither; 'final' is the batch's last position.

    Raises:
        PositionError: a prompt not of the form '<a> x <b> =', tokens that do not decode to their prompt, or
            prompts that place their operands at different positions (patching compares prompts position by
            position, so a named position must mean the same token in every prompt).
    """
    layouts: dict[tuple, list[str]] = {}
    for row, prompt in enumerate(batch.prompts):
        layouts.setdefault(_operand_layout(batch, row, tokenizer), []).append(prompt)
    if len(layouts) > 1:
        rows = "; ".join(f"a at {a}, b at {b}: {prompts[:3]}" for (a, b), prompts in layouts.items())
        raise PositionError(f"The prompts place their operands at different positions ({rows}), so a named position "
                            f"would not be one token across the batch. Use prompt sets whose operands have the same "
                            f"digit counts.")
    (a, b), = layouts
    return OperandPositions(a=a, b=b, final=batch.tokens.shape[1] - 1)


def positions_of(lab, ps) -> OperandPositions:
    """The named positions of a prompt set's clean prompts, checked to be those of its corrupted prompts."""
    clean, corrupted, _ = lab.inputs(ps)
    found = operand_positions(clean, lab.model.tokenizer)
    other = operand_positions(corrupted, lab.model.tokenizer)
    if other != found:
        raise PositionError(f"Clean prompts place their operands at {found}, corrupted prompts at {other}: patching "
                            f"one into the other would mix tokens.")
    return found


# --- the statistics (plain functions of values [..., batch], vectorized over leading resample dims) -----------


def toward_clean(x: torch.Tensor, n_cells: int, which: str) -> torch.Tensor:
    """``[..., n_cells + 1, batch]`` -> ``[...]``: rows are per-prompt effects already signed toward each
    prompt's clean run, then ``|clean - corrupted|``; the smallest (``"min"``) or largest (``"max"``) cell mean
    divided by the mean gap."""
    means = x.mean(-1)
    scaled = means[..., :n_cells] / means[..., n_cells:]
    return scaled.amin(-1) if which == "min" else scaled.amax(-1)


def fraction_of_first(n_first: int):
    """A statistic of ``[..., cell, batch]``: sum of |mean| over the first ``n_first`` cells / over the rest."""
    def statistic(x: torch.Tensor) -> torch.Tensor:
        magnitude = x.mean(-1).abs()
        return magnitude[..., :n_first].sum(-1) / magnitude[..., n_first:].sum(-1)

    return statistic


def cell_gap(x: torch.Tensor, named: list[tuple[int, tuple[int, ...]]], top_k: int) -> torch.Tensor:
    """``[..., layer, pos, batch]`` -> ``[...]``: the smallest, over ``named`` cells, of the cell's |mean| minus
    that of the best cell ranked beyond ``top_k`` of all layer x position cells (``circuit.measures.top_k_gap``).
    A named cell is ``(layer, positions)`` and takes its best position. > 0: every named cell is in the top k."""
    from circuit.measures import top_k_gap

    flat, n_pos = x.mean(-1).abs().flatten(-2), x.shape[-2]
    per_cell = [torch.stack([top_k_gap(flat, [layer * n_pos + p], top_k) for p in positions], -1).amax(-1)
                for layer, positions in named]
    return torch.stack(per_cell, -1).amin(-1)


def gaps(lab, ps) -> torch.Tensor:
    """Per prompt, ``clean - corrupted`` logit difference (float64)."""
    clean, corrupted = lab.logit_diffs(ps)
    return (clean - corrupted).double()


def informative(lab, ps) -> torch.Tensor:
    """``[batch]`` bool: the prompts whose clean and corrupted logit differences differ. The others carry no
    effect to compare (with the 'seed' metric, an answer perturbed by reordering its digits has the same tokens,
    whose logits add up the same in every run: every effect is 0, up to rounding)."""
    return gaps(lab, ps) != 0


def _toward_clean_rows(lab, ps, layers) -> torch.Tensor:
    """``[len(layers) + 1, batch]``: the attn_out effects of ``layers`` at the final position, each prompt's
    signed toward its clean run (times the sign of its ``clean - corrupted``), then ``|clean - corrupted|``;
    informative prompts only (:func:`informative`)."""
    final, keep = positions_of(lab, ps).final, informative(lab, ps)
    gap = gaps(lab, ps)[keep]
    effects = lab.effects(lab.patch(ps, "attn_out"))[list(layers), final][:, keep] * gap.sign()
    return torch.cat([effects, gap.abs()[None]])


def final_attention_extreme(lab, ps, layers, which: str):
    """Interval of the smallest (``"min"``) or largest (``"max"``) attn_out effect at the final position among
    ``layers``, toward the clean run, in units of the mean gap: per prompt ``patched - corrupted`` times the
    sign of ``clean - corrupted``, mean over prompts, divided by the mean ``|clean - corrupted|``."""
    return lab.ci(_toward_clean_rows(lab, ps, layers), lambda x: toward_clean(x, len(layers), which))


def final_attention_by_layer(lab, ps):
    """``[layer]`` interval of every layer's :func:`final_attention_extreme` (for discovery)."""
    layers = list(range(lab.model.bridge.cfg.n_layers))

    def statistic(x):
        means = x.mean(-1)
        return means[..., :-1] / means[..., -1:]

    return lab.ci(_toward_clean_rows(lab, ps, layers), statistic)


def operand_attention_fraction(lab, ps, early_until_layer: int):
    """Interval of sum over layers < early_until_layer and operand positions of |mean attn_out effect|,
    divided by the sum over all layers of |mean attn_out effect| at the final position (informative prompts)."""
    positions, keep = positions_of(lab, ps), informative(lab, ps)
    effects = lab.effects(lab.patch(ps, "attn_out"))[..., keep]  # [layer, pos, batch]
    early = effects[:early_until_layer, list(positions.operands)].flatten(0, 1)
    final = effects[:, positions.final]
    return lab.ci(torch.cat([early, final]), fraction_of_first(early.shape[0]))


def require_informative_prompts(lab, ps) -> None:
    """Raise ``circuit.decision.Inconclusive`` when fewer than ``[statistics] min_prompts`` prompts have clean and
    corrupted logit differences that differ: the attention statistics are computed over those prompts only."""
    from circuit.decision import Inconclusive

    keep, least = informative(lab, ps), lab.spec.statistics.min_prompts
    n = int(keep.sum())
    if n < least:
        raise Inconclusive(
            f"only {n} of {len(keep)} prompts have clean and corrupted logit differences that differ (at least "
            f"{least} needed); on the others every patching effect is 0, so there is nothing to locate")


def operand_attention_toward_clean(lab, ps, early_until_layer: int):
    """Interval of the early layers' attn_out effect at the operand positions, toward the clean run: per prompt
    the sum over layers < early_until_layer and operand positions of ``patched - corrupted`` times the sign of
    ``clean - corrupted``, mean over (informative) prompts, divided by the mean ``|clean - corrupted|``."""
    positions, keep = positions_of(lab, ps), informative(lab, ps)
    gap = gaps(lab, ps)[keep]
    effects = lab.effects(lab.patch(ps, "attn_out"))[:early_until_layer, list(positions.operands)][..., keep]
    total = effects.flatten(0, 1).sum(0) * gap.sign()
    return lab.ci(torch.stack([total, gap.abs()]), lambda x: toward_clean(x, 1, "min"))


def mlp_cell_gap(lab, ps, cells, top_k: int):
    """Interval of :func:`cell_gap` of ``cells`` (``NamedCell``) by |mean mlp_out effect| over all cells."""
    positions = positions_of(lab, ps)
    named = [(c.layer, positions.of(c.position)) for c in cells]
    return lab.ci(lab.effects(lab.patch(ps, "mlp_out")), lambda x: cell_gap(x, named, top_k))


# --- figures ---------------------------------------------------------------------------------------------


def _map(lab, prompt_set, site, highlight, caption):
    tokens = lab.tokens_of_first_prompt(prompt_set)
    effects = lab.effects(lab.patch(prompt_set, site)).mean(-1)
    return (lambda: heatmap(effects, title=f"{site} patching: patched - corrupted", xlabel="position (first prompt's token)",
                            ylabel="layer", xticklabels=tokens, colorbar_label="patched - corrupted logit diff",
                            highlight=highlight),
            caption)


def _attention_figures(lab, prompt_set, claim):
    positions = positions_of(lab, prompt_set)
    boxes = [(n.layer, positions.final) for n in claim.layers]
    return {"Attention output patching by layer x position (named layers boxed at the final position)": _map(
        lab, prompt_set, "attn_out", boxes,
        "If the claim holds, the final column holds most of the colour; a layer named positive is blue there, "
        "one named not positive is white or red; early rows are pale at the operand digits.")}


def _mlp_figures(lab, prompt_set, claim):
    positions = positions_of(lab, prompt_set)
    boxes = [(c.layer, p) for c in claim.cells for p in positions.of(c.position)]
    return {"MLP output patching by layer x position (named cells boxed)": _map(
        lab, prompt_set, "mlp_out", boxes,
        "If the claim holds, each boxed cell (for an operand: one of its boxed digits) is among the darkest cells.")}


# --- the claims ------------------------------------------------------------------------------------------

ATTN_STATEMENT = ("Attention by position: at the final position the named attention layers have their stated sign "
                  "(e.g. layer 22 positive, layer 3 not); early layers matter only slightly, on the operands, next to "
                  "the final position.")
MLP_STATEMENT = ("MLP by position: the named MLP cells (layer at a position, e.g. MLP 7 at the final token, MLP 0 at "
                 "the second operand) are among the top-k layer x position cells by |patching effect|.")


def _signed(claim, sign):
    return [n.layer for n in claim.layers if n.sign == sign]


def _measured(measure):
    """``measure`` on the informative prompts only (inconclusive when too few are)."""
    def on_informative(lab, ps):
        require_informative_prompts(lab, ps)
        return measure(lab, ps)

    return on_informative


def _signed_layers(claim, verdict, data, sign):
    layers = _signed(claim, sign)
    if not layers:
        pytest.skip(f"the spec names no attention layer {sign}")
    which, rule = ("min", Rule(">", 0)) if sign == "positive" else ("max", Rule("<=", 0))
    verdict.judge(data, f"{'smallest' if which == 'min' else 'largest'} attn_out patching effect at the final "
                        f"position, toward the clean run (mean / mean |clean - corrupted|), among layers {layers} "
                        f"(named {sign})",
                  _measured(lambda lab, ps: final_attention_extreme(lab, ps, layers, which)), rule,
                  figures=lambda lab, ps: _attention_figures(lab, ps, claim))


@pytest.mark.claim(id="attn-out-by-position", statement=ATTN_STATEMENT)
@given(data=st.data())
def test_named_attention_layers_are_positive_at_the_final_position(claim, verdict, data):
    _signed_layers(claim, verdict, data, "positive")


@pytest.mark.claim(id="attn-out-by-position", statement=ATTN_STATEMENT)
@given(data=st.data())
def test_named_attention_layers_are_not_positive_at_the_final_position(claim, verdict, data):
    _signed_layers(claim, verdict, data, "not_positive")


def _fraction_text(claim):
    return (f"sum |mean attn_out effect| over layers < {claim.early_until_layer} at the operand digits / sum over all "
            f"layers at the final position")


@pytest.mark.claim(id="attn-out-by-position", statement=ATTN_STATEMENT)
@given(data=st.data())
def test_early_attention_on_the_operands_matters_less_than_the_final_position(claim, verdict, data):
    verdict.judge(data, _fraction_text(claim),
                  _measured(lambda lab, ps: operand_attention_fraction(lab, ps, claim.early_until_layer)),
                  Rule("<=", claim.max_operand_fraction, "max_operand_fraction"),
                  figures=lambda lab, ps: _attention_figures(lab, ps, claim))


@pytest.mark.claim(id="attn-out-by-position", statement=ATTN_STATEMENT)
@given(data=st.data())
def test_early_attention_on_the_operands_matters_at_all(claim, verdict, data):
    """'Slightly matter': the early layers' attention effect at the operands, summed and signed toward the clean
    run, has an interval that excludes 0. (A sum of magnitudes would be above 0 for any noise at all.)"""
    verdict.judge(data, f"sum of attn_out effects over layers < {claim.early_until_layer} at the operand digits, "
                        f"toward the clean run (mean / mean |clean - corrupted|)",
                  _measured(lambda lab, ps: operand_attention_toward_clean(lab, ps, claim.early_until_layer)),
                  Rule("excludes", 0), figures=lambda lab, ps: _attention_figures(lab, ps, claim))


@pytest.mark.claim(id="mlp-out-by-position", statement=MLP_STATEMENT)
@given(data=st.data())
def test_named_mlp_cells_rank_in_top_k(claim, verdict, data):
    names = [f"MLP{c.layer}@{c.position}" for c in claim.cells]
    verdict.judge(data, f"smallest gap |mean mlp_out patching effect| of {names} minus that of the best cell ranked "
                        f"beyond top_k of all layer x position cells (> 0: every named cell is in the top "
                        f"{claim.top_k})",
                  lambda lab, ps: mlp_cell_gap(lab, ps, claim.cells, claim.top_k), Rule(">", 0),
                  figures=lambda lab, ps: _mlp_figures(lab, ps, claim))


# --- discovery -------------------------------------------------------------------------------------------


def _early_until(n_layers: int) -> int:
    """Discovery's early band: the first sixth of the layers, at least one (4 of Qwen2.5-0.5B's 24)."""
    return max(1, n_layers // 6)


@drafts("attn-out-by-position")
def _draft_attention(ctx: DraftContext):
    """Name every layer whose attention effect at the final position (toward the clean run) keeps one sign on every
    draft set (95% intervals) and clears 0 by the design margin on the held-out sets ('positive' above,
    'not_positive' below); bound the early operand fraction from the held-out sets, and state the claim only
    when the early operand effect clears 0 there too (its 'matters at all' test)."""
    try:
        per_layer = ctx.intervals(final_attention_by_layer)  # one interval of [layer] per draft set
    except (PositionError, TooFewPromptsError) as error:
        return None, f"not stated: {error}"
    lows = [min(float(i.low[layer]) for i in per_layer) for layer in range(ctx.n_layers)]
    highs = [max(float(i.high[layer]) for i in per_layer) for layer in range(ctx.n_layers)]
    spans = [f"L{layer} [{lows[layer]:.3g}, {highs[layer]:.3g}]" for layer in range(ctx.n_layers)]
    named = []
    for layer in range(ctx.n_layers):
        if not (lows[layer] > 0 or highs[layer] < 0):
            continue
        sign, which, kind = ("positive", "min", ">") if lows[layer] > 0 else ("not_positive", "max", "<=")
        measure = _measured(lambda lab, ps, layer=layer, which=which: final_attention_extreme(lab, ps, [layer], which))
        if ctx.supports(kind, measure, 0.0, f"L{layer} {sign}"):
            named.append(SignedLayer(Layer(layer), sign))
    if not named:
        return None, (f"not stated: no attention layer's effect at the final position (toward the clean run) keeps "
                      f"one sign on every draft set and clears 0 on the held-out sets (lowest CI low, highest CI high "
                      f"per layer on the draft sets): {spans}")
    early = _early_until(ctx.n_layers)

    def fraction(lab, ps):
        return operand_attention_fraction(lab, ps, early)

    if not ctx.supports("excludes", lambda lab, ps: operand_attention_toward_clean(lab, ps, early), 0.0,
                        "early operand effect"):
        return None, (f"not stated: the early (layers < {early}) attention effect at the operands does not clear 0 "
                      f"on the held-out sets ({ctx.log[ctx.claim_id]['early operand effect']})")
    claim = AttnOutByPositionClaim(
        tolerance=ctx.tolerance(fraction), layers=tuple(named), early_until_layer=LayerBound(early),
        max_operand_fraction=ctx.rule("<=", fraction, "max_operand_fraction").threshold)
    return claim, f"final-position effect toward the clean run on the draft sets: {spans}"


@drafts("mlp-out-by-position")
def _draft_mlp(ctx: DraftContext):
    """Name the top cells (an MLP layer at 'a', 'b' or 'final') by |mean mlp_out effect| on the draft sets, as many
    (up to ``n_heads_named``) as the held-out sets support: the gap between the weakest named cell and the best
    cell beyond ``top_k`` clears 0 by the design margin, with the smallest such ``top_k``."""
    try:
        positions = [positions_of(ctx.lab, ps) for ps in ctx.sets]
    except PositionError as error:
        return None, f"not stated: {error}"
    effects = [ctx.lab.effects(ctx.lab.patch(ps, "mlp_out")).mean(-1).abs() for ps in ctx.sets]
    n_cells = min(e.numel() for e in effects)
    bound = max(1, int(ctx.options.max_rank_fraction * n_cells))
    candidates = [NamedCell(Layer(layer), name) for layer in range(ctx.n_layers) for name in POSITION_NAMES]
    size = {c: sum(float(e[c.layer, list(p.of(c.position))].max()) for e, p in zip(effects, positions)) / len(effects)
            for c in candidates}
    order = sorted(candidates, key=lambda c: (-size[c], c.layer, POSITION_NAMES.index(c.position)))
    best = None
    for j in range(1, min(ctx.options.n_heads_named, bound) + 1):
        cells = tuple(order[:j])
        for k in range(j, bound + 1):
            if ctx.supports(">", lambda lab, ps, cells=cells, k=k: mlp_cell_gap(lab, ps, cells, k), 0.0,
                            f"top {j} cells in top_k={k}"):
                best = (cells, k)
                break
    if best is None:
        return None, (f"not stated: no MLP cell's |effect| exceeds that of the cell ranked beyond k (k <= {bound} of "
                      f"{n_cells}) by the design margin on the held-out sets")
    cells, k = best
    ctx.log[ctx.claim_id] = {}
    ctx.supports(">", lambda lab, ps: mlp_cell_gap(lab, ps, cells, k), 0.0, "top_k")
    claim = MlpOutByPositionClaim(tolerance=ctx.tolerance(lambda lab, ps: mlp_cell_gap(lab, ps, cells, k)),
                                  top_k=k, cells=cells)
    return claim, ""
