"""Direct logit attribution (DLA) and the logit lens: which components write the answer into the logits.

The logits are ``LN_final(resid) @ W_U + b_U``, where ``LN_final(x) = centre(x) / scale * w + b``
(``centre`` subtracts the mean for LayerNorm and is the identity for RMSNorm). With the final norm's scale
*frozen* at the value the run computed (``ln_final.hook_scale``, one number per row and position), the map
from the final residual stream to a logit difference is linear: ``<LN_final(x), d> = <x / scale,
centre(w * d)> + <b, d>``. The final residual stream is a sum of components (token and, where the model has
them, learned position embeddings, every attention layer's output, every MLP layer's output), and each
attention output is a sum of per-head results ``z_h @ W_O[h]`` plus the layer's bias ``b_O``. So a logit
difference splits *exactly* into one contribution per component: that is direct logit attribution. It is
"direct" because it counts only the path from a component straight to the logits, not its effect through
later layers.

A metric is read as a :class:`ResidualDirections`: for each prompt a list of *reads*, each a row and a
position of the token batch, a residual direction (``W_U[:, correct] - W_U[:, incorrect]`` from
``tokens_to_residual_directions``, through the final norm's weight and centring) and a weight, plus the
constant that ``b_U`` and the final norm's bias add. The value of the metric is ``sum_reads weight *
<resid[row, pos] / scale[row, pos], direction> + constant``:

- the seed-compatible and first-token logit differences (:class:`~circuit.metrics.LogitDiffMetric`) map
  exactly. The seed metric *averages* its answer slots (weights ``1/n_slots``); the source analysis'
  einsum summed them, reporting 2.746 for an actual 0.229 (12 slots: 0.229 x 12 = 2.75);
- the teacher-forced log-probability difference (:class:`~circuit.metrics.LogProbDiffMetric`) is not
  linear in the residual stream (``log p = logit - logsumexp(logits)``). DLA gives its *logit part*:
  ``sum_k logit_k[correct_k]`` on the correct rows minus the same on the incorrect rows, each answer token
  read at the position that predicts it. The ``logsumexp`` normalizers are left out, and with the
  bridge's centred unembedding the logit part is measured against the mean logit over the vocabulary.
  It is the logit part of the log-prob difference, not the log-prob difference.

Architectures. Nothing here is keyed on a model's name; what differs is read from the bridge:

- *the final norm's weight and bias*: TransformerLens folds them into ``W_U`` / ``b_U`` where the adapter
  supports it (the norm then holds ones and zeros); where it does not (OLMo-2: "norm weights stay
  unfolded"), the weight the norm still holds, ``1 + w`` for Gemma's offset convention, is applied to the
  directions, so the reads are exact either way;
- *LayerNorm* (GPT-2, GPT-NeoX): the centring is applied to the directions (``<centre(x), d> = <x,
  centre(d)>``), exact whether or not the writing weights were centred;
- *norms after the sub-layers* (Gemma-2, OLMo-2: ``resid += norm(attn(x))``): a head's write to the
  residual stream is its result through that norm with the norm's scale frozen (``ln1_post.hook_scale``),
  so heads and biases still sum to the attention output;
- *no bias* (Llama, Qwen3, ...): an absent ``b_O`` is zero;
- *parallel attention and MLP* (GPT-NeoX): there is no residual stream between them (no
  ``hook_resid_mid``), so the logit lens has one entry per layer;
- *a transform of the logits after the unembedding* (Gemma-2's soft-cap ``30 * tanh(logit / 30)``) is not
  linear, and DLA cannot split it: every value is then of the logits *before* the transform, which
  :attr:`ResidualDirections.logits_transform` and every result's ``kind`` say. :func:`attribution_target`
  gives the value they add up to (the metric read on the pre-transform logits, ``unembed.hook_out``).

Each decomposition is checked against the model's own cached activations at the positions read (the final
and post norms' outputs, the attention outputs, the residual stream): an architecture that writes to the
residual stream in a way not modelled here raises ``NotImplementedError`` naming the activation, rather
than returning attributions that do not add up.

Identities (tested in ``tests/test_attribution.py`` on every test architecture): the components of
:func:`layer_attribution` plus the constant sum to :func:`attribution_target` (the metric's value on the
run's logits, before any soft-cap); so do the heads, bias terms and the rest in :func:`head_attribution`;
per-head results sum over a layer's heads, with the bias term, to its attention output; the last entry of
:func:`logit_lens` is the same value (the frozen scale is the scale of the final residual, so it is exact
there; earlier entries of the frozen lens are the DLA of the stream so far, and with ``ln="recompute"``
each entry is normalized by its own scale, as if the model stopped there).

Precision: whatever the model's dtype, every read is computed in float32 from the cached activations
(directions, the frozen scale, per-head products and the sums), so a bfloat16 or float16 model's
attributions carry only the rounding of its activations, not that of the arithmetic here. The model's
own logits are still rounded to its dtype, which is why completeness tolerances are per dtype
(``circuit.spec.PerDtype``).

Per-head results are computed from ``hook_z`` and ``W_O`` at the positions read, rather than with
``ActivationCache.stack_head_results`` (which works on the bridge, but materializes every head at every
position and writes ``hook_result`` entries into the caller's cache); the tests check both agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuit.metrics import AnswerMetric, LogitDiffMetric, LogProbDiffMetric
from circuit.spec import parse_head as parse_label

__all__ = [
    "HeadAttribution",
    "LayerAttribution",
    "LogitLens",
    "ResidualDirections",
    "attribution_target",
    "direct_patch_effects",
    "head_attribution",
    "head_label",
    "head_results",
    "layer_attribution",
    "logit_lens",
    "parse_head",
    "residual_directions",
    "run_cache",
]

TopBy = str
"""How top_k ranks: ``"abs"`` (largest magnitude), ``"positive"`` or ``"negative"`` (checked at run time)."""


def _bridge(model: Any) -> Any:
    """The TransformerBridge of a ``LoadedModel``, or ``model`` itself if it is already one."""
    return getattr(model, "bridge", model)


def head_label(layer: int, head: int) -> str:
    """``L{layer}H{head}``, the label of a head."""
    return f"L{layer}H{head}"


def parse_head(head: str | tuple[int, int], n_layers: int, n_heads: int) -> tuple[int, int]:
    """``"L3H2"`` or ``(3, 2)`` -> ``(3, 2)``, checked against the model's size."""
    if isinstance(head, str):
        parsed = parse_label(head.strip().upper())
    else:
        parsed = (int(head[0]), int(head[1]))
    if not (0 <= parsed[0] < n_layers and 0 <= parsed[1] < n_heads):
        raise ValueError(f"Head {head!r} does not exist: the model has layers 0..{n_layers - 1} and heads "
                         f"0..{n_heads - 1}.")
    return parsed


