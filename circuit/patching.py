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

Sites (``SITES``), all on a ``TransformerBridge`` in compatibility mode:

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
=========== ======================================================================== ====================

:func:`attribution_patch` is the first-order (gradient) approximation of the same sweeps, for every
cell at the cost of two forwards and one backward (Nanda 2023, "Attribution Patching"). It is a
*screen* to decide where to look, not a verdict: it is exact only where the model is linear in the
patched activation, and misses or misranks cells whose effect saturates (attention patterns,
early residual positions; Kramár et al. 2024, "AtP*"). Confirm what it finds with :func:`activation_patch`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
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
    "activation_patch",
    "attribution_patch",
    "reference_activation_patch",
]

SITES: dict[str, tuple[str, str]] = {
    "resid_pre": ("layer", "pos"),
    "attn_out": ("layer", "pos"),
    "mlp_out": ("layer", "pos"),
    "z": ("layer", "head"),
    "pattern": ("layer", "head"),
    "v": ("layer", "head"),
    "v_kv": ("layer", "kv_head"),
}
"""Every site, with the names of its cell axes."""

TRANSFORMER_LENS_SWEEPS: dict[str, str] = {
    "resid_pre": "get_act_patch_resid_pre",
    "attn_out": "get_act_patch_attn_out",
    "mlp_out": "get_act_patch_mlp_out",
    "z": "get_act_patch_attn_head_out_all_pos",
    "pattern": "get_act_patch_attn_head_pattern_all_pos",
    "v_kv": "get_act_patch_attn_head_v_all_pos",
}
"""The ``transformer_lens.patching`` sweep that computes each site (``v``, per query head, has none: TL's
value sweep patches key/value heads, which is ``v_kv``)."""

POSITION_SITES = ("resid_pre", "attn_out", "mlp_out")
HEAD_SITES = ("z", "pattern", "v", "v_kv")

Metric = Callable[[Tensor], Tensor]


class NotSignificantError(ValueError):
    """Clean and corrupted runs do not differ significantly, so a normalised effect means nothing."""


