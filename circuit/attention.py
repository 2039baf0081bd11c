"""Attention summaries: where each head looks, in a few numbers per head.

An attention pattern ``pattern[batch, head, dest, src]`` is, for every query (destination) position, a
probability distribution over the key (source) positions it may see. Four summaries per head say most of
what the source analysis read off its plots:

- **attention to BOS**: the weight on the first real token. A head that parks its attention there
  (a "resting" head) writes little that depends on the prompt;
- **entropy** of the distribution, in nats, and *normalized* by ``log(number of visible keys)``: 1 for a
  uniform pattern (the source's "early heads attend to every token equally"), 0 for one key. The visible
  keys are those the model did not mask (``hook_attn_scores`` is ``-inf`` or the dtype's minimum there):
  the causal past from BOS on, and only the last few positions in a sliding-window layer (Gemma-2's local
  layers), so a head uniform over its window has normalized entropy 1 on every architecture;
- **attention to the operands**: the weight on the digit tokens of ``a`` and of ``b`` (the first and second
  runs of digit tokens after BOS; the answer's digits, in teacher-forced rows, are not operands);
- **attention to itself**: the weight a query puts on its own position (the diagonal of the pattern; from
  the final position, the weight on the final token).

Each is computed for the final query position (``query="final"``, where the answer is predicted) or
averaged over all query positions after BOS (``query="all"``; the BOS query, which can only see itself, is
left out). What a head moves is information from a *residual-stream position*, not from a token: a summary
says where a head looks, not what it reads there. :func:`head_patterns` returns the patterns of chosen
heads, with their labels and token strings, for the reports. Summaries and patterns are float32 whatever
the model's dtype (the patterns are cast before anything is summed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from circuit.attribution import TopBy, _top_k, head_label, parse_head
from circuit.prompts import PromptBatch, bos_token_id

__all__ = ["AttentionSummary", "HeadPatterns", "head_patterns", "operand_positions", "summarize_attention"]


def _bridge(model: Any) -> Any:
    return getattr(model, "bridge", model)


def _tokenizer(model: Any) -> Any:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ValueError(f"{type(model).__name__} has no tokenizer: pass the LoadedModel (circuit.load_model) "
                         f"or a bridge booted with its tokenizer.")
    return tokenizer


def _unpack(tokens: PromptBatch | Tensor, attention_mask: Tensor | None) -> tuple[Tensor, Tensor]:
    if isinstance(tokens, PromptBatch):
        return tokens.tokens, tokens.attention_mask if attention_mask is None else attention_mask
    if attention_mask is None:
        attention_mask = torch.ones_like(tokens)
    if attention_mask.shape != tokens.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but tokens have "
                         f"{tuple(tokens.shape)}: they must match.")
    return tokens, attention_mask


def _bos_positions(tokenizer: Any, tokens: Tensor, mask: Tensor) -> Int[Tensor, " batch"]:
    """The first real (unmasked) position of each row, checked to hold the BOS token."""
    first = mask.long().argmax(-1)
    bos = bos_token_id(tokenizer)
    found = tokens[torch.arange(tokens.shape[0]), first]
    wrong = (found != bos).nonzero().flatten().tolist()
    if wrong:
        raise ValueError(f"Row(s) {wrong[:8]} do not start with the BOS token (id {bos}; found "
                         f"{found[wrong[:8]].tolist()}): attention to BOS is undefined. Tokenize with "
                         f"prepend_bos=True.")
    return first


def operand_positions(tokenizer: Any, tokens: Tensor) -> tuple[Bool[Tensor, "batch pos"], Bool[Tensor, "batch pos"]]:
    """Masks of the digit tokens of operand ``a`` and of operand ``b`` (first and second digit runs)."""
    a = torch.zeros(tokens.shape, dtype=torch.bool)
    b = torch.zeros(tokens.shape, dtype=torch.bool)
    for row, ids in enumerate(tokens.tolist()):
        text = [tokenizer.decode([i]) for i in ids]
        runs: list[list[int]] = []
        previous = False
        for pos, piece in enumerate(text):
            digit = piece.isdigit() and piece.isascii()
            if digit and not previous:
                runs.append([])
            if digit:
                runs[-1].append(pos)
            previous = digit
        if len(runs) < 2:
            raise ValueError(f"Row {row} ({''.join(text)!r}) does not hold two operands (two runs of digit "
                             f"tokens); operand attention needs prompts in the task's format 'a x b ='.")
        a[row, runs[0]] = True
        b[row, runs[1]] = True
    return a.to(tokens.device), b.to(tokens.device)


@dataclass(frozen=True, eq=False)
class AttentionSummary:
    """Per-head attention summaries (see the module docstring), ``[layer, head, batch]`` each.

    Attributes:
        query: ``"final"`` (the final position) or ``"all"`` (mean over query positions after BOS).
        to_bos: attention weight on the BOS position.
        to_operand_a: total attention weight on the digits of the first operand.
        to_operand_b: total attention weight on the digits of the second operand.
        entropy: entropy of the pattern in nats.
        normalized_entropy: entropy / log(number of visible keys): 1 uniform, 0 a single key.
        to_self: attention weight on the query's own position (the pattern's diagonal).
    """

    query: str
    to_bos: Float[Tensor, "layer head batch"]
    to_operand_a: Float[Tensor, "layer head batch"]
    to_operand_b: Float[Tensor, "layer head batch"]
    entropy: Float[Tensor, "layer head batch"]
    normalized_entropy: Float[Tensor, "layer head batch"]
    to_self: Float[Tensor, "layer head batch"]

    @property
    def to_operands(self) -> Float[Tensor, "layer head batch"]:
        """Attention weight on the digits of either operand."""
        return self.to_operand_a + self.to_operand_b

    @property
    def labels(self) -> tuple[str, ...]:
        """``L{layer}H{head}`` in the order of a field's ``flatten(0, 1)``."""
        n_layers, n_heads = self.to_bos.shape[:2]
        return tuple(head_label(l, h) for l in range(n_layers) for h in range(n_heads))

    def top_k(self, field: str, k: int, *, by: TopBy = "positive") -> list[tuple[str, float]]:
        """The ``k`` heads with the largest prompt-mean of ``field`` (e.g. ``"to_bos"``), with values."""
        names = ("to_bos", "to_operand_a", "to_operand_b", "to_operands", "entropy", "normalized_entropy", "to_self")
        if field not in names:
            raise ValueError(f"field={field!r}: choose one of {names}.")
        return _top_k(getattr(self, field).mean(-1).flatten(), self.labels, k, by)


