"""A functional forward pass of a Qwen2-style bridge that can start in the middle of the model.

Activation patching changes one activation and re-runs the model. Most of that re-run is wasted: the
blocks before the patched layer compute exactly what the corrupted run computed, the positions before a
patched position are untouched (attention is causal), and the unembedding computes 151,936 logits per
position of which a logit-difference metric reads a handful at one position. This module is the
machinery that skips that work. It reads the bridge's processed (compatibility-mode) weights into a
:class:`Weights` record, runs the clean and corrupted inputs once through the bridge to cache what a
patched run may need (:class:`RunCache`), and then :func:`continue_from` runs many patched states at
once from the point where each one diverges from the corrupted run:

* each patched state *joins* the batch at the layer and stage (``pre``: before attention, ``mid``: before
  the MLP) where it was patched, so earlier blocks are never recomputed, and states patched at different
  layers share the same matrix multiplications from the layer where they are all present ("staircase");
* only positions ``>= first`` are computed; keys and values of earlier positions come from the corrupted
  cache, which is exact because nothing before ``first`` changed;
* in the last layer, queries and the MLP are computed only at the positions the metric reads, and the
  unembedding only for the vocabulary entries it reads.

Every step is the same arithmetic as the bridge's (RMS normalisation with folded weights, rotary
embeddings taken from the bridge's own ``rotary_emb.hook_cos/hook_sin``, grouped-query attention,
gated SiLU MLP), checked against ``run_with_hooks`` in ``tests/test_patching.py``. :func:`full_forward`
is the same forward from the embedding, recording activations for attribution patching (gradients).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["RunCache", "Start", "Weights", "continue_from", "full_forward", "run_cache", "weights_of"]

STAGES = ("pre", "mid")
"""Where a patched state enters a block: ``pre`` (its residual input) or ``mid`` (after attention)."""


@dataclass(frozen=True)
class Weights:
    """The processed weights of a Qwen2-style bridge, in the shapes the functional forward uses."""

    W_QKV: Float[Tensor, "layer d_model qkv"]
    b_QKV: Float[Tensor, "layer qkv"]
    W_O: Float[Tensor, "layer head d_head d_model"]
    W_O_flat: Float[Tensor, "layer hd d_model"]
    b_O: Float[Tensor, "layer d_model"]
    W_gate_in: Float[Tensor, "layer d_model two_mlp"]
    W_out: Float[Tensor, "layer d_mlp d_model"]
    W_E: Float[Tensor, "d_vocab d_model"]
    W_U: Float[Tensor, "d_model d_vocab"]
    b_U: Float[Tensor, " d_vocab"]
    n_heads: int
    n_kv_heads: int
    d_head: int
    eps: float

    @property
    def n_layers(self) -> int:
        return self.W_QKV.shape[0]

    @property
    def group(self) -> int:
        """Query heads per key/value head (heads ``g*group .. (g+1)*group-1`` share key/value head ``g``)."""
        return self.n_heads // self.n_kv_heads

    @property
    def d_mlp(self) -> int:
        return self.W_out.shape[1]


def _has_attr(obj: object, name: str) -> bool:
    try:
        getattr(obj, name)
    except Exception:  # noqa: BLE001 - the bridge raises several kinds for absent weights
        return False
    return True


def check_supported(bridge: object) -> None:
    """Raise a ValueError unless ``bridge`` looks like a Qwen2-style TransformerBridge in compatibility mode."""
    cfg = getattr(bridge, "cfg", None)
    needed = ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_gate", "W_out", "W_U", "W_E")
    missing = [n for n in needed if not _has_attr(bridge, n)]
    if cfg is None or missing:
        raise ValueError(
            f"model {type(bridge).__name__} is not supported by the fast patching engine (missing "
            f"{missing or 'cfg'}): pass the `.bridge` of circuit.models.load_model(...), a TransformerBridge "
            f"after enable_compatibility_mode()."
        )
    if getattr(cfg, "normalization_type", None) not in ("RMS", "RMSPre"):
        raise ValueError(f"normalization_type={cfg.normalization_type!r}: the engine implements RMS norm only.")
    if getattr(cfg, "positional_embedding_type", None) != "rotary":
        raise ValueError(f"positional_embedding_type={cfg.positional_embedding_type!r}: the engine implements "
                         f"rotary models (Qwen2) only.")
    for name in ("b_in", "b_out"):
        if _has_attr(bridge, name) and getattr(bridge, name) is not None:
            raise ValueError(f"the bridge has MLP bias {name}; the engine implements bias-free MLPs (Qwen2) only.")


def weights_of(bridge: object) -> Weights:
    """Read the bridge's processed weights (detached) into a :class:`Weights`."""
    check_supported(bridge)
    cfg = bridge.cfg  # type: ignore[attr-defined]
    with torch.no_grad():
        W_Q, W_K, W_V = (getattr(bridge, n).detach() for n in ("W_Q", "W_K", "W_V"))
        b_Q, b_K, b_V = (getattr(bridge, n).detach() for n in ("b_Q", "b_K", "b_V"))
        n_layers, n_heads, d_model, d_head = W_Q.shape
        n_kv = W_K.shape[1]
        flat = lambda w: einops.rearrange(w, "layer head d_model d_head -> layer d_model (head d_head)")  # noqa: E731
        W_QKV = torch.cat([flat(W_Q), flat(W_K), flat(W_V)], dim=-1).contiguous()
        b_QKV = torch.cat([b.reshape(n_layers, -1) for b in (b_Q, b_K, b_V)], dim=-1).contiguous()
        W_O = bridge.W_O.detach()  # type: ignore[attr-defined]
        W_O_flat = einops.rearrange(W_O, "layer head d_head d_model -> layer (head d_head) d_model").contiguous()
        gate, lin = bridge.W_gate.detach(), bridge.W_in.detach()  # type: ignore[attr-defined]
        W_gate_in = torch.cat([gate, lin], dim=-1).contiguous()
        return Weights(
            W_QKV=W_QKV, b_QKV=b_QKV, W_O=W_O, W_O_flat=W_O_flat, b_O=bridge.b_O.detach(),  # type: ignore[attr-defined]
            W_gate_in=W_gate_in, W_out=bridge.W_out.detach().contiguous(),  # type: ignore[attr-defined]
            W_E=bridge.W_E.detach(), W_U=bridge.W_U.detach(), b_U=bridge.b_U.detach(),  # type: ignore[attr-defined]
            n_heads=n_heads, n_kv_heads=n_kv, d_head=d_head, eps=float(cfg.eps),
        )