def run_cache(model: Any, cache_or_tokens: Any) -> Any:
    """An ``ActivationCache``: the one given, or the cache of a no-grad run on the tokens given."""
    if isinstance(cache_or_tokens, Tensor):
        with torch.no_grad():
            _, cache = _bridge(model).run_with_cache(cache_or_tokens)
        return cache
    if not hasattr(cache_or_tokens, "cache_dict"):
        raise TypeError(f"Expected an ActivationCache or a token tensor, got {type(cache_or_tokens).__name__}. "
                        f"Pass bridge.run_with_cache(tokens)[1] or the tokens themselves.")
    return cache_or_tokens


def _refuse_non_finite_run(bridge: Any, cache: Any) -> None:
    """Raise :class:`~circuit.stats.NonFiniteError` when the run's final residual stream is NaN or infinite,
    naming the model's first parameter (HF name) that is not finite: a NaN weight makes every attribution
    NaN, and NaN ranks nowhere."""
    from circuit.stats import check_finite

    final = cache["resid_post", bridge.cfg.n_layers - 1]
    if bool(torch.isfinite(final).all()):
        return
    culprit = next((f"parameter {name.replace('._original_component', '')} has {int((~torch.isfinite(p)).sum())} "
                    f"NaN or infinite entries" for name, p in getattr(bridge, "original_model", bridge).named_parameters()
                    if not bool(torch.isfinite(p).all())),
                   "every parameter is finite, so the run overflowed")
    check_finite(final, "The run's final residual stream [batch, pos, d_model] is",
                 hint=f"no attribution can be computed: {culprit}; check the model's weights and the dtype "
                      f"(float32 recommended)")


