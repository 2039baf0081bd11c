"""Direct logit attribution (DLA) and the logit lens: which components write the answer into the logits.

The logits are ``LN_final(resid) @ W_U + b_U``. With the final normalization's scale *frozen* at the
value the run computed (``ln_final.hook_scale``, one number per row and position; our bridges fold the
norm's weight into ``W_U``, so the norm is a division by that scale and nothing else), the map from the
final residual stream to a logit difference is linear. The final residual stream is a sum of components
(token embedding, every attention layer's output, every MLP layer's output), and each attention output is
a sum of per-head results ``z_h @ W_O[h]`` plus the layer's bias ``b_O``. So a logit difference splits
*exactly* into one contribution per component: that is direct logit attribution. It is "direct" because
it counts only the path from a component straight to the logits, not its effect through later layers.

A metric is read as a :class:`ResidualDirections`: for each prompt a list of *reads*, each a row and a
position of the token batch, a residual direction (``W_U[:, correct] - W_U[:, incorrect]``, from
``tokens_to_residual_directions``) and a weight, plus the constant that ``b_U`` adds. The value of the
metric is ``sum_reads weight * <resid[row, pos] / scale[row, pos], direction> + constant``:

- the seed-compatible and first-token logit differences (:class:`~circuit.metrics.LogitDiffMetric`) map
  exactly. The seed metric *averages* its answer slots (weights ``1/n_slots``); the source analysis'
  einsum summed them, reporting 2.746 for an actual 0.229 (12 slots: 0.229 x 12 = 2.75);
- the teacher-forced log-probability difference (:class:`~circuit.metrics.LogProbDiffMetric`) is not
  linear in the residual stream (``log p = logit - logsumexp(logits)``). DLA gives its *logit part*:
  ``sum_k logit_k[correct_k]`` on the correct rows minus the same on the incorrect rows, each answer token
  read at the position that predicts it. The ``logsumexp`` normalizers are left out, and with the
  bridge's centred unembedding the logit part is measured against the mean logit over the vocabulary.
  It is the logit part of the log-prob difference, not the log-prob difference.

Identities (tested in ``tests/test_attribution.py``): the components of :func:`layer_attribution` plus
the constant sum to the metric's value on the run's logits; so do the heads, ``b_O`` terms and the rest in
:func:`head_attribution`; per-head results sum over a layer's heads to its attention output minus ``b_O``;
the last entry of :func:`logit_lens` is the metric's value (the frozen scale is the scale of the final
residual, so it is exact there; earlier entries of the frozen lens are the DLA of the stream so far, and
with ``ln="recompute"`` each entry is normalized by its own RMS, as if the model stopped there).

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


@dataclass(frozen=True, eq=False)
class ResidualDirections:
    """A metric as linear reads of the residual stream (see the module docstring).

    For prompt ``b`` and read ``k``: ``value[b] = sum_k weights[b, k] * <resid[rows[b, k], positions[b, k]]
    / scale, directions[b, k]> + constant[b]``, where ``directions = W_U[:, correct] - W_U[:, incorrect]``
    (no token subtracted where ``incorrect == -1``) and ``constant`` collects ``b_U`` the same way.

    Attributes:
        rows: the row of the token batch each read is made on.
        positions: the position each read is made at.
        correct: the token whose logit is added.
        incorrect: the token whose logit is subtracted, or -1 for none.
        weights: the weight of each read (0 for padding reads).
        directions: the residual direction of each read.
        constant: the unembedding bias' share of the value, per prompt.
        kind: what the value is, in words.
    """

    rows: Int[Tensor, "batch read"]
    positions: Int[Tensor, "batch read"]
    correct: Int[Tensor, "batch read"]
    incorrect: Int[Tensor, "batch read"]
    weights: Float[Tensor, "batch read"]
    directions: Float[Tensor, "batch read d_model"]
    constant: Float[Tensor, " batch"]
    kind: str

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
        b_u = getattr(bridge, "b_U", None)
        if b_u is None:
            constant = torch.zeros(correct.shape[0], dtype=plus.dtype, device=plus.device)
        else:
            b_u = b_u.float()
            subtracted = b_u[incorrect.clamp(min=0)] * (incorrect >= 0)
            bias = b_u[correct] - subtracted
            constant = (bias * weights.to(bias)).sum(-1)
    return (plus - minus).detach(), constant.detach()


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
    return ResidualDirections(rows, positions, correct, incorrect, weights.to(directions.dtype), directions,
                              constant, kind)


def _final_scale(cache: Any, directions: ResidualDirections) -> Float[Tensor, "batch read 1"]:
    try:
        scale = cache["ln_final.hook_scale"]
    except KeyError:
        raise KeyError("The cache has no 'ln_final.hook_scale': DLA needs the final norm's frozen scale. Cache "
                       "the whole run (bridge.run_with_cache(tokens) without names_filter).") from None
    return scale[directions.rows, directions.positions]


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
        values: per entry (``0_pre``, ``0_mid``, ..., ``final_post``) and prompt, the value including the
            unembedding bias' constant.
        labels: the entries' labels, as ``ActivationCache.accumulated_resid`` gives them.
        ln: ``"frozen"`` (every entry divided by the final residual's scale: linear, entry differences are
            the DLA of the sub-layers) or ``"recompute"`` (each entry normalized by its own RMS).
    """

    values: Float[Tensor, "component batch"]
    labels: tuple[str, ...]
    ln: str

    @property
    def mean(self) -> Float[Tensor, " component"]:
        return self.values.mean(-1)


