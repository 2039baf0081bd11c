"""Activation patching: which activations carry the information that makes the model answer correctly.

Activation patching (Meng et al. 2022, "ROME"; Wang et al. 2022, "IOI") runs the model on a *corrupted*
prompt, replaces one activation (a *cell*: a layer and position of the residual stream, a layer and
head of the attention...) with its value on the *clean* prompt, and measures how far the metric moves
from its corrupted value back to its clean one. A sweep does this for every cell of one kind of
activation (a *site*) and returns one number per cell and prompt.

The naive sweep (TransformerLens' ``transformer_lens.patching``, and :func:`reference_activation_patch`
here) runs one full forward per cell: ~2,000 forwards of Qwen2.5-0.5B for the sweeps below. Most of that
work is recomputing what the corrupted run already computed. :func:`activation_patch` gives the same
numbers (to float32 rounding; tested against both) while computing only what a patch changes: every
patched run starts from the cached corrupted state at the patched layer, skips the positions before the
first changed one (attention is causal), computes the last layer and the unembedding only at the
positions and tokens the metric reads, and runs many cells through one batched forward. See
:mod:`circuit._forward` for how.

Three exact paths compute the same numbers; :attr:`PatchResult.method` says which one ran:

* ``"activation"``: the fast engine, where the bridge's block arithmetic is implemented (chosen from its
  features, :mod:`circuit._forward.arithmetic`: RMSNorm or LayerNorm, folded or not, pre- and post-norms,
  rotary (full or partial) or learned positions, q/k norms, biases or none, gated or plain MLPs, soft-capping,
  sliding windows, parallel attention and MLP) *and* the arithmetic reproduces the bridge's own forward on
  the sweep's corrupted run (a self-check, every sweep, with a per-dtype tolerance);
* ``"hooks"``: the generic path for every other model TransformerLens can boot: the corrupted batch is
  repeated once per cell of a chunk and one hook per layer patches each cell's own rows (compatibility-mode
  hook names only; chunk size from a memory bound);
* ``"reference"``: :func:`reference_activation_patch`, one ``run_with_hooks`` per cell, the definition the
  other two are tested against.

Sites (``SITES``, one :class:`Site` record each), all on a ``TransformerBridge`` in compatibility mode:

=========== ======================================================================== ====================
site        patched activation                                                       cells
=========== ======================================================================== ====================
resid_pre   ``blocks.{l}.hook_resid_pre`` at one position                             [layer, pos]
attn_out    ``blocks.{l}.hook_attn_out`` at one position                              [layer, pos]
mlp_out     ``blocks.{l}.hook_mlp_out`` at one position                               [layer, pos]
z           one head's ``hook_z``, all positions                                     [layer, head]
pattern     one query head's ``hook_pattern``, all positions                         [layer, head]
v           one query head's output recomputed from its *corrupted* pattern and the  [layer, head]
            *clean* values of its key/value group (so ``v`` and ``pattern`` split
            ``z``; under grouped-query attention ``hook_v`` has no query-head axis)
v_kv        one key/value head's ``hook_v`` (shared by all query heads of its group) [layer, kv_head]
v_pos       ``hook_v`` at one position, every key/value head (the source's "value    [layer, pos]
            patching per head": it indexed ``hook_v[:, head]``, whose axis 1 is the
            position, so its "head" ``h`` is the position ``h``)
z_final     one head's ``hook_z`` at the final position only                          [layer, head]
=========== ======================================================================== ====================

:func:`attribution_patch` is the first-order (gradient) approximation of the same sweeps, for every
cell at the cost of two forwards and one backward (Nanda 2023, "Attribution Patching"). It is a
*screen* to decide where to look, not a verdict: it is exact only where the model is linear in the
patched activation, and misses or misranks cells whose effect saturates (attention patterns,
early residual positions; Kramár et al. 2024, "AtP*"). Confirm what it finds with :func:`activation_patch`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuit import _forward as fwd
from circuit.stats import Interval, bootstrap_ci

__all__ = [
    "SITES",
    "TRANSFORMER_LENS_SWEEPS",
    "NotSignificantError",
    "PatchResult",
    "Site",
    "activation_patch",
    "attribution_patch",
    "read_set",
    "reference_activation_patch",
]

Metric = Callable[[Tensor], Tensor]
Cache = fwd.RunCache


def _heads_from(pattern: Tensor, v: Tensor) -> Tensor:
    """``z [batch pos head d_head]`` of ``pattern [batch head q k]`` over grouped values ``v [batch k kv d_head]``."""
    return fwd.mix_values(pattern, v, v.shape[2])


def _final_only(clean: Tensor, corrupted: Tensor) -> Tensor:
    """``corrupted [batch pos ...]`` with its final position taken from ``clean`` (batches share one length)."""
    return torch.cat([corrupted[:, :-1], clean[:, -1:]], dim=1)


@dataclass(frozen=True)
class Site:
    """One kind of cell: which activation a patch writes, along which axis, from which clean values.

    Attributes:
        name: the site's name.
        axes: the names of the cell axes, ``("layer", <index axis>)``.
        hook: the compatibility-mode hook (under ``blocks.{layer}.``) whose activation the patch writes.
        cell_dim: the dimension of that activation that the index axis selects.
        query_dim: the dimension of positions whose values a patch can change (queries for a pattern).
        patched_all: the activation with *every* cell of the layer patched, from the clean and corrupted
            caches and the query heads per key/value head: a cell's patch takes its slice of it.
        transformer_lens: the ``transformer_lens.patching`` sweep of the same cells, if TL has one.
    """

    name: str
    axes: tuple[str, str]
    hook: str
    cell_dim: int
    query_dim: int
    patched_all: Callable[[int, Cache, Cache], Tensor]
    transformer_lens: str | None

    def corrupted(self, layer: int, corr: Cache) -> Tensor:
        """The corrupted run's activation at ``hook`` of ``layer``."""
        return _ACTIVATION[self.hook](corr)[layer]

    def target(self, layer: int, index: int, clean: Cache, corr: Cache, patched: Tensor | None = None) -> Tensor:
        """The activation at ``hook`` of ``layer`` when cell ``(layer, index)`` is patched (``patched``: the
        layer's :attr:`patched_all`, when the caller already has it)."""
        source = self.patched_all(layer, clean, corr) if patched is None else patched
        act = self.corrupted(layer, corr).clone()
        act.select(self.cell_dim, index).copy_(source.select(self.cell_dim, index))
        return act

    def n_index(self, corr: Cache) -> int:
        """The length of the index axis (positions, query heads or key/value heads)."""
        return self.corrupted(0, corr).shape[self.cell_dim]