def _top_k(mean: Tensor, labels: Sequence[str], k: int, by: TopBy) -> list[tuple[str, float]]:
    """The entries surely among the ``k`` largest by ``by``, largest first, with their signed values.

    Ties are ranked honestly: an entry's rank is the number of entries whose key is at least its own, itself
    included (strictly larger + tied), and only entries of rank <= k are returned. Entries tied across the
    k-th place are all left out (fewer than ``k`` come back), so that all-zero values rank nothing first.
    A value that is NaN or infinite raises :class:`~circuit.stats.NonFiniteError`: it cannot be ranked.
    """
    from circuit.stats import check_finite

    if by not in ("abs", "positive", "negative"):
        raise ValueError(f"by={by!r}: use 'abs' (largest magnitude), 'positive' or 'negative'.")
    if k < 0:
        raise ValueError(f"k={k} must be non-negative.")
    check_finite(mean, "The values to rank are", hint="cannot rank them; check the model's weights and the dtype "
                                                       "(float32 recommended)")
    key = {"abs": mean.abs(), "positive": mean, "negative": -mean}[by]
    rank = (key[None, :] >= key[:, None]).sum(-1)  # pessimistic: strictly larger + tied, itself included
    order = torch.argsort(key, descending=True, stable=True)
    return [(labels[int(i)], float(mean[int(i)])) for i in order if int(rank[i]) <= k]


def _parameter(module: Any, name: str) -> Tensor | None:
    """``module.<name>`` detached in float32, or None where it is absent (TransformerLens 4 raises
    AttributeError for the biases of bias-free projections; an absent bias is a zero bias)."""
    try:
        value = getattr(module, name, None)
    except AttributeError:
        return None
    return None if value is None else value.detach().float()


@dataclass(frozen=True)
class _Norm:
    """A normalization as the run applies it: ``centre(x) / scale * weight + bias``, in float32.

    ``scale`` is the norm's ``hook_scale`` (frozen at the run's value); ``weight`` is what the norm still
    multiplies by after TransformerLens' folding (``1 + w`` for Gemma's offset convention), None for none.
    """

    name: str
    centred: bool
    weight: Tensor | None
    bias: Tensor | None
    eps: float

    def centre(self, x: Tensor) -> Tensor:
        return x - x.mean(-1, keepdim=True) if self.centred else x

    def linear(self, x: Tensor, scale: Tensor) -> Tensor:
        """The norm's linear part at a frozen scale (no bias): ``centre(x) / scale * weight``."""
        x = self.centre(x.float()) / scale.float()
        return x if self.weight is None else x * self.weight

    def read(self, direction: Tensor) -> Tensor:
        """The direction ``d'`` with ``<linear(x, scale), d> = <x / scale, d'>``: ``centre(weight * d)``."""
        return self.centre(direction if self.weight is None else direction * self.weight)

    def offset(self, direction: Tensor) -> Tensor:
        """``<bias, d>``: what the norm's bias adds to a read (zero without a bias)."""
        if self.bias is None:
            return torch.zeros(direction.shape[:-1], dtype=direction.dtype, device=direction.device)
        return direction @ self.bias

    def recompute_scale(self, x: Tensor) -> Tensor:
        """The scale the norm would compute for ``x``: ``sqrt(mean(centre(x)^2) + eps)``."""
        return (self.centre(x.float()).pow(2).mean(-1, keepdim=True) + self.eps).sqrt()


def _norm(bridge: Any, path: str) -> _Norm:
    """The normalization at ``path`` of the bridge (``ln_final``, ``blocks.0.ln1_post``) as a :class:`_Norm`."""
    module = bridge
    for part in path.split("."):
        try:
            module = module[int(part)] if part.isdigit() else getattr(module, part)
        except (AttributeError, IndexError):
            raise NotImplementedError(f"This bridge has no {path}: circuit.attribution reads the logits as a norm "
                                      f"of the final residual stream and cannot attribute without it.") from None
    if not hasattr(module, "uses_rms_norm") or not hasattr(module, "hook_scale"):
        raise NotImplementedError(
            f"{path} of this bridge is a {type(module).__name__}, not a TransformerLens normalization bridge "
            f"with a hook_scale: circuit.attribution cannot freeze its scale, so it cannot attribute through it.")
    component = getattr(module, "original_component", None)
    weight = None if isinstance(component, torch.nn.Identity) else _parameter(component, "weight")
    if weight is not None and getattr(module, "uses_weight_offset", False):
        weight = 1.0 + weight
    bias = None if module.uses_rms_norm else _parameter(component, "bias")
    eps = getattr(component, "eps", None)
    if eps is None:
        eps = getattr(component, "variance_epsilon", None)
    if eps is None:
        eps = getattr(bridge.cfg, "eps", 1e-5)
    return _Norm(path, not module.uses_rms_norm, weight, bias, float(eps))