# ---------------------------------------------------------------------------------------------------------
# The pieces of a block


def rms(x: Float[Tensor, "... d_model"], eps: float) -> Float[Tensor, "... d_model"]:
    """RMS normalisation with the weight folded into the next layer: ``x / sqrt(mean(x^2) + eps)``."""
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def rotate(x: Float[Tensor, "batch pos head d_head"], cos: Float[Tensor, "pos d_head"],
           sin: Float[Tensor, "pos d_head"]) -> Float[Tensor, "batch pos head d_head"]:
    """Rotary embedding (HF's rotate-half convention) at the positions that ``cos``/``sin`` cover."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def qkv(w: Weights, layer: int, normed: Float[Tensor, "batch pos d_model"]) -> tuple[Tensor, Tensor, Tensor]:
    """Queries ``[batch pos head d_head]``, keys and values ``[batch pos kv_head d_head]`` (before rotary)."""
    out = normed @ w.W_QKV[layer] + w.b_QKV[layer]
    hq, hk = w.n_heads * w.d_head, w.n_kv_heads * w.d_head
    q, k, v = out.split([hq, hk, hk], dim=-1)
    return (q.unflatten(-1, (w.n_heads, w.d_head)), k.unflatten(-1, (w.n_kv_heads, w.d_head)),
            v.unflatten(-1, (w.n_kv_heads, w.d_head)))


def attention_pattern(
    w: Weights,
    rot_q: Float[Tensor, "batch q head d_head"],
    rot_k: Float[Tensor, "batch k kv_head d_head"],
    query_pos: Int[Tensor, " q"],
) -> Float[Tensor, "batch head q k"]:
    """Causal softmax pattern of queries at absolute positions ``query_pos`` over keys ``0..k-1`` (GQA)."""
    q = einops.rearrange(rot_q, "b q (kv g) e -> b kv g q e", kv=w.n_kv_heads)
    scores = torch.einsum("bkgqe,bske->bkgqs", q, rot_k) / (w.d_head ** 0.5)
    keys = torch.arange(rot_k.shape[1], device=rot_k.device)
    masked = keys[None, :] > query_pos[:, None]
    scores = scores.masked_fill(masked, float("-inf"))
    return einops.rearrange(scores.softmax(-1), "b kv g q s -> b (kv g) q s")


def mix_values(w: Weights, pattern: Float[Tensor, "batch head q k"], v: Float[Tensor, "batch k kv_head d_head"]
               ) -> Float[Tensor, "batch q head d_head"]:
    """``z``: each query head's pattern applied to the values of its key/value group."""
    p = einops.rearrange(pattern, "b (kv g) q s -> b kv g q s", kv=w.n_kv_heads)
    z = torch.einsum("bkgqs,bske->bqkge", p, v)
    return einops.rearrange(z, "b q kv g e -> b q (kv g) e")