_ACTIVATION: dict[str, Callable[[Cache], list[Tensor]]] = {
    "hook_resid_pre": lambda c: c.resid_pre,
    "hook_attn_out": lambda c: c.attn_out,
    "hook_mlp_out": lambda c: c.mlp_out,
    "attn.hook_z": lambda c: c.z,
    "attn.hook_pattern": lambda c: c.pattern,
    "attn.hook_v": lambda c: c.v,
}

SITES: dict[str, Site] = {
    site.name: site
    for site in (
        Site("resid_pre", ("layer", "pos"), "hook_resid_pre", 1, 1, lambda l, c, _: c.resid_pre[l],
             "get_act_patch_resid_pre"),
        Site("attn_out", ("layer", "pos"), "hook_attn_out", 1, 1, lambda l, c, _: c.attn_out[l],
             "get_act_patch_attn_out"),
        Site("mlp_out", ("layer", "pos"), "hook_mlp_out", 1, 1, lambda l, c, _: c.mlp_out[l],
             "get_act_patch_mlp_out"),
        Site("z", ("layer", "head"), "attn.hook_z", 2, 1, lambda l, c, _: c.z[l],
             "get_act_patch_attn_head_out_all_pos"),
        Site("pattern", ("layer", "head"), "attn.hook_pattern", 1, 2, lambda l, c, _: c.pattern[l],
             "get_act_patch_attn_head_pattern_all_pos"),
        Site("v", ("layer", "head"), "attn.hook_z", 2, 1, lambda l, c, r: _heads_from(r.pattern[l], c.v[l]), None),
        Site("v_kv", ("layer", "kv_head"), "attn.hook_v", 2, 1, lambda l, c, _: c.v[l],
             "get_act_patch_attn_head_v_all_pos"),
        Site("v_pos", ("layer", "pos"), "attn.hook_v", 1, 1, lambda l, c, _: c.v[l], None),
        Site("z_final", ("layer", "head"), "attn.hook_z", 2, 1, lambda l, c, r: _final_only(c.z[l], r.z[l]), None),
    )
}
"""Every site by name (module docstring). Adding a site is one entry: the engine, the hook sweep, the naive
loop and attribution patching all work from the record."""

TRANSFORMER_LENS_SWEEPS: dict[str, str] = {n: s.transformer_lens for n, s in SITES.items() if s.transformer_lens}
"""The ``transformer_lens.patching`` sweep that computes each site (``v``, per query head, has none: TL's
value sweep patches key/value heads, which is ``v_kv``; ``v_pos`` and ``z_final`` have none either)."""

CHECK_TOLERANCE: dict[torch.dtype, float] = {torch.float64: 1e-6, torch.float32: 1e-4, torch.float16: 1e-2,
                                             torch.bfloat16: 4e-2}
"""Per dtype: the relative error up to which the engine's arithmetic counts as the bridge's forward, and
(x10) up to which a structured metric's declared reads reproduce its value."""


class NotSignificantError(ValueError):
    """Clean and corrupted runs do not differ significantly, so a normalised effect means nothing."""