def _check_reproduces(what: str, computed: Tensor, cached: Tensor, fix: str, terms: int = 1) -> None:
    """Raise unless ``computed`` (float32) reproduces the model's own cached activation ``cached``.

    The bound is ``32 + terms`` rounding units of the cache's dtype relative to the activation's size (the
    model rounds once per term it adds up): far above the float32 arithmetic of a correct decomposition
    (~1e-7), far below a dropped weight, norm or bias.
    """
    units = 32 + terms
    bound = units * torch.finfo(cached.dtype).eps * (1.0 + float(cached.abs().max()))
    error = float((computed.float() - cached.float()).abs().max())
    if not error <= bound:
        raise NotImplementedError(
            f"Direct logit attribution does not reproduce {what}: max abs error {error:.3g} > {bound:.3g} "
            f"({units} rounding units of {cached.dtype}). The model writes to the residual stream in a way "
            f"circuit.attribution does not model, so its attributions would not add up. {fix}")


def _logits_transform(bridge: Any) -> str | None:
    """What the model does to the logits after the unembedding (soft-cap, scaling), in words, or None."""
    from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter

    done = []
    cap = getattr(bridge.cfg, "output_logits_soft_cap", None)
    if cap is not None and cap > 0:
        done.append(f"final-logit soft-cap {cap:g} * tanh(logit / {cap:g})")
    adapter = getattr(bridge, "adapter", None)
    own = getattr(type(adapter), "apply_output_logits_transform", None)
    if adapter is not None and own is not None and own is not ArchitectureAdapter.apply_output_logits_transform:
        done.append(f"the output-logit transform of {type(adapter).__name__}")
    return " and ".join(done) or None


@dataclass(frozen=True, eq=False)
class ResidualDirections:
    """A metric as linear reads of the residual stream (see the module docstring).

    For prompt ``b`` and read ``k``: ``value[b] = sum_k weights[b, k] * <resid[rows[b, k], positions[b, k]]
    / scale, directions[b, k]> + constant[b]``, where ``directions`` is ``W_U[:, correct] - W_U[:,
    incorrect]`` (no token subtracted where ``incorrect == -1``) through the final norm's weight and
    centring, and ``constant`` collects ``b_U`` and the final norm's bias the same way.

    Attributes:
        rows: the row of the token batch each read is made on.
        positions: the position each read is made at.
        correct: the token whose logit is added.
        incorrect: the token whose logit is subtracted, or -1 for none.
        weights: the weight of each read (0 for padding reads).
        directions: the residual direction of each read.
        constant: the unembedding bias' (and the final norm bias') share of the value, per prompt.
        kind: what the value is, in words.
        logits_transform: what the model does to its logits after the unembedding that is not linear
            (Gemma-2's soft-cap), or None. When set, every value is of the logits *before* it.
    """

    rows: Int[Tensor, "batch read"]
    positions: Int[Tensor, "batch read"]
    correct: Int[Tensor, "batch read"]
    incorrect: Int[Tensor, "batch read"]
    weights: Float[Tensor, "batch read"]
    directions: Float[Tensor, "batch read d_model"]
    constant: Float[Tensor, " batch"]
    kind: str
    logits_transform: str | None = None

    def read_logits(self, logits: Float[Tensor, "row pos d_vocab"]) -> Float[Tensor, " batch"]:
        """The same reads made on the logits: ``sum_k weights * (logit[correct] - logit[incorrect])``, in float32."""
        picked = logits[self.rows, self.positions].float()
        plus = picked.gather(-1, self.correct[..., None])[..., 0]
        minus = picked.gather(-1, self.incorrect.clamp(min=0)[..., None])[..., 0]
        minus = torch.where(self.incorrect >= 0, minus, torch.zeros_like(minus))
        return ((plus - minus) * self.weights.to(plus)).sum(-1)

    def gather(
        self, stack: Float[Tensor, "*component row pos d_model"]
    ) -> Float[Tensor, "*component batch read d_model"]:
        """The residual vectors at the positions read (any leading component dimensions kept)."""
        return stack[..., self.rows, self.positions, :]

    def project(
        self, vectors: Float[Tensor, "*component batch read d_model"], scale: Float[Tensor, "... 1"]
    ) -> Float[Tensor, "*component batch"]:
        """``sum_k weights * <vectors / scale, direction>`` for gathered vectors (the constant excluded).

        ``scale`` is the norm's scale at each read (``[batch, read, 1]``), or one per component too. Computed
        in float32 whatever the dtype of ``vectors``.
        """
        return einops.einsum(vectors.float() / scale.float(), self.directions.float(), self.weights.float(),
                             "... batch read d_model, batch read d_model, batch read -> ... batch")


