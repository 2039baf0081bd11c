"""Model mutants: copies of a model whose weights were changed in a way whose effect is known by construction.

Three changes, each on a ``transformers`` causal LM (Llama / Qwen2 / Mistral-style attention: ``q_proj``,
``k_proj``, ``v_proj``, ``o_proj`` and an MLP with ``down_proj``):

- :func:`permute_heads`: a *function-preserving relabeling*. The query heads of one layer are reordered
  (``q_proj`` rows and bias per query head, ``o_proj`` columns per query head), and with grouped-query
  attention the key/value heads with them (``k_proj``/``v_proj`` rows and bias per kv head), by a
  permutation that maps whole groups to groups, so every query head keeps reading the keys and values it
  read before. The model computes the same function (up to the order of a sum in ``o_proj``), but a head
  called ``L0H1`` is now another head: a claim that names a head by its slot must notice.
- :func:`ablate`: zero the output of a component (a head's ``o_proj`` columns, a layer's ``o_proj``, an
  MLP's ``down_proj``), so that it contributes nothing.
- :func:`random_weights`: a freshly initialized model of the same config (``from_config``, seeded), which
  does not do the task at all.

:func:`save_mutant` writes a mutant as a model folder (``config.json``, ``model.safetensors`` and the
original's tokenizer files) that the claims load like any other; :func:`max_logit_difference` is the check
that a relabeling really preserves the function.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["MutantError", "ablate", "group_permutation", "load_hf", "max_logit_difference", "permute_heads",
           "random_weights", "save_mutant"]

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja")
"""Files copied from the original folder into a mutant's, when present."""


class MutantError(ValueError):
    """A mutant that cannot be built as asked; the message names the input and the fix."""


def load_hf(folder: str | Path, dtype: str = "float32") -> Any:
    """The causal LM in ``folder`` on the CPU (safetensors only, no remote code), in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype), use_safetensors=True,
                                                 trust_remote_code=False)
    return model.eval()


def _attention(model: Any, layer: int) -> Any:
    layers = model.model.layers
    if not 0 <= layer < len(layers):
        raise MutantError(f"layer {layer} is out of range: the model has layers 0 to {len(layers) - 1}.")
    attn = layers[layer].self_attn
    if not all(hasattr(attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")):
        raise MutantError(f"layer {layer}'s attention has no separate q/k/v/o projections "
                          f"({type(attn).__name__}): use a Llama/Qwen2-style model.")
    return attn


def _shape(model: Any) -> tuple[int, int, int]:
    """``(n_heads, n_kv_heads, d_head)`` of the model's attention."""
    cfg = model.config
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    return n_heads, n_kv, d_head


def group_permutation(head: int, other: int, n_heads: int, n_kv_heads: int) -> tuple[list[int], list[int]]:
    """``(query order, kv order)``: new slot ``s`` holds old query head ``order[s]`` (old kv head ``kv[s]``),
    with ``head`` and ``other`` trading slots and every other head staying in its slot or moving with its
    group. Groups map to groups (the kv order swaps the two heads' groups when they differ), so each query
    head keeps its own keys and values.
    """
    group = n_heads // n_kv_heads
    for name, h in (("head", head), ("other", other)):
        if not 0 <= h < n_heads:
            raise MutantError(f"{name} {h} is out of range: a layer has heads 0 to {n_heads - 1}.")
    ga, gb = head // group, other // group
    kv = list(range(n_kv_heads))
    kv[ga], kv[gb] = kv[gb], kv[ga]
    order = [kv[s // group] * group + s % group for s in range(n_heads)]

    def swap(i: int, j: int) -> None:
        order[i], order[j] = order[j], order[i]

    swap(head, order.index(other))  # slot `head` now holds `other` (same group after the group swap)
    swap(other, order.index(head))
    return order, kv


def _rows(weight: Any, order: Sequence[int], size: int) -> Any:
    return weight.unflatten(0, (-1, size))[list(order)].flatten(0, 1)


def permute_heads(model: Any, layer: int, head: int, other: int) -> tuple[list[int], list[int]]:
    """Let query heads ``head`` and ``other`` of ``layer`` trade slots, in place (see :func:`group_permutation`);
    returns ``(query order, kv order)``. The function is preserved: check it with :func:`max_logit_difference`."""
    import torch

    n_heads, n_kv, d_head = _shape(model)
    attn = _attention(model, layer)
    order, kv = group_permutation(head, other, n_heads, n_kv)
    with torch.no_grad():
        attn.q_proj.weight.copy_(_rows(attn.q_proj.weight, order, d_head))
        if attn.q_proj.bias is not None:
            attn.q_proj.bias.copy_(_rows(attn.q_proj.bias, order, d_head))
        for proj in (attn.k_proj, attn.v_proj):
            proj.weight.copy_(_rows(proj.weight, kv, d_head))
            if proj.bias is not None:
                proj.bias.copy_(_rows(proj.bias, kv, d_head))
        attn.o_proj.weight.copy_(_rows(attn.o_proj.weight.T, order, d_head).T)
    return order, kv


def ablate(model: Any, kind: str, layer: int, head: int | None = None) -> None:
    """Zero a component's output, in place: ``kind`` is ``"head"`` (``o_proj`` columns of ``head``),
    ``"attn"`` (the layer's ``o_proj``) or ``"mlp"`` (the layer's MLP ``down_proj``)."""
    import torch

    with torch.no_grad():
        if kind == "head":
            n_heads, _, d_head = _shape(model)
            if head is None or not 0 <= head < n_heads:
                raise MutantError(f"head {head} is out of range: a layer has heads 0 to {n_heads - 1}.")
            _attention(model, layer).o_proj.weight[:, head * d_head:(head + 1) * d_head] = 0
        elif kind == "attn":
            o_proj = _attention(model, layer).o_proj
            o_proj.weight.zero_()
            if o_proj.bias is not None:
                o_proj.bias.zero_()
        elif kind == "mlp":
            _attention(model, layer)  # range check
            down = getattr(model.model.layers[layer].mlp, "down_proj", None)
            if down is None:
                raise MutantError(f"layer {layer}'s MLP has no down_proj: use a Llama/Qwen2-style model.")
            down.weight.zero_()
            if down.bias is not None:
                down.bias.zero_()
        else:
            raise MutantError(f"kind={kind!r}: ablate a 'head', an 'attn' layer or an 'mlp' layer.")


def random_weights(folder: str | Path, seed: int = 0) -> Any:
    """A model of ``folder``'s config with transformers' own initialization, seeded (no weights read)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False).eval()


def max_logit_difference(a: Any, b: Any, tokens: Any) -> float:
    """Largest |logit difference| between models ``a`` and ``b`` on ``tokens`` ``[batch, pos]``."""
    import torch

    with torch.no_grad():
        return float((a(tokens).logits - b(tokens).logits).abs().max())


def save_mutant(model: Any, original: str | Path, out: str | Path) -> Path:
    """Write ``model`` as a model folder ``out`` (config, safetensors weights) with ``original``'s tokenizer
    files; an existing ``out`` is replaced."""
    out, original = Path(out), Path(original)
    if out.exists():
        shutil.rmtree(out)
    model.save_pretrained(str(out), safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (original / name).is_file():
            shutil.copy2(original / name, out / name)
    return out