@dataclass(frozen=True)
class PatchResult:
    """The metric on every patched cell of one sweep, per prompt, with the clean and corrupted baselines.

    Attributes:
        site: the patched site (one of ``SITES``).
        axes: the names of the cell axes, e.g. ``("layer", "pos")``.
        per_prompt: the raw metric of each patched run, ``[*cells, batch]`` (float32).
        clean: the metric of the clean run, ``[batch]``.
        corrupted: the metric of the corrupted run, ``[batch]``.
        method: ``"activation"`` (the fast engine), ``"hooks"`` (the generic batched hook sweep),
            ``"reference"`` (one ``run_with_hooks`` per cell), all exact, or ``"attribution"`` (linear
            approximation).
    """

    site: str
    axes: tuple[str, ...]
    per_prompt: Float[Tensor, "*cells batch"]
    clean: Float[Tensor, " batch"]
    corrupted: Float[Tensor, " batch"]
    method: str = "activation"

    @property
    def mean(self) -> Float[Tensor, "*cells"]:
        """The metric of each patched cell, averaged over prompts."""
        return self.per_prompt.mean(-1)

    def baseline_gap(self, *, level: float = 0.95, seed: int = 0) -> Interval:
        """Bootstrap CI of the mean over prompts of ``clean - corrupted``."""
        return bootstrap_ci(self.clean - self.corrupted, level=level, seed=seed)

    def normalized(self, *, level: float = 0.95, seed: int = 0) -> Float[Tensor, "*cells"]:
        """``(patched - corrupted) / (clean - corrupted)`` of the means: 0 = no effect, 1 = clean recovered.

        Raises:
            NotSignificantError: the bootstrap CI (at ``level``) of ``clean - corrupted`` contains 0, so the
                ratio's denominator is noise.
        """
        gap = self.baseline_gap(level=level, seed=seed)
        if not bool(gap.excludes(0)):
            raise NotSignificantError(
                f"Cannot normalise the {self.site} sweep: clean and corrupted metrics do not differ "
                f"significantly (clean - corrupted = {gap}, over {self.clean.shape[-1]} prompts), so "
                f"(patched - corrupted) / (clean - corrupted) would divide by noise. Use more prompts, a "
                f"corruption that changes the answer, or report .mean (raw metric) instead."
            )
        clean, corrupted = self.clean.mean(), self.corrupted.mean()
        return (self.mean - corrupted) / (clean - corrupted)

    def ci(self, *, level: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> Interval:
        """Bootstrap CI (over prompts) of each cell's mean metric; all cells share the same resamples."""
        return bootstrap_ci(self.per_prompt, level=level, n_resamples=n_resamples, seed=seed)


# ---------------------------------------------------------------------------------------------------------
# Inputs


def _check_inputs(model: Any, clean_tokens: Tensor, corrupted_tokens: Tensor, site: str) -> tuple[Tensor, Tensor]:
    if site not in SITES:
        raise ValueError(f"Unknown site {site!r}: choose one of {list(SITES)}.")
    for name, tokens in (("clean_tokens", clean_tokens), ("corrupted_tokens", corrupted_tokens)):
        if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.dtype not in (torch.long, torch.int):
            raise ValueError(f"{name} must be an integer tensor [batch, pos], got "
                             f"{type(tokens).__name__} {getattr(tokens, 'shape', '')} {getattr(tokens, 'dtype', '')}.")
        if tokens.shape[0] == 0 or tokens.shape[1] == 0:
            raise ValueError(f"{name} has shape {tuple(tokens.shape)}: patching needs at least one prompt of at least "
                             f"one token (batch and pos both >= 1).")
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(
            f"clean_tokens {tuple(clean_tokens.shape)} and corrupted_tokens {tuple(corrupted_tokens.shape)} differ in "
            f"shape: patching compares activations position by position, so both batches need the same prompts "
            f"count and token length. Use circuit.prompts.corrupt_same_length() to build corrupted prompts."
        )
    if not all(hasattr(model, a) for a in ("cfg", "blocks", "run_with_hooks", "run_with_cache")):
        raise ValueError(
            f"{type(model).__name__} is not a TransformerBridge: pass the `.bridge` of "
            f"circuit.models.load_model(...) (a TransformerBridge after enable_compatibility_mode())."
        )
    d_vocab = getattr(model.cfg, "d_vocab", None)
    for name, tokens in (("clean_tokens", clean_tokens), ("corrupted_tokens", corrupted_tokens)):
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or (d_vocab is not None and high >= d_vocab):
            bad = low if low < 0 else high
            raise ValueError(f"{name} holds token id {bad}, outside the model's vocabulary 0..{d_vocab - 1 if d_vocab else '?'}: "
                             f"tokenize the prompts with this model's tokenizer (model.tokenizer).")
    device = next(model.parameters()).device
    return clean_tokens.to(device).long(), corrupted_tokens.to(device).long()


def _check_metric_output(value: Tensor, what: str, n_values: int | None = None) -> Tensor:
    value = torch.as_tensor(value)
    if value.ndim != 1:
        raise ValueError(f"The metric must return one value per prompt (a 1-D tensor [batch]); on the {what} run "
                         f"it returned shape {tuple(value.shape)}. Return e.g. logit_diff per prompt, not its mean.")
    if n_values is not None and value.shape[0] != n_values:
        raise ValueError(f"The metric returned {value.shape[0]} values on the {what} run, but {n_values} on the "
                         f"corrupted run: it must return one value per prompt, always the same number.")
    return value.detach().float()


def _baselines(model: Any, metric: Metric, clean: Cache, corr: Cache) -> tuple[Tensor, Tensor]:
    corr_metric = _check_metric_output(metric(corr.logits), "corrupted")
    rows = corr.logits.shape[0]
    if rows % corr_metric.shape[0]:
        raise ValueError(f"The metric returns {corr_metric.shape[0]} values for {rows} token rows: each value must "
                         f"read a whole number of rows (one value per prompt, or per group of rows).")
    clean_metric = _check_metric_output(metric(clean.logits), "clean", corr_metric.shape[0])
    for name, value in (("clean", clean_metric), ("corrupted", corr_metric)):
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"The metric is not finite on the {name} run ({value.tolist()}): check the model's "
                             f"weights and dtype (float16 overflows easily; try bfloat16 or float32).")
    return clean_metric, corr_metric