def logit_lens(
    model: Any, cache_or_tokens: Any, directions: ResidualDirections, *, incl_mid: bool = True,
    ln: str = "frozen",
) -> LogitLens:
    """The metric read from the accumulated residual (``accumulated_resid``), final norm applied.

    With ``ln="frozen"`` the final residual's cached scale is applied to every entry (the source analysis'
    choice, ``apply_ln_to_stack(layer=-1)``); with ``"recompute"`` each entry is normalized by its own RMS
    (``x / sqrt(mean(x^2) + eps)``, what the final norm would do if the model stopped there). The last
    entry is the metric's value in both.
    """
    if ln not in ("frozen", "recompute"):
        raise ValueError(f"ln={ln!r}: use 'frozen' (the final residual's cached scale) or 'recompute'.")
    bridge = _bridge(model)
    cache = run_cache(model, cache_or_tokens)
    _check_shape(cache, directions)
    with torch.no_grad():
        stack, labels = cache.accumulated_resid(layer=-1, incl_mid=incl_mid, return_labels=True)
        vectors = directions.gather(stack).float()
        if ln == "frozen":
            scale = _final_scale(cache, directions)
        else:
            scale = (vectors.pow(2).mean(-1, keepdim=True) + bridge.cfg.eps).sqrt()
        values = directions.project(vectors, scale) + directions.constant
    return LogitLens(values.detach(), tuple(labels), ln)


@dataclass(frozen=True, eq=False)
class LayerAttribution:
    """DLA per component of the final residual stream.

    Attributes:
        values: per component (``embed``, ``{l}_attn_out`` (with ``b_O``), ``{l}_mlp_out``) and prompt.
        labels: the components' labels, as ``ActivationCache.decompose_resid`` gives them.
        constant: the unembedding bias' share, per prompt.
    """

    values: Float[Tensor, "component batch"]
    labels: tuple[str, ...]
    constant: Float[Tensor, " batch"]

    @property
    def mean(self) -> Float[Tensor, " component"]:
        """Each component's value averaged over prompts."""
        return self.values.mean(-1)

    @property
    def total(self) -> Float[Tensor, " batch"]:
        """The components plus the constant: the metric's value (with the frozen final scale)."""
        return self.values.sum(0) + self.constant

    def top_k(self, k: int, *, by: TopBy = "abs") -> list[tuple[str, float]]:
        """The ``k`` components with the largest mean value (``by``: abs, positive, negative), signed."""
        return _top_k(self.mean, self.labels, k, by)


