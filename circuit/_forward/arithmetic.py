"""The block arithmetic of a TransformerBridge, chosen from its features: the fast engine's one seam.

The engine (:mod:`circuit._forward.engine`) knows nothing of architectures: it asks a
:class:`BlockArithmetic` for each step of a block. :func:`arithmetic_of` builds one from what the bridge
*has* (its config and its components), never from a model's name:

=============================== =========================================================================
feature                         read from
=============================== =========================================================================
pre-norms / post-norms          the block's ``ln1``, ``ln2`` / ``ln1_post``, ``ln2_post`` components (RMS
                                or LayerNorm, folded or not, Gemma's ``1 + w``: the bridge's own modules
                                are called, so the convention is theirs)
q/k/v projections, biases       ``W_Q, W_K, W_V, b_Q, b_K, b_V`` (absent biases are zeros)
per-head or all-head q/k norm   the attention's ``q_norm``/``k_norm`` (by the size of their weight)
positions                       ``cfg.positional_embedding_type``: ``rotary`` (cos/sin from the HF model's
                                own ``rotary_emb``, so rope scaling is the model's; partial rotary from
                                their width) or ``standard`` (learned, already in ``hook_resid_pre``)
attention scale, soft-cap,      the HF attention module's ``scaling``, ``attn_logit_softcapping`` and
sliding window                  ``sliding_window`` (per layer: Gemma-2 alternates windows)
attention output                ``W_O, b_O``, then ``ln1_post`` where the block has it
MLP                             the block's ``mlp`` component on the normalised residual (gated or not,
                                fused or not, any activation, biases), then ``ln2_post``
parallel attention and MLP      ``cfg.parallel_attn_mlp`` (GPT-NeoX): both read the block's input
unembedding                     ``ln_final``, ``W_U``, ``b_U``, ``cfg.output_logits_soft_cap``
=============================== =========================================================================

A bridge with a feature outside this table (ALiBi or relative positions, interleaved rotary, two rotary
tables, ...) raises :class:`UnsupportedArchitecture` naming it; :func:`circuit.patching.activation_patch`
then takes the generic exact path (a batched hook sweep). Whatever the features say, the engine checks
that the arithmetic reproduces the bridge's own forward on the inputs of each sweep before using it
(:func:`circuit._forward.engine.self_check`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

__all__ = ["BlockArithmetic", "BridgeArithmetic", "UnsupportedArchitecture", "arithmetic_of", "optional_weight"]


class UnsupportedArchitecture(ValueError):
    """The bridge has a feature the fast engine's arithmetic does not implement (the message names it)."""