def _caches(model: Any, clean_tokens: Tensor, corrupted_tokens: Tensor, arith: Any = None) -> tuple[Cache, Cache]:
    return (fwd.run_cache(model, arith, clean_tokens), fwd.run_cache(model, arith, corrupted_tokens))


def _shape(site: Site, corr: Cache) -> tuple[int, int]:
    return len(corr.resid_pre), site.n_index(corr)


def _dtype(model: Any) -> torch.dtype:
    return next(model.parameters()).dtype


def read_set(metric: Metric, logits: Float[Tensor, "row pos d_vocab"]) -> tuple[Tensor, Tensor] | None:
    """The positions and vocabulary entries of ``logits`` that a plain metric reads, from its gradient.

    An entry is read where the gradient of ``metric(logits).sum()`` is nonzero. Returns ``(positions,
    vocab)`` (sorted token positions and ids, unions over rows), or ``None`` when the metric is not
    differentiable. The one assumption, checked by :class:`_Reader` on the clean and corrupted runs: the
    read set does not depend on the input.
    """
    leaf = logits.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            value = torch.as_tensor(metric(leaf))
            if not value.requires_grad:
                return None
            (grad,) = torch.autograd.grad(value.float().sum(), leaf, allow_unused=True)
    except Exception:  # detection cannot run: the caller computes every logit (exact)
        return None
    if grad is None:
        return None
    nonzero = grad != 0
    positions = nonzero.any(-1).any(0).nonzero()[:, 0]
    vocab = nonzero.any(0).any(0).nonzero()[:, 0]
    return positions, vocab


class _Reader:
    """Turns final residuals into metric values, computing only the logits the metric reads.

    A structured metric (:class:`circuit.metrics.AnswerMetric`) declares its reads. A plain callable's are
    detected (:func:`read_set`) and verified: on the clean and on the corrupted logits, the metric of a
    logits buffer holding only the read entries (the other run's logits everywhere else: finite, so a metric
    may check its input) must equal the metric of the full logits, within the dtype's tolerance; otherwise
    (and for a metric without a gradient, or one that cannot run on the buffer) every position and token
    is computed, with a warning when the detection was wrong. Patched values are then written
    into that buffer's read entries only, so the metric must not modify its input.
    """

    def __init__(self, metric: Metric, arith: fwd.BlockArithmetic, clean: Cache | None = None,
                 corr: Cache | None = None, tolerance: float = 1e-3):
        self.metric, self.arith = metric, arith
        self.buffer: Tensor | None = None
        positions = getattr(metric, "positions", None)
        self.structured = positions is not None and hasattr(metric, "score") and hasattr(metric, "vocab")
        device = arith.W_U.device  # type: ignore[attr-defined]
        if self.structured:
            positions = torch.as_tensor(positions).to(device).long()
            self.read = torch.unique(positions)
            self.index = torch.searchsorted(self.read, positions)
            self.rows = torch.arange(positions.shape[0], device=device)[:, None]
            vocab = metric.vocab  # type: ignore[attr-defined]
            self.vocab = None if vocab is None else torch.as_tensor(vocab).to(device).long()
            return
        self.read, self.vocab = None, None
        if clean is None or corr is None:
            return
        found = read_set(metric, corr.logits)
        if found is None:
            return
        read, vocab = found
        n_pos, n_vocab = corr.logits.shape[1:]
        if len(read) == 0 or (len(read) == n_pos and len(vocab) == n_vocab):
            return
        self.read, self.vocab = read, (None if len(vocab) == n_vocab else vocab)
        self.buffer = corr.logits.detach().clone()
        # Each run's read entries over the *other* run's logits: finite (a metric may check its input), and a
        # metric that reads an entry outside the set sees the other run's value there and disagrees.
        for name, cache, other in (("clean", clean, corr), ("corrupted", corr, clean)):
            full = _check_metric_output(metric(cache.logits), name)
            self.buffer.copy_(other.logits)
            try:
                with torch.no_grad():
                    reduced = _check_metric_output(self(cache.resid_final[:, self.read]), name)
            except Exception:  # the metric cannot run on the reduced logits: compute them all (exact)
                self.read, self.vocab, self.buffer = None, None, None
                return
            if not torch.allclose(reduced, full, atol=tolerance * max(1.0, float(full.abs().max())), rtol=tolerance):
                warnings.warn(
                    f"activation_patch: the metric reads more of the logits than its gradient shows (on the "
                    f"{name} run, max abs difference {(reduced - full).abs().max():.3g}); computing every "
                    f"position and token instead (exact, slower).", stacklevel=4)
                self.read, self.vocab, self.buffer = None, None, None
                return
        self.buffer.copy_(corr.logits)  # a patched run's unread entries: the corrupted run's

    def __call__(self, final: Float[Tensor, "row read d_model"]) -> Float[Tensor, " batch"]:
        logits = self.arith.unembed(final, self.vocab)
        if self.structured:
            return self.metric.score(logits[self.rows, self.index])  # type: ignore[attr-defined]
        if self.buffer is not None:
            if self.vocab is None:
                self.buffer[:, self.read] = logits
            else:
                self.buffer[:, self.read[:, None], self.vocab[None, :]] = logits
            return self.metric(self.buffer)
        return self.metric(logits)