def attn_output(w: Weights, layer: int, z: Float[Tensor, "batch pos head d_head"]
                ) -> Float[Tensor, "batch pos d_model"]:
    """The attention block's output ``hook_attn_out`` from ``hook_z``."""
    return z.flatten(-2) @ w.W_O_flat[layer] + w.b_O[layer]


def mlp(w: Weights, layer: int, resid_mid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
    """``hook_mlp_out``: gated SiLU MLP of the normalised residual."""
    gate, lin = (rms(resid_mid, w.eps) @ w.W_gate_in[layer]).chunk(2, dim=-1)
    return (F.silu(gate) * lin) @ w.W_out[layer]


def unembed(w: Weights, resid: Float[Tensor, "... d_model"], vocab: Int[Tensor, " v"] | None) -> Float[Tensor, "... v"]:
    """Logits of the final residual, only for the token ids ``vocab`` (all when ``None``)."""
    normed = rms(resid, w.eps)
    if vocab is None:
        return normed @ w.W_U + w.b_U
    return normed @ w.W_U[:, vocab] + w.b_U[vocab]


# ---------------------------------------------------------------------------------------------------------
# Caches of the clean and corrupted runs


CACHED_HOOKS = ("hook_resid_pre", "hook_resid_mid", "hook_attn_out", "hook_mlp_out", "attn.hook_rot_k",
                "attn.hook_v", "attn.hook_z", "attn.hook_pattern")


@dataclass
class RunCache:
    """What the patched runs need from one bridge run, per layer (lists indexed by layer)."""

    logits: Float[Tensor, "batch pos d_vocab"]
    resid_pre: list[Tensor]
    resid_mid: list[Tensor]
    attn_out: list[Tensor]
    mlp_out: list[Tensor]
    rot_k: list[Tensor]
    v: list[Tensor]
    z: list[Tensor]
    pattern: list[Tensor]
    resid_final: Float[Tensor, "batch pos d_model"]
    cos: Float[Tensor, "pos d_head"]
    sin: Float[Tensor, "pos d_head"]


def run_cache(bridge: object, tokens: Int[Tensor, "batch pos"]) -> RunCache:
    """One bridge forward of ``tokens``, keeping the activations the engine reads."""
    n_layers = bridge.cfg.n_layers  # type: ignore[attr-defined]
    last = f"blocks.{n_layers - 1}.hook_resid_post"

    def keep(name: str) -> bool:
        return name.endswith(CACHED_HOOKS) or name == last or name in ("rotary_emb.hook_cos", "rotary_emb.hook_sin")

    with torch.no_grad():
        logits, cache = bridge.run_with_cache(tokens, names_filter=keep)  # type: ignore[attr-defined]
    get = lambda hook: [cache[f"blocks.{l}.{hook}"].detach() for l in range(n_layers)]  # noqa: E731
    cos, sin = cache["rotary_emb.hook_cos"], cache["rotary_emb.hook_sin"]
    return RunCache(
        logits=logits.detach(), resid_pre=get("hook_resid_pre"), resid_mid=get("hook_resid_mid"),
        attn_out=get("hook_attn_out"), mlp_out=get("hook_mlp_out"), rot_k=get("attn.hook_rot_k"),
        v=get("attn.hook_v"), z=get("attn.hook_z"), pattern=get("attn.hook_pattern"),
        resid_final=cache[last].detach(), cos=cos.reshape(-1, cos.shape[-1])[-tokens.shape[1]:].detach(),
        sin=sin.reshape(-1, sin.shape[-1])[-tokens.shape[1]:].detach(),
    )


# ---------------------------------------------------------------------------------------------------------
# Running patched states from where they diverge


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
    w: Weights,
    corrupted: RunCache,
    starts: Sequence[Start],
    first: int,
    read: Int[Tensor, " read"] | None,
) -> tuple[list[int], Float[Tensor, "cell batch read d_model"]]:
    """Run every patched state in ``starts`` (all diverging at position ``first``) to the final residual.

    Args:
        w: the model's weights.
        corrupted: the corrupted run's cache (keys/values of positions ``< first``, final residual).
        starts: patched states; each joins the batch at its layer and stage.
        first: the first position that differs from the corrupted run in every start.
        read: sorted absolute positions whose final residual is wanted (``None``: all positions).

    Returns:
        The cells in output order and their final residuals at ``read`` positions.
    """
    n_layers = w.n_layers
    batch, n_pos = corrupted.resid_final.shape[:2]
    read_pos = torch.arange(n_pos) if read is None else read.cpu()
    # Positions computed in the last layer: the read ones that can have changed.
    last_pos = read_pos[read_pos >= first]
    last_idx = (last_pos - first).to(w.W_O.device)
    device = w.W_O.device
    cos, sin = corrupted.cos[first:], corrupted.sin[first:]
    later = torch.arange(first, n_pos, device=device)

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
            rows = x.shape[0]
            n_cells = rows // batch
            q, k, v = qkv(w, layer, rms(x, w.eps))
            if is_last:
                q, x_q, q_pos = q[:, last_idx], x[:, last_idx], last_pos.to(device)
            else:
                x_q, q_pos = x, later
            rot_q = rotate(q, cos[q_pos - first], sin[q_pos - first])
            rot_k = rotate(k, cos, sin)
            if first > 0:
                past_k = corrupted.rot_k[layer][:, :first].repeat(n_cells, 1, 1, 1)
                past_v = corrupted.v[layer][:, :first].repeat(n_cells, 1, 1, 1)
                rot_k, v = torch.cat([past_k, rot_k], dim=1), torch.cat([past_v, v], dim=1)
            z = mix_values(w, attention_pattern(w, rot_q, rot_k, q_pos), v)
            x = x_q + attn_output(w, layer, z)
        x = join(x, layer, "mid", trim=is_last)
        if x is not None:
            x = x + mlp(w, layer, x)
    x = join(x, n_layers, "pre", trim=True)
    assert x is not None, "continue_from needs at least one start"
    out = x.unflatten(0, (len(cells), batch))
    if len(last_pos) == len(read_pos):
        return cells, out
    # Read positions before `first` did not change: take them from the corrupted run.
    full = corrupted.resid_final[:, read_pos.to(device)].expand(len(cells), -1, -1, -1).clone()
    full[:, :, (read_pos >= first).to(device)] = out
    return cells, full