def layer_attribution(model: Any, cache_or_tokens: Any, directions: ResidualDirections) -> LayerAttribution:
    """DLA of the embeddings, each attention layer and each MLP layer (``decompose_resid``)."""
    cache = run_cache(model, cache_or_tokens)
    _check_shape(cache, directions)
    with torch.no_grad():
        stack, labels = cache.decompose_resid(layer=-1, return_labels=True)
        values = directions.project(directions.gather(stack), _final_scale(cache, directions))
    return LayerAttribution(values.detach(), tuple(labels), directions.constant)


def head_results(model: Any, cache: Any, layer: int) -> Float[Tensor, "batch pos head d_model"]:
    """What each head of ``layer`` writes to the residual stream: ``z[..., h, :] @ W_O[h]`` (no ``b_O``)."""
    bridge = _bridge(model)
    with torch.no_grad():
        return einops.einsum(cache["z", layer], bridge.blocks[layer].attn.W_O,
                             "batch pos head d_head, head d_head d_model -> batch pos head d_model").detach()


@dataclass(frozen=True, eq=False)
class HeadAttribution:
    """DLA per attention head, with the terms that complete the sum.

    Attributes:
        values: per layer, head and prompt.
        attn_bias: each attention layer's ``b_O`` share, per prompt.
        rest: embeddings + every MLP + the unembedding bias' constant, per prompt.
    """

    values: Float[Tensor, "layer head batch"]
    attn_bias: Float[Tensor, "layer batch"]
    rest: Float[Tensor, " batch"]

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
        """Heads + ``b_O`` terms + rest: the metric's value (with the frozen final scale)."""
        return self.values.sum((0, 1)) + self.attn_bias.sum(0) + self.rest

    def top_k(self, k: int, *, by: TopBy = "abs") -> list[tuple[str, float]]:
        """The ``k`` heads with the largest mean value (``by``: abs, positive, negative), signed."""
        return _top_k(self.mean.flatten(), self.labels, k, by)


def head_attribution(model: Any, cache_or_tokens: Any, directions: ResidualDirections) -> HeadAttribution:
    """DLA of every head of every layer, ``[layer, head, batch]``, with ``b_O`` and the rest kept apart.

    Per-head results are computed at the positions read from ``hook_z`` and ``W_O``; ``rest`` is computed
    from the embedding and MLP outputs, not as a remainder, so that ``total`` is a check.
    """
    bridge = _bridge(model)
    cache = run_cache(model, cache_or_tokens)
    n_layers = bridge.cfg.n_layers
    _check_shape(cache, directions)
    _refuse_non_finite_run(bridge, cache)
    with torch.no_grad():
        scale = _final_scale(cache, directions)
        heads, biases = [], []
        for layer in range(n_layers):
            z = cache["z", layer][directions.rows, directions.positions].float()  # batch read head d_head
            result = einops.einsum(z, bridge.blocks[layer].attn.W_O.float(),
                                   "batch read head d_head, head d_head d_model -> head batch read d_model")
            heads.append(directions.project(result, scale))
            b_o = getattr(bridge.blocks[layer].attn, "b_O", None)
            if b_o is None:
                biases.append(torch.zeros_like(directions.constant))
            else:
                bias = b_o.expand(*directions.rows.shape, -1)
                biases.append(directions.project(bias, scale))
        others = cache.decompose_resid(layer=-1, mode="mlp")  # embeddings and every MLP
        rest = directions.project(directions.gather(others), scale).sum(0) + directions.constant
    return HeadAttribution(torch.stack(heads).detach(), torch.stack(biases).detach(), rest.detach())