# ---------------------------------------------------------------------------------------------------------
# The fast engine's patched states


@dataclass(frozen=True)
class _Plan:
    cell: int
    layer: int
    stage: str
    first: int
    build: Callable[[], Tensor]


def _first_changed(site: Site, target: Tensor, corrupted: Tensor) -> int | None:
    """The first position whose activation the patch changes (``None``: it changes nothing)."""
    changed = target != corrupted
    dims = [d for d in range(changed.ndim) if d != site.query_dim]
    positions = changed.permute(site.query_dim, *dims).flatten(1).any(-1).nonzero()
    return int(positions[0]) if len(positions) else None


def _start(arith: fwd.BlockArithmetic, site: Site, layer: int, target: Tensor, first: int, corr: Cache) -> Tensor:
    """The residual, at positions ``>= first``, with which a patched activation joins the forward at
    :func:`_join_point`."""
    if site.hook == "hook_resid_pre":
        return target[:, first:]
    if site.hook == "hook_mlp_out":
        return corr.resid_mid[layer][:, first:] + target[:, first:]
    if site.hook == "hook_attn_out":
        attn = target[:, first:]
    else:
        if site.hook == "attn.hook_z":
            z = target[:, first:]
        elif site.hook == "attn.hook_pattern":
            z = _heads_from(target, corr.v[layer])[:, first:]
        else:  # attn.hook_v
            z = _heads_from(corr.pattern[layer], target)[:, first:]
        attn = arith.attn_out(layer, z)
    resid = corr.resid_pre[layer][:, first:] + attn
    return resid + corr.mlp_out[layer][:, first:] if arith.parallel else resid


def _plans(site: Site, arith: fwd.BlockArithmetic, clean: Cache, corr: Cache, skip: bool) -> Iterator[_Plan | int]:
    """One plan per cell; with ``skip``, the index of a cell whose patch changes nothing instead of its plan."""
    n_layers, n_index = _shape(site, corr)
    by_position = site.axes[1] == "pos"
    for layer in range(n_layers):
        corrupted, patched = site.corrupted(layer, corr), site.patched_all(layer, clean, corr)
        joins, stage = _join_point(arith, site, layer)
        for index in range(n_index):
            cell = layer * n_index + index
            first = _first_changed(site, site.target(layer, index, clean, corr, patched), corrupted)
            if first is None and skip:
                yield cell
                continue
            first = index if by_position else (first or 0)

            def build(layer: int = layer, index: int = index, first: int = first, patched: Tensor = patched
                      ) -> Tensor:
                return _start(arith, site, layer, site.target(layer, index, clean, corr, patched), first, corr)

            yield _Plan(cell, joins, stage, first, build)


def _join_point(arith: fwd.BlockArithmetic, site: Site, layer: int) -> tuple[int, str]:
    """Where a patch of ``site`` at ``layer`` joins the forward: ``(layer, stage)``."""
    if site.hook == "hook_resid_pre":
        return layer, "pre"
    if site.hook == "hook_mlp_out" or arith.parallel:
        return layer + 1, "pre"
    return layer, "mid"


def _cell_bytes(model: Any, batch: int, n_pos: int, logits: bool) -> int:
    """A rough upper bound of the memory one cell takes in a batched patched run."""
    cfg = model.cfg
    d_model, n_heads = cfg.d_model, cfg.n_heads
    d_mlp = getattr(cfg, "d_mlp", None) or 4 * d_model
    per_token = 3 * d_mlp + 8 * d_model + 2 * n_heads * n_pos
    if logits:
        per_token += cfg.d_vocab
    return 4 * batch * n_pos * per_token


def _memory_budget_mb(device: torch.device) -> float:
    """Memory for one batched forward: half of what a CUDA device has free, 1024 MB on other devices."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(256.0, free / 2**20 / 2)
    return 1024.0


def _fast_arithmetic(model: Any, clean_tokens: Tensor, corrupted_tokens: Tensor
                     ) -> tuple[fwd.BlockArithmetic | None, Cache, Cache, str]:
    """The fast engine's arithmetic and caches, or ``None`` (and why) where the generic path must run."""
    try:
        arith = fwd.arithmetic_of(model)
    except fwd.UnsupportedArchitecture as error:
        clean, corr = _caches(model, clean_tokens, corrupted_tokens)
        return None, clean, corr, f"the fast engine does not implement {error}"
    clean, corr = _caches(model, clean_tokens, corrupted_tokens, arith)
    error = fwd.self_check(arith, corr)
    tolerance = CHECK_TOLERANCE.get(_dtype(model), 1e-4)
    if not error <= tolerance:
        return None, clean, corr, (f"the fast engine's arithmetic does not reproduce this model's forward (relative "
                                   f"error {error:.2g} > {tolerance:g} for {_dtype(model)})")
    return arith, clean, corr, ""