@dataclass(frozen=True)
class PatchResult:
    """The metric on every patched cell of one sweep, per prompt, with the clean and corrupted baselines.

    Attributes:
        site: the patched site (one of ``SITES``).
        axes: the names of the cell axes, e.g. ``("layer", "pos")``.
        per_prompt: the raw metric of each patched run, ``[*cells, batch]``.
        clean: the metric of the clean run, ``[batch]``.
        corrupted: the metric of the corrupted run, ``[batch]``.
        method: ``"activation"`` (exact), ``"attribution"`` (linear approximation) or ``"reference"``
            (one ``run_with_hooks`` per cell).
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
    if clean_tokens.shape != corrupted_tokens.shape:
        raise ValueError(
            f"clean_tokens {tuple(clean_tokens.shape)} and corrupted_tokens {tuple(corrupted_tokens.shape)} differ in "
            f"shape: patching compares activations position by position, so both batches need the same prompts "
            f"count and token length. Use circuit.prompts.corrupt_same_length() to build corrupted prompts."
        )
    fwd.check_supported(model)
    device = model.W_E.device
    return clean_tokens.to(device).long(), corrupted_tokens.to(device).long()


def _check_metric_output(value: Tensor, what: str) -> Tensor:
    value = torch.as_tensor(value)
    if value.ndim != 1:
        raise ValueError(f"The metric must return one value per prompt (a 1-D tensor [batch]); on the {what} run "
                         f"it returned shape {tuple(value.shape)}. Return e.g. logit_diff per prompt, not its mean.")
    return value.detach().float()


def _n_cells(site: str, w: fwd.Weights, n_pos: int) -> tuple[int, int]:
    second = {"pos": n_pos, "head": w.n_heads, "kv_head": w.n_kv_heads}[SITES[site][1]]
    return w.n_layers, second


class _Reader:
    """Turns final residuals into metric values, computing only the logits the metric reads."""

    def __init__(self, metric: Metric, w: fwd.Weights, n_pos: int):
        self.metric, self.w = metric, w
        positions = getattr(metric, "positions", None)
        self.structured = positions is not None and hasattr(metric, "score") and hasattr(metric, "vocab")
        if self.structured:
            device = w.W_U.device
            positions = torch.as_tensor(positions).to(device).long()
            self.read = torch.unique(positions)
            self.index = torch.searchsorted(self.read, positions)
            self.rows = torch.arange(positions.shape[0], device=device)[:, None]
            vocab = metric.vocab  # type: ignore[attr-defined]
            self.vocab = None if vocab is None else torch.as_tensor(vocab).to(device).long()
        else:
            self.read, self.vocab = None, None

    def __call__(self, final: Float[Tensor, "row read d_model"]) -> Float[Tensor, " batch"]:
        logits = fwd.unembed(self.w, final, self.vocab)
        if self.structured:
            return self.metric.score(logits[self.rows, self.index])  # type: ignore[attr-defined]
        return self.metric(logits)


# ---------------------------------------------------------------------------------------------------------
# Patched states, per site


@dataclass(frozen=True)
class _Plan:
    cell: int
    layer: int
    stage: str
    first: int
    build: Callable[[], Tensor]


def _head_z(site: str, layer: int, index: int, w: fwd.Weights, clean: fwd.RunCache, corr: fwd.RunCache) -> Tensor:
    """The corrupted run's ``hook_z`` at ``layer`` with the cell's head(s) patched."""
    z = corr.z[layer].clone()
    if site == "z":
        z[:, :, index] = clean.z[layer][:, :, index]
    elif site == "pattern":
        g = index // w.group
        z[:, :, index] = torch.einsum("bqk,bke->bqe", clean.pattern[layer][:, index], corr.v[layer][:, :, g])
    elif site == "v":
        g = index // w.group
        z[:, :, index] = torch.einsum("bqk,bke->bqe", corr.pattern[layer][:, index], clean.v[layer][:, :, g])
    elif site == "v_kv":
        for h in range(index * w.group, (index + 1) * w.group):
            z[:, :, h] = torch.einsum("bqk,bke->bqe", corr.pattern[layer][:, h], clean.v[layer][:, :, index])
    return z


def _plans(site: str, w: fwd.Weights, clean: fwd.RunCache, corr: fwd.RunCache, skip: bool) -> Iterator[_Plan | int]:
    """One plan per cell; with ``skip``, the index of a cell whose patch changes nothing instead of its plan."""
    n_layers = w.n_layers
    n_pos = clean.resid_final.shape[1]
    if site in POSITION_SITES:
        cached = {"resid_pre": clean.resid_pre, "attn_out": clean.attn_out, "mlp_out": clean.mlp_out}[site]
        own = {"resid_pre": corr.resid_pre, "attn_out": corr.attn_out, "mlp_out": corr.mlp_out}[site]
        for layer in range(n_layers):
            for pos in range(n_pos):
                cell = layer * n_pos + pos
                if skip and torch.equal(cached[layer][:, pos], own[layer][:, pos]):
                    yield cell
                    continue
                if site == "resid_pre":
                    base, new, at, stage = corr.resid_pre[layer], clean.resid_pre[layer][:, pos], layer, "pre"
                elif site == "attn_out":
                    base, at, stage = corr.resid_mid[layer], layer, "mid"
                    new = corr.resid_pre[layer][:, pos] + clean.attn_out[layer][:, pos]
                else:
                    base = corr.resid_pre[layer + 1] if layer + 1 < n_layers else corr.resid_final
                    new, at, stage = corr.resid_mid[layer][:, pos] + clean.mlp_out[layer][:, pos], layer + 1, "pre"

                def build(base: Tensor = base, new: Tensor = new, pos: int = pos) -> Tensor:
                    resid = base[:, pos:].clone()
                    resid[:, 0] = new
                    return resid

                yield _Plan(cell, at, stage, pos, build)
    else:
        n_index = w.n_kv_heads if site == "v_kv" else w.n_heads
        for layer in range(n_layers):
            for index in range(n_index):
                cell = layer * n_index + index
                z = _head_z(site, layer, index, w, clean, corr)
                changed = (z != corr.z[layer]).flatten(2).any(-1).any(0).nonzero()
                if len(changed) == 0 and skip:
                    yield cell
                    continue
                first = int(changed[0]) if len(changed) else 0

                def build(layer: int = layer, index: int = index, first: int = first) -> Tensor:
                    z = _head_z(site, layer, index, w, clean, corr)[:, first:]
                    return corr.resid_pre[layer][:, first:] + fwd.attn_output(w, layer, z)

                yield _Plan(cell, layer, "mid", first, build)


def _cell_bytes(w: fwd.Weights, batch: int, n_pos: int) -> int:
    """A rough upper bound of the memory one cell takes in a batched patched run."""
    d_model = w.W_O.shape[-1]
    per_token = 3 * w.d_mlp + 6 * d_model + 3 * (w.n_heads + 2 * w.n_kv_heads) * w.d_head + 2 * w.n_heads * n_pos
    return 4 * batch * n_pos * per_token


def activation_patch(
    model: Any,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    site: str,
    *,
    chunk_size: int | None = None,
    max_memory_mb: float = 1024.0,
    progress: bool = False,
    skip_unchanged: bool = True,
) -> PatchResult:
    """Patch every cell of ``site`` from the clean run into the corrupted run; return the metric per cell.

    Same numbers as one ``run_with_hooks`` per cell (:func:`reference_activation_patch`, and TransformerLens'
    ``get_act_patch_*`` where it has the sweep), computed with far less work (module docstring).

    Args:
        model: a ``TransformerBridge`` in compatibility mode (``load_model(...).bridge``), Qwen2-style.
        clean_tokens: the clean prompts' tokens.
        corrupted_tokens: the corrupted prompts' tokens, same shape.
        metric: ``logits [batch, pos, d_vocab] -> [batch]`` (one value per prompt). A plain function works;
            an :class:`circuit.metrics.AnswerMetric` (declaring ``positions``, ``vocab`` and ``score``) lets the
            engine compute only the logits it reads.
        site: one of ``SITES``.
        chunk_size: cells per batched forward (default: as many as ``max_memory_mb`` allows).
        max_memory_mb: the memory bound used to choose ``chunk_size``.
        progress: show a tqdm progress bar over cells.
        skip_unchanged: cells whose clean activation equals the corrupted one (e.g. the BOS position) are
            not run: their value is the corrupted baseline. ``False`` runs them anyway (a canary).

    Returns:
        A :class:`PatchResult` with ``per_prompt [*cells, batch]``.
    """
    clean_tokens, corrupted_tokens = _check_inputs(model, clean_tokens, corrupted_tokens, site)
    w = fwd.weights_of(model)
    batch, n_pos = clean_tokens.shape
    clean, corr = fwd.run_cache(model, clean_tokens), fwd.run_cache(model, corrupted_tokens)
    clean_metric = _check_metric_output(metric(clean.logits), "clean")
    corr_metric = _check_metric_output(metric(corr.logits), "corrupted")
    reader = _Reader(metric, w, n_pos)
    with torch.no_grad():
        check = reader(corr.resid_final if reader.read is None else corr.resid_final[:, reader.read])
    if not torch.allclose(check.float(), corr_metric, atol=1e-3, rtol=1e-3):
        raise ValueError(
            f"The metric's declared positions/vocab do not reproduce its value on the corrupted logits "
            f"(max abs difference {(check.float() - corr_metric).abs().max():.3g}): its `positions`, `vocab` and "
            f"`score` must satisfy metric(logits) == score(logits[rows, positions][..., vocab])."
        )

    shape = _n_cells(site, w, n_pos)
    total = shape[0] * shape[1]
    out = corr_metric.expand(total, -1).clone()
    if chunk_size is None:
        chunk_size = max(1, int(max_memory_mb * 2**20 // _cell_bytes(w, batch, n_pos)))
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size}: pass a positive number of cells per batched forward.")

    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=f"patching {site}", disable=not progress)
    groups: dict[int, list[_Plan]] = {}
    with torch.no_grad():
        for plan in _plans(site, w, clean, corr, skip_unchanged):
            if isinstance(plan, int):
                bar.update(1)
            else:
                groups.setdefault(plan.first, []).append(plan)
        for first, plans in sorted(groups.items()):
            plans.sort(key=lambda p: (p.layer, fwd.STAGES.index(p.stage)))
            for lo in range(0, len(plans), chunk_size):
                chunk = plans[lo:lo + chunk_size]
                starts = [fwd.Start(p.cell, p.layer, p.stage, p.build()) for p in chunk]
                cells, final = fwd.continue_from(w, corr, starts, first, reader.read)
                for cell, resid in zip(cells, final):
                    out[cell] = _check_metric_output(reader(resid), "patched")
                bar.update(len(chunk))
    bar.close()
    return PatchResult(site, SITES[site], out.reshape(*shape, -1), clean_metric, corr_metric, "activation")


# ---------------------------------------------------------------------------------------------------------
# The naive definition


def _hook(site: str, layer: int, index: int, group: int, clean: fwd.RunCache, corr: fwd.RunCache
          ) -> tuple[str, Callable[[Tensor, Any], Tensor]]:
    """The ``(hook name, hook function)`` that patches one cell in a bridge run."""
    if site in POSITION_SITES:
        source = {"resid_pre": clean.resid_pre, "attn_out": clean.attn_out, "mlp_out": clean.mlp_out}[site][layer]

        def patch_pos(act: Tensor, hook: Any) -> Tensor:
            act = act.clone()
            act[:, index] = source[:, index]
            return act

        return f"blocks.{layer}.hook_{site}", patch_pos
    if site == "z":
        def patch_z(act: Tensor, hook: Any) -> Tensor:
            act = act.clone()
            act[:, :, index] = clean.z[layer][:, :, index]
            return act

        return f"blocks.{layer}.attn.hook_z", patch_z
    if site == "pattern":
        def patch_pattern(act: Tensor, hook: Any) -> Tensor:
            act = act.clone()
            act[:, index] = clean.pattern[layer][:, index]
            return act

        return f"blocks.{layer}.attn.hook_pattern", patch_pattern
    if site == "v":
        value = torch.einsum("bqk,bke->bqe", corr.pattern[layer][:, index], clean.v[layer][:, :, index // group])

        def patch_v(act: Tensor, hook: Any) -> Tensor:
            act = act.clone()
            act[:, :, index] = value
            return act

        return f"blocks.{layer}.attn.hook_z", patch_v

    def patch_v_kv(act: Tensor, hook: Any) -> Tensor:
        act = act.clone()
        act[:, :, index] = clean.v[layer][:, :, index]
        return act

    return f"blocks.{layer}.attn.hook_v", patch_v_kv


def reference_activation_patch(
    model: Any,
    clean_tokens: Int[Tensor, "batch pos"],
    corrupted_tokens: Int[Tensor, "batch pos"],
    metric: Metric,
    site: str,
    *,
    cells: list[tuple[int, int]] | None = None,
    progress: bool = False,
) -> PatchResult:
    """The definition :func:`activation_patch` is tested against: one ``model.run_with_hooks`` per cell.

    Slow (a full forward per cell). ``cells`` restricts the sweep to some ``(layer, index)`` cells; the others
    are NaN in ``per_prompt``.
    """
    clean_tokens, corrupted_tokens = _check_inputs(model, clean_tokens, corrupted_tokens, site)
    w = fwd.weights_of(model)
    clean, corr = fwd.run_cache(model, clean_tokens), fwd.run_cache(model, corrupted_tokens)
    clean_metric = _check_metric_output(metric(clean.logits), "clean")
    corr_metric = _check_metric_output(metric(corr.logits), "corrupted")
    shape = _n_cells(site, w, clean_tokens.shape[1])
    todo = cells if cells is not None else [(l, i) for l in range(shape[0]) for i in range(shape[1])]
    out = torch.full((*shape, corr_metric.shape[0]), math.nan)

    from tqdm.auto import tqdm

    with torch.no_grad():
        for layer, index in tqdm(todo, desc=f"reference {site}", disable=not progress):
            name, fn = _hook(site, layer, index, w.group, clean, corr)
            logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, fn)])
            out[layer, index] = _check_metric_output(metric(logits), "patched")
    return PatchResult(site, SITES[site], out, clean_metric, corr_metric, "reference")


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
    forward and one backward; with the clean run's activations (one more forward) it scores every cell
    of ``site`` at once. A screen, not a verdict (see the module docstring): confirm with
    :func:`activation_patch`.

    Each prompt's value is its metric's own linearisation. A metric that returns fewer values than token
    rows (e.g. ``LogProbDiffMetric``: 2B rows, B values) must read row ``r`` only for value ``r % B``.
    """
    clean_tokens, corrupted_tokens = _check_inputs(model, clean_tokens, corrupted_tokens, site)
    w = fwd.weights_of(model)
    rows, n_pos = clean_tokens.shape
    clean, corr = fwd.run_cache(model, clean_tokens), fwd.run_cache(model, corrupted_tokens)
    clean_metric = _check_metric_output(metric(clean.logits), "clean")
    corr_metric = _check_metric_output(metric(corr.logits), "corrupted")
    n_out = corr_metric.shape[0]
    if rows % n_out:
        raise ValueError(f"The metric returns {n_out} values for {rows} token rows: attribution patching needs "
                         f"row r to feed value r % {n_out}, so the rows must be a multiple of the values.")
    reader = _Reader(metric, w, n_pos)
    names = {"resid_pre": "resid_pre", "attn_out": "attn_out", "mlp_out": "mlp_out", "z": "z",
             "pattern": "pattern", "v": "z", "v_kv": "v"}
    wanted = names[site]
    acts: dict[int, Tensor] = {}

    def record(name: str, layer: int, act: Tensor) -> Tensor:
        if name == wanted:
            act.retain_grad()
            acts[layer] = act
        return act

    with torch.enable_grad():
        embed = w.W_E[corrupted_tokens].detach().requires_grad_(True)
        final_logits = fwd.full_forward(w, embed, corr.cos, corr.sin, reader.read, reader.vocab, record)
        if reader.structured:
            value = metric.score(final_logits[reader.rows, reader.index])  # type: ignore[attr-defined]
        else:
            value = metric(final_logits)
        value.sum().backward()

    shape = _n_cells(site, w, n_pos)
    per_row = torch.zeros(*shape, rows)
    with torch.no_grad():
        for layer in range(w.n_layers):
            grad = acts[layer].grad
            if site in POSITION_SITES:
                clean_act = {"resid_pre": clean.resid_pre, "attn_out": clean.attn_out, "mlp_out": clean.mlp_out}[site]
                delta = clean_act[layer] - acts[layer].detach()
                per_row[layer] = (delta * grad).sum(-1).T
            elif site == "z":
                per_row[layer] = ((clean.z[layer] - acts[layer].detach()) * grad).sum((1, 3)).T
            elif site == "pattern":
                per_row[layer] = ((clean.pattern[layer] - acts[layer].detach()) * grad).sum((2, 3)).T
            elif site == "v":
                dv = (clean.v[layer] - corr.v[layer]).repeat_interleave(w.group, dim=2)
                dz = torch.einsum("bhqk,bkhe->bqhe", corr.pattern[layer], dv)
                per_row[layer] = (dz * grad).sum((1, 3)).T
            else:
                per_row[layer] = ((clean.v[layer] - acts[layer].detach()) * grad).sum((1, 3)).T
    per_prompt = per_row.unflatten(-1, (rows // n_out, n_out)).sum(-2) + corr_metric
    return PatchResult(site, SITES[site], per_prompt, clean_metric, corr_metric, "attribution")