def _patterns(model: Any, cache: Any, tokens: Tensor, mask: Tensor) -> tuple[Float[Tensor, "layer batch head dest src"], Any]:
    """The patterns of every layer (float32), and the cache they come from (``cache``, or a run's)."""
    bridge = _bridge(model)
    if cache is None:
        with torch.no_grad():
            kwargs = {"attention_mask": mask} if bool((mask == 0).any()) else {}
            _, cache = bridge.run_with_cache(tokens, **kwargs)
    # float32 whatever the model's dtype: sums of a bfloat16 pattern's weights drift by ~1e-2
    patterns = torch.stack([cache["pattern", layer] for layer in range(bridge.cfg.n_layers)]).detach().float()
    if patterns.shape[1] != tokens.shape[0] or patterns.shape[-1] != tokens.shape[1]:
        raise ValueError(f"The cache's patterns are for {patterns.shape[1]} rows x {patterns.shape[-1]} "
                         f"positions but the tokens are {tuple(tokens.shape)}: pass the tokens the cache was "
                         f"run on.")
    return patterns, cache


def _visible_keys(cache: Any, n_layers: int, bos: Tensor) -> Int[Tensor, "layer batch head dest"]:
    """How many keys each query may see: scores the model did not mask (causal, padding, a sliding window)."""
    try:
        scores = torch.stack([cache["attn_scores", layer] for layer in range(n_layers)]).detach()
    except KeyError:
        raise KeyError("The cache has no attention scores (blocks.{l}.attn.hook_attn_scores): the number of keys "
                       "a query sees (for the normalized entropy) is read from their mask. Cache the whole run "
                       "(bridge.run_with_cache(tokens) without names_filter), or pass cache=None.") from None
    unmasked = scores > torch.finfo(scores.dtype).min / 2  # masked scores are -inf or the dtype's minimum
    from_bos = torch.arange(scores.shape[-1], device=scores.device)[None, :] >= bos[:, None]  # batch src
    return (unmasked & from_bos[None, :, None, None, :]).sum(-1)