def _direction_tensors(
    bridge: Any, correct: Tensor, incorrect: Tensor, weights: Tensor
) -> tuple[Tensor, Tensor]:
    def directions(tokens: Tensor) -> Tensor:
        out = bridge.tokens_to_residual_directions(tokens.clamp(min=0)).float()
        return out.reshape(*tokens.shape, -1)  # it squeezes a single token to [d_model]

    with torch.no_grad():
        plus = directions(correct)
        minus = directions(incorrect) * (incorrect >= 0)[..., None]
        unembedded = plus - minus  # batch read d_model: the direction of the final norm's output
        final = _norm(bridge, "ln_final")
        offset = final.offset(unembedded)  # batch read: the final norm's bias, read
        b_u = _parameter(bridge, "b_U")
        if b_u is not None:
            subtracted = b_u[incorrect.clamp(min=0)] * (incorrect >= 0)
            offset = offset + b_u[correct] - subtracted
        constant = (offset * weights.to(offset)).sum(-1)
    return final.read(unembedded).detach(), constant.detach()


def residual_directions(model: Any, metric: AnswerMetric) -> ResidualDirections:
    """The residual directions of ``metric`` (see :class:`ResidualDirections` and the module docstring).

    A :class:`~circuit.metrics.LogitDiffMetric` (seed-compatible or first-token) maps exactly; a
    :class:`~circuit.metrics.LogProbDiffMetric` (teacher-forced) maps to the logit part of its log-prob
    difference: each answer token's logit on the correct rows ``[0, B)`` minus on the incorrect rows
    ``[B, 2B)``.
    """
    bridge = _bridge(model)
    device = bridge.W_U.device
    if isinstance(metric, LogitDiffMetric):
        batch = metric.positions.shape[0]
        rows = torch.arange(batch)[:, None].expand_as(metric.positions).clone()
        positions, correct, incorrect = metric.positions, metric.correct, metric.incorrect
        weights = metric.weights.float()
        kind = "logit difference (exact)"
    elif isinstance(metric, LogProbDiffMetric):
        n_rows = metric.positions.shape[0]
        if n_rows % 2:
            raise ValueError(f"A teacher-forced metric has rows [prompt+correct; prompt+incorrect], an even "
                             f"number, but this one has {n_rows}. Build it with teacher_forced_logprob_diff().")
        half, reads = n_rows // 2, metric.positions.shape[1]
        own = torch.arange(half)[:, None].expand(half, reads)
        rows = torch.cat([own, own + half], dim=1)
        positions = torch.cat([metric.positions[:half], metric.positions[half:]], dim=1)
        correct = torch.cat([metric.targets[:half], metric.targets[half:]], dim=1)
        incorrect = torch.full_like(correct, -1)
        weights = torch.cat([metric.mask[:half], -metric.mask[half:]], dim=1).float()
        kind = "teacher-forced logit part of the log-prob difference (logsumexp normalizers excluded)"
    else:
        raise TypeError(f"No residual directions for a {type(metric).__name__}: use a LogitDiffMetric "
                        f"(seed_logit_diff, first_token_logit_diff) or a LogProbDiffMetric "
                        f"(teacher_forced_logprob_diff).")
    rows, positions = rows.to(device), positions.to(device)
    correct, incorrect, weights = correct.to(device), incorrect.to(device), weights.to(device)
    directions, constant = _direction_tensors(bridge, correct, incorrect, weights)
    transform = _logits_transform(bridge)
    if transform is not None:
        kind += f", of the logits before the model's {transform} (not linear: DLA cannot split it)"
    return ResidualDirections(rows, positions, correct, incorrect, weights.to(directions.dtype), directions,
                              constant, kind, transform)


def _cached(cache: Any, name: str, why: str) -> Tensor:
    try:
        return cache[name]
    except KeyError:
        raise KeyError(f"The cache has no {name!r}: DLA needs {why}. Cache the whole run "
                       f"(bridge.run_with_cache(tokens) without names_filter).") from None


def _final_scale(bridge: Any, cache: Any, directions: ResidualDirections) -> Float[Tensor, "batch read 1"]:
    """The final norm's cached scale at the reads, after checking that the norm is what the reads assume."""
    rows, positions = directions.rows, directions.positions
    scale = _cached(cache, "ln_final.hook_scale", "the final norm's frozen scale")[rows, positions]
    final = _norm(bridge, "ln_final")
    normalized = final.linear(_cached(cache, "ln_final.hook_in", "the final norm's input")[rows, positions], scale)
    if final.bias is not None:
        normalized = normalized + final.bias
    _check_reproduces("the final norm's output (ln_final.hook_out)", normalized,
                      _cached(cache, "ln_final.hook_out", "the final norm's output")[rows, positions],
                      f"Its norm is a {type(bridge.ln_final.original_component).__name__}.")
    return scale.float()