# ---------------------------------------------------------------------------------------------------------
# A full forward that records activations (attribution patching)


def full_forward(
    w: Weights,
    embed: Float[Tensor, "batch pos d_model"],
    cos: Float[Tensor, "pos d_head"],
    sin: Float[Tensor, "pos d_head"],
    read: Int[Tensor, " read"] | None,
    vocab: Int[Tensor, " v"] | None,
    record: Callable[[str, int, Tensor], Tensor] | None = None,
) -> Float[Tensor, "batch read v"]:
    """The whole model from its embedding (``W_E[tokens]``, e.g. a leaf that requires grad).

    ``record(name, layer, act)`` sees (and may replace) each activation.

    ``name`` is one of ``resid_pre, v, pattern, z, attn_out, mlp_out``. Returns logits at ``read`` positions
    (all when ``None``) for ``vocab`` entries (all when ``None``).
    """
    rec = record or (lambda name, layer, act: act)
    positions = torch.arange(embed.shape[1], device=embed.device)
    x = embed
    for layer in range(w.n_layers):
        x = rec("resid_pre", layer, x if layer else x + 0.0)
        q, k, v = qkv(w, layer, rms(x, w.eps))
        v = rec("v", layer, v)
        pattern = rec("pattern", layer, attention_pattern(w, rotate(q, cos, sin), rotate(k, cos, sin), positions))
        z = rec("z", layer, mix_values(w, pattern, v))
        x = x + rec("attn_out", layer, attn_output(w, layer, z))
        x = x + rec("mlp_out", layer, mlp(w, layer, x))
    if read is not None:
        x = x[:, read]
    return unembed(w, x, vocab)