def summarize_attention(
    model: Any, tokens: PromptBatch | Int[Tensor, "batch pos"], *, cache: Any = None,
    attention_mask: Int[Tensor, "batch pos"] | None = None, query: str = "final",
) -> AttentionSummary:
    """Attention to BOS, to each operand, and entropy, for every head (see :class:`AttentionSummary`).

    Args:
        model: the ``LoadedModel`` (its tokenizer finds BOS and the operands).
        tokens: the prompts (a ``PromptBatch``, or token ids with BOS first; left padding is masked).
        cache: the run's ``ActivationCache``; ``None`` runs the model.
        attention_mask: 1 on real tokens (taken from a ``PromptBatch`` when not given).
        query: ``"final"`` or ``"all"`` query positions.
    """
    if query not in ("final", "all"):
        raise ValueError(f"query={query!r}: use 'final' (the last position) or 'all' (every position after BOS).")
    ids, mask = _unpack(tokens, attention_mask)
    tokenizer = _tokenizer(model)
    patterns, cache = _patterns(model, cache, ids, mask)  # layer batch head dest src
    device = patterns.device
    bos = _bos_positions(tokenizer, ids, mask).to(device)
    a, b = operand_positions(tokenizer, ids)
    positions = torch.arange(ids.shape[1], device=device)
    keys_visible = _visible_keys(cache, patterns.shape[0], bos)  # layer batch head dest
    weights = torch.zeros(ids.shape, dtype=patterns.dtype, device=device)  # batch dest: query weights
    if query == "final":
        weights[:, -1] = 1.0
    else:
        weights = (positions[None, :] > bos[:, None]).to(patterns.dtype)
        if bool((weights.sum(-1) == 0).any()):
            raise ValueError("A row has no query position after BOS: query='all' needs prompts of 2+ tokens.")
        weights = weights / weights.sum(-1, keepdim=True)

    def over_queries(per_dest: Tensor) -> Tensor:  # layer batch head dest -> layer head batch
        return torch.einsum("lbhd,bd->lhb", per_dest, weights)

    to_bos = patterns.gather(-1, bos[None, :, None, None, None].expand(*patterns.shape[:-1], 1))[..., 0]
    to_a = (patterns * a.to(device)[None, :, None, None, :]).sum(-1)
    to_b = (patterns * b.to(device)[None, :, None, None, :]).sum(-1)
    plogp = torch.where(patterns > 0, patterns * patterns.clamp(min=1e-30).log(), torch.zeros_like(patterns))
    entropy = -plogp.sum(-1)
    log_keys = keys_visible.to(patterns.dtype).log()  # 0 where a query sees one key
    normalized = torch.where(log_keys > 0, entropy / log_keys.clamp(min=1e-30), torch.zeros_like(entropy))
    to_self = patterns.diagonal(dim1=-2, dim2=-1)  # layer batch head dest: each query's weight on itself
    return AttentionSummary(query, over_queries(to_bos), over_queries(to_a), over_queries(to_b),
                            over_queries(entropy), over_queries(normalized), over_queries(to_self))


@dataclass(frozen=True, eq=False)
class HeadPatterns:
    """The attention patterns of chosen heads, for plots and reports.

    Attributes:
        patterns: ``[head, batch, dest, src]``, in the order of ``labels``.
        labels: ``L{layer}H{head}`` of each head.
        str_tokens: each row's tokens as strings (axis labels).
    """

    patterns: Float[Tensor, "head batch dest src"]
    labels: tuple[str, ...]
    str_tokens: tuple[tuple[str, ...], ...]


def head_patterns(
    model: Any, tokens: PromptBatch | Int[Tensor, "batch pos"], heads: Sequence[str | tuple[int, int]], *,
    cache: Any = None, attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> HeadPatterns:
    """The patterns of ``heads`` (labels like ``"L0H3"`` or ``(layer, head)`` tuples) on ``tokens``."""
    bridge = _bridge(model)
    ids, mask = _unpack(tokens, attention_mask)
    parsed = [parse_head(h, bridge.cfg.n_layers, bridge.cfg.n_heads) for h in heads]
    if not parsed:
        raise ValueError("No heads given: pass labels such as ['L0H1', 'L1H3'].")
    patterns, _ = _patterns(model, cache, ids, mask)
    chosen = torch.stack([patterns[layer, :, head] for layer, head in parsed])
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        str_tokens = tuple(tuple(str(i) for i in row) for row in ids.tolist())
    else:
        str_tokens = tuple(tuple(tokenizer.decode([i]) for i in row) for row in ids.tolist())
    return HeadPatterns(chosen, tuple(head_label(l, h) for l, h in parsed), str_tokens)
