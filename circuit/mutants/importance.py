"""Importance of a model's components, for choosing the *least important alternative* to a named one.

A mutant that swaps a named component for another is only a fair test when the other one clearly does
not do what the named one does: the least important one of its kind. Importance is the mean over a few
prompt sets (``circuit.discover.draw_prompt_sets``, seeded) of |mean over prompts| of the statistic the
claims rank that kind of component by, read from a :class:`circuit.lab.Lab`:

- heads: the z patching effect (``circuit.measures.head_values``, ``"z_patching"``) or the direct logit
  attribution (``"attribution"``), ``[layer, head]``;
- attention layers: the ``attn_out`` patching effect at the final position, each prompt's effect signed
  toward its clean run (as the position claims read it), ``[layer]``;
- MLP cells: the ``mlp_out`` patching effect at a named position (``"a"``, ``"b"``: the operand's best digit;
  ``"final"``: the last position), ``{(layer, position): value}``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Importance", "measure_importance", "named_positions"]

_PROMPT = re.compile(r"^(\d+) x (\d+) =$")


def named_positions(lab: Any, ps: Any) -> dict[str, tuple[int, ...]]:
    """Positions of ``"a"``, ``"b"`` (tokens overlapping each operand's digits) and ``"final"`` in the clean
    batch of ``ps``, read from its first prompt (the claims refuse sets whose prompts differ in layout)."""
    clean = lab.inputs(ps)[0]
    prompt = clean.prompts[0]
    match = _PROMPT.match(prompt)
    if match is None:
        raise ValueError(f"Prompt {prompt!r} is not of the form '<a> x <b> =': use the multiplication task's prompts.")
    ids = clean.tokens[0].tolist()
    start = clean.attention_mask[0].tolist().index(1) + (1 if clean.bos else 0)
    spans, before = [], 0
    for k in range(start, len(ids)):
        end = len(lab.model.tokenizer.decode(ids[start:k + 1], clean_up_tokenization_spaces=False))
        spans.append((k, before, end))
        before = end
        if end >= len(prompt):
            break

    def overlapping(group: int) -> tuple[int, ...]:
        lo, hi = match.span(group)
        return tuple(k for k, s, e in spans if s < hi and e > lo)

    return {"a": overlapping(1), "b": overlapping(2), "final": (clean.tokens.shape[1] - 1,)}


@dataclass(frozen=True)
class Importance:
    """Mean |effect| per component kind over the measured prompt sets (larger: more important)."""

    heads: dict[str, Any]
    """``{"z_patching": [layer, head], "attribution": [layer, head]}`` tensors."""
    attention: Any
    """``[layer]``: |attn_out effect toward the clean run| at the final position, in units of the mean gap."""
    mlp_cells: dict[tuple[int, str], float]
    """``{(layer, position name): |mlp_out effect|}`` (an operand: its largest digit)."""

    def least_head(self, by: str, *, layer: int | None = None, exclude: Sequence[tuple[int, int]] = ()) -> tuple[int, int]:
        """``(layer, head)`` of the least important head by ``by`` (within ``layer`` if given), not in ``exclude``."""
        values = self.heads[by]
        candidates = [(float(values[l, h]), l, h) for l in range(values.shape[0]) for h in range(values.shape[1])
                      if (layer is None or l == layer) and (l, h) not in exclude]
        if not candidates:
            raise ValueError(f"no head left to choose from (layer {layer}, excluding {list(exclude)}).")
        return min(candidates)[1:]

    def least_attention(self, exclude: Sequence[int] = ()) -> int | None:
        """The least important attention layer not in ``exclude`` (None when every layer is excluded)."""
        candidates = [(float(v), l) for l, v in enumerate(self.attention.tolist()) if l not in exclude]
        return min(candidates)[1] if candidates else None

    def least_cell(self, exclude: Sequence[tuple[int, str]] = ()) -> tuple[int, str] | None:
        """The least important MLP cell ``(layer, position)`` not in ``exclude`` (None when none is left)."""
        candidates = [(v, cell) for cell, v in sorted(self.mlp_cells.items()) if cell not in exclude]
        return min(candidates)[1] if candidates else None


def measure_importance(lab: Any, prompt_sets: Sequence[Any]) -> Importance:
    """:class:`Importance` of every head, attention layer and MLP cell, averaged over ``prompt_sets``."""
    import torch

    from circuit.measures import head_values

    heads = {by: torch.stack([head_values(lab, ps, by).mean(-1).abs() for ps in prompt_sets]).mean(0)
             for by in ("z_patching", "attribution")}
    attention, cells = [], []
    for ps in prompt_sets:
        clean, corrupted = lab.logit_diffs(ps)
        gap = (clean - corrupted).double()
        final = named_positions(lab, ps)["final"][0]
        toward = lab.effects(lab.patch(ps, "attn_out"))[:, final] * gap.sign()
        attention.append(toward.mean(-1).abs() / gap.abs().mean())
        mlp = lab.effects(lab.patch(ps, "mlp_out")).mean(-1).abs()  # [layer, pos]
        cells.append({(layer, name): float(mlp[layer, list(positions)].max())
                      for name, positions in named_positions(lab, ps).items() for layer in range(mlp.shape[0])})
    mlp_cells = {cell: sum(c[cell] for c in cells) / len(cells) for cell in cells[0]}
    return Importance(heads=heads, attention=torch.stack(attention).mean(0), mlp_cells=mlp_cells)