def activation_patch(
    model: Any,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    site: str,
    *,
    chunk_size: int | None = None,
    max_memory_mb: float | None = None,
    progress: bool | Mapping[str, Any] = False,
    skip_unchanged: bool = True,
    method: str = "auto",
) -> PatchResult:
    """Patch every cell of ``site`` from the clean run into the corrupted run; return the metric per cell.

    Same numbers as one ``run_with_hooks`` per cell (:func:`reference_activation_patch`, and TransformerLens'
    ``get_act_patch_*`` where it has the sweep), computed with far less work (module docstring).

    Args:
        model: a ``TransformerBridge`` in compatibility mode (``load_model(...).bridge``), any architecture.
        clean_tokens: the clean prompts' tokens.
        corrupted_tokens: the corrupted prompts' tokens, same shape.
        metric: ``logits [batch, pos, d_vocab] -> [batch]`` (one value per prompt). A plain function works;
            an :class:`circuit.metrics.AnswerMetric` (declaring ``positions``, ``vocab`` and ``score``) lets the
            fast engine compute only the logits it reads.
        site: one of ``SITES``.
        chunk_size: cells per batched forward (default: as many as ``max_memory_mb`` allows).
        max_memory_mb: the memory bound used to choose ``chunk_size`` (default: half the free memory of a
            CUDA device, so that a GPU runs many cells per forward; 1024 MB elsewhere).
        progress: a tqdm progress bar over cells: ``True`` for tqdm's defaults, or a mapping of tqdm keyword
            arguments (``{"file": stream, "delay": 3.0, "leave": False}``: only sweeps longer than 3 s show one).
        skip_unchanged: cells whose clean activation equals the corrupted one (e.g. the BOS position) are
            not run: their value is the corrupted baseline. ``False`` runs them anyway (a canary).
        method: ``"auto"`` (the fast engine where it reproduces the model, else the hook sweep, with a
            warning saying why), ``"activation"`` (the fast engine or an error saying why not) or ``"hooks"``.

    Returns:
        A :class:`PatchResult` with ``per_prompt [*cells, batch]``; ``method`` says which path ran.
    """
    if method not in ("auto", "activation", "hooks"):
        raise ValueError(f"method={method!r}: use 'auto', 'activation' (the fast engine) or 'hooks'.")
    clean_tokens, corrupted_tokens = _check_inputs(model, clean_tokens, corrupted_tokens, site)
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}: pass a positive number of cells per batched forward.")
    spec = SITES[site]
    if method == "hooks":
        arith, (clean, corr), why = None, _caches(model, clean_tokens, corrupted_tokens), ""
    else:
        arith, clean, corr, why = _fast_arithmetic(model, clean_tokens, corrupted_tokens)
        if arith is None and method == "activation":
            raise fwd.UnsupportedArchitecture(f"method='activation' on {type(model).__name__}: {why}. Use "
                                              f"method='auto' or 'hooks' (the exact generic path).")
        if arith is None:
            warnings.warn(f"activation_patch: {why}; using the exact generic hook sweep (slower).", stacklevel=2)
    clean_metric, corr_metric = _baselines(model, metric, clean, corr)
    batch, n_pos = clean_tokens.shape
    if chunk_size is None:
        per_cell = _cell_bytes(model, batch, n_pos, logits=arith is None)
        budget = _memory_budget_mb(clean_tokens.device) if max_memory_mb is None else max_memory_mb
        if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
            raise ValueError(f"max_memory_mb={max_memory_mb!r}: pass a finite number of MiB > 0, or None (half the "
                             f"free memory of the device).")
        chunk_size = max(1, int(budget * 2**20 // per_cell))
    sweep = _fast_sweep if arith is not None else _hook_sweep
    out = sweep(model, arith, spec, clean, corr, corrupted_tokens, metric, corr_metric, chunk_size, progress,
                skip_unchanged)
    return PatchResult(site, spec.axes, out.reshape(*_shape(spec, corr), -1), clean_metric, corr_metric,
                       "activation" if arith is not None else "hooks")


def _fast_sweep(model: Any, arith: fwd.BlockArithmetic, site: Site, clean: Cache, corr: Cache, tokens: Tensor,
                metric: Metric, corr_metric: Tensor, chunk_size: int, progress: bool | Mapping[str, Any],
                skip: bool) -> Tensor:
    tolerance = 10 * CHECK_TOLERANCE.get(_dtype(model), 1e-4)
    reader = _Reader(metric, arith, clean, corr, tolerance)
    with torch.no_grad():
        check = _check_metric_output(reader(corr.resid_final if reader.read is None
                                            else corr.resid_final[:, reader.read]), "corrupted")
    if not torch.allclose(check, corr_metric, atol=tolerance * max(1.0, float(corr_metric.abs().max())),
                          rtol=tolerance):
        raise ValueError(
            f"The metric's declared positions/vocab do not reproduce its value on the corrupted logits "
            f"(max abs difference {(check - corr_metric).abs().max():.3g}): its `positions`, `vocab` and "
            f"`score` must satisfy metric(logits) == score(logits[rows, positions][..., vocab])."
        )
    try:
        return _run_plans(arith, site, clean, corr, reader, corr_metric, chunk_size, progress, skip)
    except _ReadSetChanged as changed:
        warnings.warn(f"activation_patch: {changed}; recomputing the sweep with every position and token "
                      f"(exact, slower).", stacklevel=3)
        return _run_plans(arith, site, clean, corr, _Reader(metric, arith), corr_metric, chunk_size, progress,
                          skip)


def _bar(progress: bool | Mapping[str, Any], total: int, desc: str) -> Any:
    """A tqdm bar over ``total`` cells: off for ``False``; ``True`` is tqdm's defaults; a mapping gives tqdm's
    keyword arguments (e.g. ``{"file": stream, "delay": 3.0, "leave": False}``: shown only when the sweep
    runs longer than 3 s, on ``stream``, and cleared when done)."""
    from tqdm.auto import tqdm

    if not progress:
        return tqdm(total=total, desc=desc, disable=True)
    options = dict(progress) if isinstance(progress, Mapping) else {}
    return tqdm(total=total, desc=desc, **{"disable": False, "unit": "cell", **options})


class _ReadSetChanged(RuntimeError):
    """A patched run made a plain metric read outside the read set detected on the clean and corrupted runs."""


def _run_plans(arith: fwd.BlockArithmetic, site: Site, clean: Cache, corr: Cache, reader: _Reader,
               corr_metric: Tensor, chunk_size: int, progress: bool | Mapping[str, Any], skip: bool) -> Tensor:
    n_layers, n_index = _shape(site, corr)
    out = corr_metric.expand(n_layers * n_index, -1).clone()

    bar = _bar(progress, n_layers * n_index, f"patching {site.name}")
    groups: dict[int, list[_Plan]] = {}
    with torch.no_grad():
        for plan in _plans(site, arith, clean, corr, skip):
            if isinstance(plan, int):
                bar.update(1)
            else:
                groups.setdefault(plan.first, []).append(plan)
        for first, plans in sorted(groups.items()):
            plans.sort(key=lambda p: (p.layer, fwd.STAGES.index(p.stage)))
            for lo in range(0, len(plans), chunk_size):
                chunk = plans[lo:lo + chunk_size]
                starts = [fwd.Start(p.cell, p.layer, p.stage, p.build()) for p in chunk]
                cells, final = fwd.continue_from(arith, corr, starts, first, reader.read)
                for cell, resid in zip(cells, final):
                    value = _check_metric_output(reader(resid), "patched", out.shape[1])
                    if reader.buffer is not None and not bool(torch.isfinite(value).all()):
                        raise _ReadSetChanged(f"the metric read outside its detected read set on a patched run "
                                              f"(cell {cell} of {site.name} gave {value.tolist()})")
                    out[cell] = value
                bar.update(len(chunk))
    bar.close()
    return out


# ---------------------------------------------------------------------------------------------------------
# The generic path: a batched hook sweep


def _hook_sweep(model: Any, arith: None, site: Site, clean: Cache, corr: Cache, tokens: Tensor, metric: Metric,
                corr_metric: Tensor, chunk_size: int, progress: bool | Mapping[str, Any], skip: bool) -> Tensor:
    """Each chunk of cells runs as one forward of the corrupted batch repeated once per cell; one hook per
    layer writes each cell's patched activation into that cell's rows."""
    n_layers, n_index = _shape(site, corr)
    rows = tokens.shape[0]
    out = corr_metric.expand(n_layers * n_index, -1).clone()
    todo = []
    patched = [site.patched_all(layer, clean, corr) for layer in range(n_layers)]
    for layer in range(n_layers):
        corrupted = site.corrupted(layer, corr)
        for index in range(n_index):
            target = site.target(layer, index, clean, corr, patched[layer])
            if skip and _first_changed(site, target, corrupted) is None:
                continue
            todo.append((layer, index))

    bar = _bar(progress, n_layers * n_index, f"patching {site.name} (hooks)")
    bar.update(n_layers * n_index - len(todo))
    with torch.no_grad():
        for lo in range(0, len(todo), chunk_size):
            chunk = todo[lo:lo + chunk_size]
            by_layer: dict[int, list[tuple[int, int]]] = {}
            for slot, (layer, index) in enumerate(chunk):
                by_layer.setdefault(layer, []).append((slot, index))

            def make_hook(layer: int, cells: list[tuple[int, int]]) -> Callable[[Tensor, Any], Tensor]:
                def hook(act: Tensor, hook: Any) -> Tensor:
                    act = act.clone()
                    for slot, index in cells:
                        act[slot * rows:(slot + 1) * rows] = site.target(layer, index, clean, corr, patched[layer])
                    return act
                return hook

            hooks = [(f"blocks.{layer}.{site.hook}", make_hook(layer, cells)) for layer, cells in by_layer.items()]
            logits = model.run_with_hooks(tokens.repeat(len(chunk), 1), fwd_hooks=hooks)
            for slot, (layer, index) in enumerate(chunk):
                value = metric(logits[slot * rows:(slot + 1) * rows])
                out[layer * n_index + index] = _check_metric_output(value, "patched", out.shape[1])
            bar.update(len(chunk))
    bar.close()
    return out


# ---------------------------------------------------------------------------------------------------------
# The naive definition


def reference_activation_patch(
    model: Any,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    site: str,
    *,
    cells: list[tuple[int, int]] | None = None,
    progress: bool | Mapping[str, Any] = False,
) -> PatchResult:
    """The definition :func:`activation_patch` is tested against: one ``model.run_with_hooks`` per cell.

    Works on any bridge (compatibility-mode hook names only). Slow (a full forward per cell). ``cells``
    restricts the sweep to some ``(layer, index)`` cells; the others are NaN in ``per_prompt``.
    """
    clean_tokens, corrupted_tokens = _check_inputs(model, clean_tokens, corrupted_tokens, site)
    spec = SITES[site]
    clean, corr = _caches(model, clean_tokens, corrupted_tokens)
    clean_metric, corr_metric = _baselines(model, metric, clean, corr)
    shape = _shape(spec, corr)
    todo = cells if cells is not None else [(l, i) for l in range(shape[0]) for i in range(shape[1])]
    out = torch.full((*shape, corr_metric.shape[0]), math.nan)

    bar = _bar(progress, len(todo), f"reference {site}")
    with torch.no_grad():
        for layer, index in todo:
            bar.update(1)
            target = spec.target(layer, index, clean, corr)
            hook = (f"blocks.{layer}.{spec.hook}", lambda act, hook, target=target: target.clone())
            logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[hook])
            out[layer, index] = _check_metric_output(metric(logits), "patched", corr_metric.shape[0])
    bar.close()
    return PatchResult(site, spec.axes, out, clean_metric, corr_metric, "reference")


# ---------------------------------------------------------------------------------------------------------
# Attribution patching


def attribution_patch(
    model: Any,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    site: str,
) -> PatchResult:
    """First-order approximation of :func:`activation_patch`: ``corrupted + (clean - corrupted act) . grad``.

    The gradient of the metric with respect to every activation of the corrupted run comes from one
    forward and one backward of the bridge itself (any architecture); with the clean run's activations
    (one more forward) it scores every cell of ``site`` at once. A screen, not a verdict (see the module
    docstring): confirm with :func:`activation_patch`. Gradients are taken with ``torch.autograd.grad``,
    so the model's parameters get no ``.grad``.

    Each prompt's value is its metric's own linearisation. A metric that returns fewer values than token
    rows (e.g. ``LogProbDiffMetric``: 2B rows, B values) must read row ``r`` only for value ``r % B``.
    """
    clean_tokens, corrupted_tokens = _check_inputs(model, clean_tokens, corrupted_tokens, site)
    spec = SITES[site]
    rows = clean_tokens.shape[0]
    clean, corr = _caches(model, clean_tokens, corrupted_tokens)
    clean_metric, corr_metric = _baselines(model, metric, clean, corr)
    n_out = corr_metric.shape[0]
    n_layers, _ = _shape(spec, corr)
    names = [f"blocks.{layer}.{spec.hook}" for layer in range(n_layers)]
    acts: dict[str, Tensor] = {}

    def leaf(act: Tensor, hook: Any) -> Tensor:
        return act.detach().requires_grad_(True)

    def keep(name: str) -> Callable[[Tensor, Any], Tensor]:
        def hook(act: Tensor, hook: Any) -> Tensor:
            acts[name] = act
            return act
        return hook

    hooks = [("blocks.0.hook_resid_pre", leaf)] + [(name, keep(name)) for name in names]
    with torch.enable_grad():
        logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=hooks)
        value = torch.as_tensor(metric(logits))
        if not value.requires_grad:
            raise ValueError("attribution_patch: the metric's value has no gradient with respect to the logits (it "
                             "detaches them, or computes through .item(), numpy or integer ops): attribution patching "
                             "differentiates the metric. Write it in torch operations on the logits, or use "
                             "activation_patch.")
        grads = torch.autograd.grad(value.float().sum(), [acts[n] for n in names], allow_unused=True)

    per_row = torch.zeros(n_layers, spec.n_index(corr), rows)
    with torch.no_grad():
        for layer, grad in enumerate(grads):
            if grad is None:
                continue
            delta = (spec.patched_all(layer, clean, corr) - spec.corrupted(layer, corr)).float()
            summed = (delta * grad.float()).movedim(spec.cell_dim, 1).flatten(2).sum(-1)  # [rows, index]
            per_row[layer] = summed.T.cpu()
    per_prompt = per_row.unflatten(-1, (rows // n_out, n_out)).sum(-2) + corr_metric.cpu()
    return PatchResult(site, spec.axes, per_prompt, clean_metric, corr_metric, "attribution")