class BlockArithmetic(Protocol):
    """What the engine needs from an architecture: each step of a block, and the unembedding."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    parallel: bool
    """Attention and MLP both read the block's input (no ``mid`` stage)."""

    def qkv(self, layer: int, resid: Float[Tensor, "batch pos d_model"]) -> tuple[Tensor, Tensor, Tensor]:
        """Queries ``[batch pos head d_head]``, keys and values ``[batch pos kv_head d_head]`` (before positions)."""
        ...

    def rotate(self, x: Float[Tensor, "batch pos n d_head"], positions: Int[Tensor, " pos"]) -> Tensor:
        """Queries or keys at absolute ``positions`` with the positional encoding applied."""
        ...

    def pattern(self, layer: int, q: Tensor, k: Tensor, query_pos: Int[Tensor, " q"]) -> Float[Tensor, "batch head q k"]:
        """Attention pattern of queries at ``query_pos`` over keys ``0..k-1``."""
        ...

    def attn_out(self, layer: int, z: Float[Tensor, "batch pos head d_head"]) -> Float[Tensor, "batch pos d_model"]:
        """``hook_attn_out`` from ``hook_z``."""
        ...

    def mlp_out(self, layer: int, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """``hook_mlp_out`` from the residual the MLP reads."""
        ...

    def unembed(self, resid: Float[Tensor, "... d_model"], vocab: Int[Tensor, " v"] | None) -> Float[Tensor, "... v"]:
        """Logits of a final residual, only for the token ids ``vocab`` (all when ``None``)."""
        ...


def optional_weight(owner: Any, name: str) -> Tensor | None:
    """``owner.<name>``, or ``None`` where the bridge has no such weight (TL 4 raises for bias-free models)."""
    try:
        value = getattr(owner, name)
    except (AttributeError, NotImplementedError, RuntimeError, KeyError):
        return None
    return value if isinstance(value, Tensor) else None


def _component(module: Any, name: str) -> Any | None:
    try:
        return module.get_submodule(name) if hasattr(module, "get_submodule") else None
    except AttributeError:
        return None


def _hf_attention(block: Any) -> Any:
    attn = block.attn
    return getattr(attn, "original_component", None) or getattr(attn, "_original_component", None)


def _rotary_module(bridge: Any) -> Any:
    hf = getattr(bridge, "original_model", None)
    if hf is None:
        raise UnsupportedArchitecture("the bridge has no original_model to take rotary cos/sin from")
    found = [m for n, m in hf.named_modules() if n.split(".")[-1] == "rotary_emb"]
    if len(found) != 1:
        raise UnsupportedArchitecture(f"rotary positions with {len(found)} rotary tables (the engine implements one)")
    return found[0]


@dataclass
class BridgeArithmetic:
    """:class:`BlockArithmetic` of a bridge in compatibility mode (see the module docstring)."""

    bridge: Any
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    parallel: bool
    W_QKV: Float[Tensor, "layer d_model qkv"]
    b_QKV: Float[Tensor, "layer qkv"]
    W_O: Float[Tensor, "layer head d_head d_model"]
    W_O_flat: Float[Tensor, "layer hd d_model"]
    b_O: Float[Tensor, "layer d_model"]
    W_U: Float[Tensor, "d_model d_vocab"]
    b_U: Float[Tensor, " d_vocab"]
    scaling: tuple[float, ...]
    windows: tuple[int | None, ...]
    attn_softcap: tuple[float | None, ...]
    logit_softcap: float | None
    rotary: Any | None
    gated_mlp: tuple[Tensor, Tensor, Any] | None = field(default=None, repr=False)
    """``(W_gate_in [layer d_model 2*d_mlp], W_out, activation)`` of a bias-free gated MLP, computed with two
    matrix multiplications; ``None``: the block's own MLP component is called."""
    _cos_sin: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False)

    @property
    def group(self) -> int:
        """Query heads per key/value head."""
        return self.n_heads // self.n_kv_heads

    @property
    def dtype(self) -> torch.dtype:
        return self.W_O.dtype

    @property
    def device(self) -> torch.device:
        return self.W_O.device

    def _block(self, layer: int) -> Any:
        return self.bridge.blocks[layer]

    def _norm(self, layer: int, name: str, x: Tensor) -> Tensor:
        module = _component(self._block(layer), name)
        return x if module is None else module(x)

    def qkv(self, layer: int, resid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = self._norm(layer, "ln1", resid)
        out = x @ self.W_QKV[layer] + self.b_QKV[layer]
        hq, hk = self.n_heads * self.d_head, self.n_kv_heads * self.d_head
        q, k, v = out.split([hq, hk, hk], dim=-1)
        q = q.unflatten(-1, (self.n_heads, self.d_head))
        k, v = k.unflatten(-1, (self.n_kv_heads, self.d_head)), v.unflatten(-1, (self.n_kv_heads, self.d_head))
        attn = self._block(layer).attn
        for name in ("q_norm", "k_norm"):
            norm = _component(attn, name)
            if norm is None:
                continue
            x_ = q if name == "q_norm" else k
            weight = optional_weight(norm, "weight")
            per_head = weight is None or weight.numel() == self.d_head
            out = norm(x_) if per_head else norm(x_.flatten(-2)).unflatten(-1, x_.shape[-2:])
            q, k = (out, k) if name == "q_norm" else (q, out)
        return q, k, v

    def cos_sin(self, n_pos: int) -> tuple[Tensor, Tensor]:
        """Rotary ``cos, sin`` ``[pos, rotary_dim]`` for at least positions ``0..n_pos-1`` (from the HF model)."""
        known = next(iter(self._cos_sin.values()), None)
        if known is None or known[0].shape[0] < n_pos:
            positions = torch.arange(n_pos, device=self.device)[None]
            probe = torch.zeros(1, dtype=self.dtype, device=self.device)
            with torch.no_grad():
                cos, sin = self.rotary(probe, positions)
            self._cos_sin = {0: (cos[0].to(self.dtype), sin[0].to(self.dtype))}
        return self._cos_sin[0]

    def rotate(self, x: Tensor, positions: Tensor) -> Tensor:
        if self.rotary is None or positions.numel() == 0:
            return x
        cos, sin = self.cos_sin(int(positions.max()) + 1)
        cos, sin = cos[positions][:, None], sin[positions][:, None]
        width = cos.shape[-1]
        rot, rest = x[..., :width], x[..., width:]
        half = width // 2
        rotated = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
        out = rot * cos + rotated * sin
        return out if rest.shape[-1] == 0 else torch.cat([out, rest], dim=-1)

    def pattern(self, layer: int, q: Tensor, k: Tensor, query_pos: Tensor) -> Tensor:
        grouped = einops.rearrange(q, "b q (kv g) e -> b kv g q e", kv=self.n_kv_heads)
        scores = torch.einsum("bkgqe,bske->bkgqs", grouped, k) * self.scaling[layer]
        cap = self.attn_softcap[layer]
        if cap is not None:
            scores = torch.tanh(scores / cap) * cap
        keys = torch.arange(k.shape[1], device=k.device)
        distance = query_pos[:, None] - keys[None, :]
        masked = distance < 0
        if self.windows[layer] is not None:
            masked = masked | (distance >= self.windows[layer])
        scores = scores.masked_fill(masked, float("-inf"))
        pattern = scores.float().softmax(-1).to(q.dtype)
        return einops.rearrange(pattern, "b kv g q s -> b (kv g) q s")

    def attn_out(self, layer: int, z: Tensor) -> Tensor:
        out = z.flatten(-2) @ self.W_O_flat[layer] + self.b_O[layer]
        return self._norm(layer, "ln1_post", out)

    def mlp_out(self, layer: int, resid: Tensor) -> Tensor:
        block = self._block(layer)
        name = "ln2" if _component(block, "ln2") is not None or not self.parallel else "ln1"
        x = self._norm(layer, name, resid)
        if self.gated_mlp is None:
            out = block.mlp(x)
        else:
            W_gate_in, W_out, activation = self.gated_mlp
            gate, lin = (x @ W_gate_in[layer]).chunk(2, dim=-1)
            out = (activation(gate) * lin) @ W_out[layer]
        return self._norm(layer, "ln2_post", out)

    def unembed(self, resid: Tensor, vocab: Tensor | None) -> Tensor:
        normed = self.bridge.ln_final(resid)
        if vocab is None:
            logits = normed @ self.W_U + self.b_U
        else:
            logits = normed @ self.W_U[:, vocab] + self.b_U[vocab]
        if self.logit_softcap is not None:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits


def _gated_mlp(bridge: Any) -> tuple[Tensor, Tensor, Any] | None:
    """The fused weights of a bias-free gated MLP with an activation TransformerLens resolves, or ``None``."""
    if not getattr(bridge.cfg, "gated_mlp", False):
        return None
    weights = [optional_weight(bridge, n) for n in ("W_gate", "W_in", "W_out")]
    if any(w is None for w in weights) or any(optional_weight(bridge, n) is not None for n in ("b_in", "b_out")):
        return None
    try:
        from transformer_lens.model_bridge.generalized_components.gated_mlp import resolve_activation_fn

        activation = resolve_activation_fn(bridge.blocks[0].mlp.config)
    except (ImportError, AttributeError, ValueError):
        return None
    W_gate, W_in, W_out = (w.detach() for w in weights)
    return torch.cat([W_gate, W_in], dim=-1).contiguous(), W_out.contiguous(), activation


def _cap(value: Any) -> float | None:
    return float(value) if value is not None and float(value) > 0 else None


def arithmetic_of(bridge: Any) -> BridgeArithmetic:
    """The block arithmetic of ``bridge``, from its features (module docstring).

    Raises:
        UnsupportedArchitecture: a feature the engine does not implement (named in the message), or not a
            TransformerBridge in compatibility mode.
    """
    cfg = getattr(bridge, "cfg", None)
    blocks = getattr(bridge, "blocks", None)
    needed = ("W_Q", "W_K", "W_V", "W_O", "W_U")
    missing = [n for n in needed if optional_weight(bridge, n) is None]
    if cfg is None or blocks is None or missing:
        raise UnsupportedArchitecture(
            f"{type(bridge).__name__} is not a TransformerBridge in compatibility mode (missing "
            f"{missing or 'cfg/blocks'}): pass the `.bridge` of circuit.models.load_model(...).")
    problems = []
    positions = getattr(cfg, "positional_embedding_type", None)
    rotary = None
    if positions == "rotary":
        if getattr(cfg, "rotary_adjacent_pairs", False):
            problems.append("interleaved (adjacent-pair) rotary embeddings")
        try:
            rotary = _rotary_module(bridge)
        except UnsupportedArchitecture as error:
            problems.append(str(error))
    elif positions != "standard":
        problems.append(f"positional_embedding_type={positions!r} (the engine implements rotary and learned)")
    hf_layers = [_hf_attention(block) for block in blocks]
    if any(attn is None for attn in hf_layers):
        problems.append("attention components without their HF module")
    if getattr(cfg, "scale_attn_by_inverse_layer_idx", False) or any(
            getattr(getattr(a, "config", None), "scale_attn_by_inverse_layer_idx", False) for a in hf_layers):
        problems.append("attention scaled by the inverse layer index")
    for block in blocks:
        if _component(block, "mlp") is None:
            problems.append("a block without an MLP component")
            break
    if problems:
        raise UnsupportedArchitecture("; ".join(problems))

    with torch.no_grad():
        W_Q, W_K, W_V, W_O = (optional_weight(bridge, n).detach() for n in ("W_Q", "W_K", "W_V", "W_O"))
        n_layers, n_heads, _, d_head = W_Q.shape
        n_kv = W_K.shape[1]
        if n_heads % n_kv:
            raise UnsupportedArchitecture(f"{n_heads} query heads are not a multiple of {n_kv} key/value heads")

        def bias(name: str, shape: tuple[int, ...]) -> Tensor:
            value = optional_weight(bridge, name)
            return torch.zeros(shape, dtype=W_O.dtype, device=W_O.device) if value is None else value.detach()

        W_U = optional_weight(bridge, "W_U").detach()
        d_model = W_O.shape[-1]
        flat = lambda w: einops.rearrange(w, "layer head d_model d_head -> layer d_model (head d_head)")  # noqa: E731
        biases = [bias(n, shape).reshape(n_layers, -1) for n, shape in (
            ("b_Q", (n_layers, n_heads, d_head)), ("b_K", (n_layers, n_kv, d_head)), ("b_V", (n_layers, n_kv, d_head)))]
        return BridgeArithmetic(
            bridge=bridge, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv, d_head=d_head,
            parallel=bool(getattr(cfg, "parallel_attn_mlp", False)),
            W_QKV=torch.cat([flat(W_Q), flat(W_K), flat(W_V)], dim=-1).contiguous(),
            b_QKV=torch.cat(biases, dim=-1).contiguous(), W_O=W_O,
            W_O_flat=einops.rearrange(W_O, "layer head d_head d_model -> layer (head d_head) d_model").contiguous(),
            b_O=bias("b_O", (n_layers, d_model)), gated_mlp=_gated_mlp(bridge),
            W_U=W_U, b_U=bias("b_U", (W_U.shape[1],)),
            scaling=tuple(float(getattr(a, "scaling", None) or 1 / math.sqrt(d_head)) for a in hf_layers),
            windows=tuple(getattr(a, "sliding_window", None) or None for a in hf_layers),
            attn_softcap=tuple(_cap(getattr(a, "attn_logit_softcapping", None)) for a in hf_layers),
            logit_softcap=_cap(getattr(cfg, "output_logits_soft_cap", None)),
            rotary=rotary,
        )