def attribution_target(model: Any, cache_or_tokens: Any, directions: ResidualDirections) -> Float[Tensor, " batch"]:
    """The value the attributions add up to exactly: the metric's reads on the unembedding's output.

    That is the metric's value on the run's logits (its logit part, for a teacher-forced log-prob
    difference), except where the model transforms its logits after the unembedding
    (``directions.logits_transform``, Gemma-2's soft-cap): then it is the metric on the logits before the
    transform (``unembed.hook_out``), which is what DLA splits.
    """
    cache = run_cache(model, cache_or_tokens)
    _check_shape(cache, directions)
    with torch.no_grad():
        return directions.read_logits(_cached(cache, "unembed.hook_out", "the logits before any transform"))


def _check_shape(cache: Any, directions: ResidualDirections) -> None:
    rows, pos = cache["hook_embed"].shape[:2]
    if int(directions.rows.max()) + 1 != rows or int(directions.positions.max()) >= pos:
        raise ValueError(f"The metric reads a batch of {int(directions.rows.max()) + 1} rows at positions up to "
                         f"{int(directions.positions.max())}, but the cache holds {rows} rows x {pos} positions. "
                         f"Run the model on the metric's own tokens (MetricInputs.tokens for the teacher-forced "
                         f"and first-token metrics).")


@dataclass(frozen=True, eq=False)
class LogitLens:
    """The metric read from the accumulated residual stream after each sub-layer.

    Attributes:
        values: per entry (``0_pre``, ``0_mid``, ..., ``final_post``; no ``_mid`` entries for a model with
            parallel attention and MLP) and prompt, the value including the constant.
        labels: the entries' labels, as ``ActivationCache.accumulated_resid`` gives them.
        ln: ``"frozen"`` (every entry divided by the final residual's scale: linear, entry differences are
            the DLA of the sub-layers) or ``"recompute"`` (each entry normalized by its own scale).
        kind: what the values are, in words (:attr:`ResidualDirections.kind`).
    """

    values: Float[Tensor, "component batch"]
    labels: tuple[str, ...]
    ln: str
    kind: str = ""

    @property
    def mean(self) -> Float[Tensor, " component"]:
        return self.values.mean(-1)


def _parallel(bridge: Any) -> bool:
    """Whether attention and MLP read the same residual stream (GPT-NeoX): then there is no resid_mid."""
    return bool(getattr(bridge.cfg, "parallel_attn_mlp", False))


def logit_lens(
    model: Any, cache_or_tokens: Any, directions: ResidualDirections, *, incl_mid: bool | None = None,
    ln: str = "frozen",
) -> LogitLens:
    """The metric read from the accumulated residual (``accumulated_resid``), final norm applied.

    With ``ln="frozen"`` the final residual's cached scale is applied to every entry (the source analysis'
    choice, ``apply_ln_to_stack(layer=-1)``); with ``"recompute"`` each entry is normalized by its own
    scale (``sqrt(mean(centre(x)^2) + eps)``, what the final norm would do if the model stopped there).
    The last entry is :func:`attribution_target` in both. ``incl_mid`` (default: where the model has a
    stream between attention and MLP) adds the entries after each attention layer.
    """
    if ln not in ("frozen", "recompute"):
        raise ValueError(f"ln={ln!r}: use 'frozen' (the final residual's cached scale) or 'recompute'.")
    bridge = _bridge(model)
    if incl_mid is None:
        incl_mid = not _parallel(bridge)
    elif incl_mid and _parallel(bridge):
        raise ValueError("incl_mid=True, but this model computes attention and MLP in parallel from the same "
                         "residual stream: there is no stream between them (no hook_resid_mid). Use "
                         "incl_mid=False (or leave it to the default).")
    cache = run_cache(model, cache_or_tokens)
    _check_shape(cache, directions)
    with torch.no_grad():
        stack, labels = cache.accumulated_resid(layer=-1, incl_mid=incl_mid, return_labels=True)
        vectors = directions.gather(stack).float()
        scale = _final_scale(bridge, cache, directions)
        if ln == "recompute":
            scale = _norm(bridge, "ln_final").recompute_scale(vectors)
        values = directions.project(vectors, scale) + directions.constant
    return LogitLens(values.detach(), tuple(labels), ln, directions.kind)


