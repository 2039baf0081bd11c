"""Claim: the named heads attend to the final token.

The source, after z patching: "heads L0H11 and L22H7 matter and are presumably responsible for attending to
the final token." Attention is causal, so the only query that sees the final token is the final position
itself: the claim is that each named head, at the final position, puts at least ``min_final_attention`` of
its attention on that position (``circuit.attention``, ``to_self`` read from the final query). The statistic
is the weakest named head's mean (over prompts) weight, with an interval over prompts.
"""

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from circuit.attention import head_patterns
from circuit.decision import Rule
from circuit.discover import DraftContext, drafts
from circuit.report import attention_figure
from circuit.spec import ClaimSpec, Fraction, Head, parse_head, register_claim


@register_claim("final-token-attention")
@dataclass(frozen=True)
class FinalTokenAttention(ClaimSpec):
    """The named heads attend to the final token (from the final position)."""

    heads: tuple[Head, ...]
    """The heads, as 'L<layer>H<head>' (the source: L0H11 and L22H7)."""
    min_final_attention: Fraction
    """Every named head's mean attention from the final position to itself must be at least this (CI low)."""

    def check(self) -> None:
        if not self.heads:
            raise ValueError("heads: is empty; name at least one head, e.g. heads = ['L0H11'].")


def final_attention(lab, ps, heads):
    """Interval of the smallest mean (over prompts) attention from the final position to itself among ``heads``
    (``(layer, head)`` pairs)."""
    values = lab.attention(ps, "final").to_self.double().cpu()
    return lab.ci(torch.stack([values[l, h] for l, h in heads]), lambda x: x.mean(-1).amin(-1))


STATEMENT = ("Named heads attend to the final token: at the final position, each named head puts most of its "
             "attention on that position itself.")


def _figures(heads):
    def figures(lab, ps):
        patterns = head_patterns(lab.model, lab.inputs(ps)[0], heads, cache=lab.run(ps)[1])
        return {"Attention patterns of the named heads (first prompt)": (lambda: attention_figure(
            patterns.patterns[:, 0], head_labels=list(patterns.labels), tokens=list(patterns.str_tokens[0]),
            title="Named heads: attention patterns, first prompt"),
            "Rows are query tokens, columns key tokens. If the claim holds, the bottom-right cell (the final "
            "position attending to itself) is dark for every head.")}
    return figures


@pytest.mark.claim(id="final-token-attention", statement=STATEMENT)
@given(data=st.data())
def test_named_heads_attend_to_the_final_token(claim, verdict, data):
    heads = [parse_head(h) for h in claim.heads]
    verdict.judge(data, f"smallest mean attention from the final position to itself among {list(claim.heads)}",
                  lambda lab, ps: final_attention(lab, ps, heads),
                  Rule(">=", claim.min_final_attention, "min_final_attention"), figures=_figures(heads))


# --- drafter (discovery) ------------------------------------------------------------------------------

MOSTLY = 0.5
"""A head "attends to" the final token when the stated threshold gives it at least half of its attention."""


@drafts("final-token-attention")
def _draft_final_token_attention(ctx: DraftContext):
    """Chosen on the draft sets: of the top heads by |z patching| (the heads that "matter"), those whose mean
    final self-attention there is at least ``MOSTLY``; stated from the held-out sets."""
    top = ctx.top_heads(ctx.options.n_heads_named)
    drafted = torch.stack([ctx.lab.attention(ps, "final").to_self.double().cpu().mean(-1) for ps in ctx.sets]).mean(0)
    heads = [(l, h) for l, h in top if float(drafted[l, h]) >= MOSTLY]
    seen = ", ".join(f"L{l}H{h} {float(drafted[l, h]):.2f}" for l, h in top)
    if not heads:
        return None, (f"not stated: none of the top {len(top)} heads by |z patching| puts {MOSTLY} of its attention "
                      f"from the final position on itself on the draft sets ({seen})")

    def measure(lab, ps):
        return final_attention(lab, ps, heads)

    rule = ctx.rule(">=", measure, "min_final_attention")
    if rule.threshold < MOSTLY:
        return None, (f"not stated: final self-attention of {[f'L{l}H{h}' for l, h in heads]}: "
                      f"{ctx.log[ctx.claim_id]['min_final_attention']}: below {MOSTLY}")
    return FinalTokenAttention(tolerance=ctx.tolerance(measure), heads=tuple(f"L{l}H{h}" for l, h in heads),
                               min_final_attention=rule.threshold), f"top heads by |z patching|, draft sets: {seen}"
