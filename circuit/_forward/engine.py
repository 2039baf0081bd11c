"""A functional forward pass that can start in the middle of the model, for any block arithmetic.

Activation patching changes one activation and re-runs the model. Most of that re-run is wasted: the
blocks before the patched layer compute exactly what the corrupted run computed, the positions before a
patched position are untouched (attention is causal), and the unembedding computes 151,936 logits per
position of which a logit-difference metric reads a handful at one position. This module is the
machinery that skips that work. It runs the clean and corrupted inputs once through the bridge to cache
what a patched run may need (:class:`RunCache`), and then :func:`continue_from` runs many patched states
at once from the point where each one diverges from the corrupted run:

* each patched state *joins* the batch at the layer and stage (``pre``: before attention, ``mid``: before
  the MLP) where it was patched, so earlier blocks are never recomputed, and states patched at different
  layers share the same matrix multiplications from the layer where they are all present ("staircase");
* only positions ``>= first`` are computed; keys and values of earlier positions come from the corrupted
  cache, which is exact because nothing before ``first`` changed;
* in the last layer, queries and the MLP are computed only at the positions the metric reads, and the
  unembedding only for the vocabulary entries it reads.

The algorithm is architecture-free: every step of a block is a call to a
:class:`~circuit._forward.arithmetic.BlockArithmetic` (norms, projections, positions, pattern, output,
MLP, unembedding), chosen from the bridge's features. Models whose attention and MLP read the same
residual (``parallel``) have no ``mid`` stage: a patch of the attention output joins the next layer.
:func:`self_check` measures how far the arithmetic is from the bridge's own forward on a cached run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuit._forward.arithmetic import BlockArithmetic

__all__ = ["STAGES", "RunCache", "Start", "continue_from", "run_cache", "self_check"]

STAGES = ("pre", "mid")
"""Where a patched state enters a block: ``pre`` (its residual input) or ``mid`` (after attention)."""

CACHED_HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_mlp_out", "attn.hook_v", "attn.hook_z",
                "attn.hook_pattern")


@dataclass
class RunCache:
    """What the patched runs need from one bridge run, per layer (lists indexed by layer).

    ``resid_mid`` is ``resid_pre + attn_out`` (the MLP's input; for parallel models only the sum, which
    no MLP reads). ``rot_k`` and ``kv_v`` are the keys (positions applied) and values that the arithmetic
    computes from ``resid_pre``: the past keys and values of a patched run.
    """

    logits: Float[Tensor, "batch pos d_vocab"]
    resid_pre: list[Tensor]
    resid_mid: list[Tensor]
    attn_out: list[Tensor]
    mlp_out: list[Tensor]
    v: list[Tensor]
    z: list[Tensor]
    pattern: list[Tensor]
    rot_k: list[Tensor]
    kv_v: list[Tensor]
    resid_final: Float[Tensor, "batch pos d_model"]


def run_cache(bridge: object, arith: BlockArithmetic | None, tokens: Int[Tensor, "batch pos"]) -> RunCache:
    """One bridge forward of ``tokens``, keeping the activations the engine reads (``rot_k`` and ``kv_v``
    only with an ``arith``: the generic hook path needs neither)."""
    n_layers = bridge.cfg.n_layers  # type: ignore[attr-defined]
    last = f"blocks.{n_layers - 1}.hook_resid_post"

    def keep(name: str) -> bool:
        return name.endswith(CACHED_HOOKS) or name == last

    with torch.no_grad():
        logits, cache = bridge.run_with_cache(tokens, names_filter=keep)  # type: ignore[attr-defined]
        get = lambda hook: [cache[f"blocks.{l}.{hook}"].detach() for l in range(n_layers)]  # noqa: E731
        resid_pre, attn_out = get("hook_resid_pre"), get("hook_attn_out")
        positions = torch.arange(tokens.shape[1], device=resid_pre[0].device)
        rot_k, kv_v = [], []
        for layer in range(n_layers if arith is not None else 0):
            _, k, v = arith.qkv(layer, resid_pre[layer])
            rot_k.append(arith.rotate(k, positions))
            kv_v.append(v)
    return RunCache(
        logits=logits.detach(), resid_pre=resid_pre, resid_mid=[r + a for r, a in zip(resid_pre, attn_out)],
        attn_out=attn_out, mlp_out=get("hook_mlp_out"), v=get("attn.hook_v"), z=get("attn.hook_z"),
        pattern=get("attn.hook_pattern"), rot_k=rot_k, kv_v=kv_v, resid_final=cache[last].detach(),
    )


@dataclass(frozen=True)
class Start:
    """A patched state of one cell: the residual at ``stage`` of ``layer`` for positions ``first..pos-1``.

    ``layer == n_layers`` (stage ``pre``) means the final residual stream (a patch of the last MLP).
    """

    cell: int
    layer: int
    stage: str
    resid: Float[Tensor, "batch later d_model"]


def continue_from(
    arith: BlockArithmetic,
    corrupted: RunCache,
    starts: Sequence[Start],
    first: int,
    read: Int[Tensor, " read"] | None,
) -> tuple[list[int], Float[Tensor, "cell batch read d_model"]]:
    """Run every patched state in ``starts`` (all diverging at position ``first``) to the final residual.

    Args:
        arith: the model's block arithmetic.
        corrupted: the corrupted run's cache (keys/values of positions ``< first``, final residual).
        starts: patched states; each joins the batch at its layer and stage (``mid`` only where the
            arithmetic is not parallel).
        first: the first position that differs from the corrupted run in every start.
        read: sorted absolute positions whose final residual is wanted (``None``: all positions).

    Returns:
        The cells in output order and their final residuals at ``read`` positions.
    """
    n_layers = arith.n_layers
    batch, n_pos = corrupted.resid_final.shape[:2]
    device = corrupted.resid_final.device
    read_pos = torch.arange(n_pos) if read is None else read.cpu()
    # Positions computed in the last layer: the read ones that can have changed.
    last_pos = read_pos[read_pos >= first]
    last_idx = (last_pos - first).to(device)
    later = torch.arange(first, n_pos, device=device)
    if arith.parallel and any(s.stage == "mid" for s in starts):
        raise ValueError("a parallel block has no 'mid' stage: start the patched state at the next layer")

    order = sorted(starts, key=lambda s: (s.layer, STAGES.index(s.stage)))
    cells: list[int] = []
    x: Tensor | None = None

    def join(x: Tensor | None, layer: int, stage: str, trim: bool) -> Tensor | None:
        new = [s for s in order if s.layer == layer and s.stage == stage]
        if not new:
            return x
        cells.extend(s.cell for s in new)
        block = torch.cat([s.resid for s in new], dim=0)
        if trim:
            block = block[:, last_idx]
        return block if x is None else torch.cat([x, block], dim=0)

    for layer in range(order[0].layer if order else n_layers, n_layers):
        is_last = layer == n_layers - 1
        x = join(x, layer, "pre", trim=False)
        if x is not None:
            n_cells = x.shape[0] // batch
            q, k, v = arith.qkv(layer, x)
            if is_last:
                q, x_q, q_pos = q[:, last_idx], x[:, last_idx], last_pos.to(device)
            else:
                x_q, q_pos = x, later
            rot_q, rot_k = arith.rotate(q, q_pos), arith.rotate(k, later)
            if first > 0:
                past_k = corrupted.rot_k[layer][:, :first].repeat(n_cells, 1, 1, 1)
                past_v = corrupted.kv_v[layer][:, :first].repeat(n_cells, 1, 1, 1)
                rot_k, v = torch.cat([past_k, rot_k], dim=1), torch.cat([past_v, v], dim=1)
            z = mix_values(arith.pattern(layer, rot_q, rot_k, q_pos), v, arith.n_kv_heads)
            attn = arith.attn_out(layer, z)
            x = x_q + attn + arith.mlp_out(layer, x_q) if arith.parallel else x_q + attn
        if not arith.parallel:
            x = join(x, layer, "mid", trim=is_last)
            if x is not None:
                x = x + arith.mlp_out(layer, x)
    x = join(x, n_layers, "pre", trim=True)
    assert x is not None, "continue_from needs at least one start"
    out = x.unflatten(0, (len(cells), batch))
    if len(last_pos) == len(read_pos):
        return cells, out
    # Read positions before `first` did not change: take them from the corrupted run.
    full = corrupted.resid_final[:, read_pos.to(device)].expand(len(cells), -1, -1, -1).clone()
    full[:, :, (read_pos >= first).to(device)] = out
    return cells, full


def mix_values(pattern: Float[Tensor, "batch head q k"], v: Float[Tensor, "batch k kv_head d_head"], n_kv_heads: int
               ) -> Float[Tensor, "batch q head d_head"]:
    """``z``: each query head's pattern applied to the values of its key/value group."""
    p = pattern.unflatten(1, (n_kv_heads, -1))
    z = torch.einsum("bkgqs,bske->bqkge", p, v)
    return z.flatten(2, 3)


def self_check(arith: BlockArithmetic, cache: RunCache) -> float:
    """How far the arithmetic's forward is from the bridge's: max abs error of the final residual,
    relative to its largest entry, when the cached run is re-run from its embedding."""
    with torch.no_grad():
        _, final = continue_from(arith, cache, [Start(0, 0, "pre", cache.resid_pre[0])], 0, None)
    scale = cache.resid_final.abs().max().clamp(min=1e-6)
    return float(((final[0] - cache.resid_final).abs().max() / scale).float())