@dataclass(frozen=True, eq=False)
class LayerAttribution:
    """DLA per component of the final residual stream.

    Attributes:
        values: per component (``embed``, ``pos_embed`` where the model has learned positions,
            ``{l}_attn_out`` (with its bias), ``{l}_mlp_out``) and prompt.
        labels: the components' labels, as ``ActivationCache.decompose_resid`` gives them.
        constant: the unembedding bias' (and final norm bias') share, per prompt.
        kind: what the values are, in words (:attr:`ResidualDirections.kind`).
    """

    values: Float[Tensor, "component batch"]
    labels: tuple[str, ...]
    constant: Float[Tensor, " batch"]
    kind: str = ""

    @property
    def mean(self) -> Float[Tensor, " component"]:
        """Each component's value averaged over prompts."""
        return self.values.mean(-1)

    @property
    def total(self) -> Float[Tensor, " batch"]:
        """The components plus the constant: :func:`attribution_target` (with the frozen final scale)."""
        return self.values.sum(0) + self.constant

    def top_k(self, k: int, *, by: TopBy = "abs") -> list[tuple[str, float]]:
        """The ``k`` components with the largest mean value (``by``: abs, positive, negative), signed."""
        return _top_k(self.mean, self.labels, k, by)


def layer_attribution(model: Any, cache_or_tokens: Any, directions: ResidualDirections) -> LayerAttribution:
    """DLA of the embeddings, each attention layer and each MLP layer (``decompose_resid``)."""
    bridge = _bridge(model)
    cache = run_cache(model, cache_or_tokens)
    _check_shape(cache, directions)
    with torch.no_grad():
        stack, labels = cache.decompose_resid(layer=-1, return_labels=True)
        vectors = directions.gather(stack).float()
        final = _cached(cache, "ln_final.hook_in", "the final residual stream")
        _check_reproduces("the final residual stream (ln_final.hook_in) as the sum of its components", vectors.sum(0),
                          final[directions.rows, directions.positions], f"Components: {labels}.", len(labels))
        values = directions.project(vectors, _final_scale(bridge, cache, directions))
    return LayerAttribution(values.detach(), tuple(labels), directions.constant, directions.kind)


def direct_patch_effects(model: Any, clean_cache: Any, corrupted_cache: Any,
                         directions: ResidualDirections) -> LayerAttribution:
    """The *direct* effect of patching each component's clean output into the corrupted run at the reads.

    For component ``c`` (``decompose_resid``'s labels), ``<(c_clean - c_corrupted) / scale, direction>`` at
    the positions the metric reads, with the corrupted run's final-norm scale frozen: what the patch changes
    through the path from ``c`` straight to the logits, leaving out everything it changes in later layers.
    Activation patching of ``c`` at the read position measures the *total* effect (direct plus through later
    layers; ``circuit.patching``); the difference is the indirect effect. Both runs must be of the same token
    shape (the metric reads the same positions in both). ``constant`` is zero (the bias terms cancel).
    """
    bridge = _bridge(model)
    clean, corrupted = run_cache(model, clean_cache), run_cache(model, corrupted_cache)
    _check_shape(clean, directions)
    _check_shape(corrupted, directions)
    with torch.no_grad():
        stacks = [cache.decompose_resid(layer=-1, return_labels=True) for cache in (clean, corrupted)]
        (clean_stack, labels), (corrupted_stack, _) = stacks
        moved = directions.gather(clean_stack).float() - directions.gather(corrupted_stack).float()
        values = directions.project(moved, _final_scale(bridge, corrupted, directions))
    return LayerAttribution(values.detach(), tuple(labels), torch.zeros_like(directions.constant), directions.kind)


def _heads_at(
    bridge: Any, cache: Any, layer: int, rows: Tensor, positions: Tensor
) -> tuple[Float[Tensor, "head *index d_model"], Float[Tensor, "*index d_model"]]:
    """What each head of ``layer`` and the layer's bias term write to the residual stream at
    ``(rows, positions)``, in float32, checked to sum to the layer's cached attention output there.

    A head writes ``z_h @ W_O[h]``; the bias term is ``b_O`` (zero where absent). Where the model normalizes
    the attention output before adding it (``ln1_post``: Gemma-2, OLMo-2), both go through that norm with
    its scale frozen, and the norm's bias joins the bias term.
    """
    attn = bridge.blocks[layer].attn
    z = cache["z", layer][rows, positions].float()  # *index head d_head
    heads = einops.einsum(z, attn.W_O.float(), "... head d_head, head d_head d_model -> head ... d_model")
    b_o = _parameter(attn, "b_O")
    bias = torch.zeros(heads.shape[1:], device=heads.device) if b_o is None else b_o.expand(heads.shape[1:])
    if "ln1_post" in bridge.blocks[layer]._modules:
        post = _norm(bridge, f"blocks.{layer}.ln1_post")
        scale = _cached(cache, f"blocks.{layer}.ln1_post.hook_scale", "the post-attention norm's scale")
        scale = scale[rows, positions]
        heads, bias = post.linear(heads, scale), post.linear(bias, scale)
        if post.bias is not None:
            bias = bias + post.bias
    _check_reproduces(f"layer {layer}'s attention output (hook_attn_out) as its heads plus bias",
                      heads.sum(0) + bias, cache["attn_out", layer][rows, positions],
                      f"Block {layer}'s sub-modules: {list(bridge.blocks[layer]._modules)}.", heads.shape[0])
    return heads, bias


