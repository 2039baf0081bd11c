"""Equivalence of the TransformerLens bridge with the Hugging Face model it was built from.

Every analysis in this library reads the bridge (folded layer norms, centred weights). That is only
legitimate if the bridge computes the same function as the original model. The check compares the
softmax of both logits on the same tokens and reports the largest absolute difference and where it
occurred (prompt, position, token). The HF model must be a *separate* copy: booting a bridge rewrites
the weights of the HF model it wraps, so comparing with that one compares the bridge with itself.
Centring the unembedding shifts every logit of a position by a constant, which the softmax removes;
so probabilities, not logits, are compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

__all__ = ["DEFAULT_ATOL", "Equivalence", "compare_models"]

DEFAULT_ATOL: dict[torch.dtype, float] = {
    torch.float32: 1e-5,
    torch.float64: 1e-8,
    torch.bfloat16: 1e-2,
    torch.float16: 5e-3,
}
"""Default tolerance on probabilities, per dtype."""


@dataclass(frozen=True)
class Equivalence:
    """The outcome of one comparison."""

    max_abs_diff: float
    atol: float
    where: tuple[int, int, int]
    """(row, position, token id) of the largest difference."""
    prompt: str
    """The decoded prompt of that row."""
    token: str
    """The decoded token at that place."""
    bridge_prob: float
    hf_prob: float
    n_compared: int

    @property
    def holds(self) -> bool:
        return self.max_abs_diff <= self.atol

    def describe(self) -> str:
        from circuit.numbers import digits_apart, number

        row, pos, tok = self.where
        verdict = "within" if self.holds else "EXCEEDS"
        digits = digits_apart([self.max_abs_diff], [self.atol], digits=3)  # never "5e-05 EXCEEDS atol 5e-05"
        return (
            f"max |softmax(bridge) - softmax(HF)| = {number(self.max_abs_diff, digits)} {verdict} atol "
            f"{number(self.atol, digits_apart([self.atol], [self.max_abs_diff], digits=1))} "
            f"over {self.n_compared} probabilities; largest at prompt {row} {self.prompt!r}, position {pos}, "
            f"token {tok} ({self.token!r}): bridge p={self.bridge_prob:.6g}, HF p={self.hf_prob:.6g}"
        )


@torch.no_grad()
def compare_models(
    bridge: Any,
    hf_model: Any,
    tokens: Int[Tensor, "batch pos"],
    *,
    tokenizer: Any,
    atol: float | None = None,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
) -> Equivalence:
    """Compare ``softmax`` of the bridge's and the HF model's logits on ``tokens``."""
    if hf_model is None:
        raise ValueError("No HF reference model: load the model with load_model(..., with_hf_reference=True).")
    if hf_model is getattr(bridge, "original_model", None):
        raise ValueError("The HF model is the one the bridge wraps (its weights were rewritten at boot): "
                         "compare with a separate copy, as load_model(..., with_hf_reference=True) gives.")
    device = next(hf_model.parameters()).device
    tokens = tokens.to(device)
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask.to(device)}
    hf_probs = hf_model(tokens, **kwargs).logits.float().softmax(-1)
    bridge_logits = bridge(tokens, **kwargs) if kwargs else bridge(tokens)
    bridge_probs = bridge_logits.float().to(device).softmax(-1)
    for name, probs in (("bridge", bridge_probs), ("HF", hf_probs)):
        if probs.isnan().any():
            raise ValueError(f"The {name} model's probabilities contain NaN on these tokens: check the dtype "
                             f"(float32 recommended) and the weights.")
    diff = (bridge_probs - hf_probs[..., : bridge_probs.shape[-1]]).abs()
    flat = int(diff.argmax())
    row, pos, tok = (int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
    dtype = getattr(getattr(bridge, "cfg", None), "dtype", torch.float32)
    return Equivalence(
        max_abs_diff=float(diff.max()),
        atol=DEFAULT_ATOL.get(dtype, 1e-5) if atol is None else atol,
        where=(row, pos, tok),
        prompt=tokenizer.decode(tokens[row]),
        token=tokenizer.decode([tok]),
        bridge_prob=float(bridge_probs[row, pos, tok]),
        hf_prob=float(hf_probs[row, pos, tok]),
        n_compared=diff.numel(),
    )