def head_results(model: Any, cache: Any, layer: int) -> Float[Tensor, "batch pos head d_model"]:
    """What each head of ``layer`` writes to the residual stream, float32: ``z[..., h, :] @ W_O[h]``.

    Without the bias term (``b_O``); where the model normalizes the attention output before adding it
    (Gemma-2, OLMo-2), through that norm with its cached scale frozen. With the bias term, the heads sum to
    the layer's attention output (checked).
    """
    bridge = _bridge(model)
    batch, pos = cache["z", layer].shape[:2]
    device = cache["z", layer].device
    rows = torch.arange(batch, device=device)[:, None].expand(batch, pos)
    positions = torch.arange(pos, device=device)[None, :].expand(batch, pos)
    with torch.no_grad():
        heads, _ = _heads_at(bridge, cache, layer, rows, positions)
    return einops.rearrange(heads, "head batch pos d_model -> batch pos head d_model").detach()


@dataclass(frozen=True, eq=False)
class HeadAttribution:
    """DLA per attention head, with the terms that complete the sum.

    Attributes:
        values: per layer, head and prompt.
        attn_bias: each attention layer's bias term (``b_O``, through a post-attention norm where the model
            has one, plus that norm's bias), per prompt; zero for a bias-free model.
        rest: embeddings + every MLP + the constant, per prompt.
        kind: what the values are, in words (:attr:`ResidualDirections.kind`).
    """

    values: Float[Tensor, "layer head batch"]
    attn_bias: Float[Tensor, "layer batch"]
    rest: Float[Tensor, " batch"]
    kind: str = ""

    @property
    def labels(self) -> tuple[str, ...]:
        """``L{layer}H{head}`` in the order of ``values.flatten(0, 1)``."""
        n_layers, n_heads = self.values.shape[:2]
        return tuple(head_label(l, h) for l in range(n_layers) for h in range(n_heads))

    @property
    def mean(self) -> Float[Tensor, "layer head"]:
        """Each head's value averaged over prompts."""
        return self.values.mean(-1)

    @property
    def total(self) -> Float[Tensor, " batch"]:
        """Heads + bias terms + rest: :func:`attribution_target` (with the frozen final scale)."""
        return self.values.sum((0, 1)) + self.attn_bias.sum(0) + self.rest

    def top_k(self, k: int, *, by: TopBy = "abs") -> list[tuple[str, float]]:
        """The ``k`` heads with the largest mean value (``by``: abs, positive, negative), signed."""
        return _top_k(self.mean.flatten(), self.labels, k, by)


def head_attribution(model: Any, cache_or_tokens: Any, directions: ResidualDirections) -> HeadAttribution:
    """DLA of every head of every layer, ``[layer, head, batch]``, with the bias terms and the rest kept apart.

    Per-head results are computed at the positions read from ``hook_z`` and ``W_O`` (:func:`head_results`);
    ``rest`` is computed from the embedding and MLP outputs, not as a remainder, so that ``total`` is a check.
    """
    bridge = _bridge(model)
    cache = run_cache(model, cache_or_tokens)
    n_layers = bridge.cfg.n_layers
    _check_shape(cache, directions)
    _refuse_non_finite_run(bridge, cache)
    with torch.no_grad():
        scale = _final_scale(bridge, cache, directions)
        heads, biases = [], []
        for layer in range(n_layers):
            result, bias = _heads_at(bridge, cache, layer, directions.rows, directions.positions)
            heads.append(directions.project(result, scale))
            biases.append(directions.project(bias, scale))
        others = cache.decompose_resid(layer=-1, mode="mlp")  # embeddings and every MLP
        rest = directions.project(directions.gather(others).float(), scale).sum(0) + directions.constant
    return HeadAttribution(torch.stack(heads).detach(), torch.stack(biases).detach(), rest.detach(), directions.kind)
