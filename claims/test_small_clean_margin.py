"""Claim: the model prefers the correct answer on clean prompts, but only by a small margin.

The source: "the average logit difference is 0.229 - for context, this represents putting an e^0.229 = 1.257x
higher probability on the correct answer, which isn't a lot! Clearly, even though the model is able to do the
task, it's only able to do it with a small margin." Two bounds on the mean clean logit difference (the spec's
metric on the clean prompts, correct minus incorrect answer), each judged on its bootstrap interval over
prompts:

- *small*: the mean is below ``max_logit_diff`` (CI high < it): the correct answer is at most
  ``e^max_logit_diff`` times as likely as the incorrect one;
- *a margin at all*: the mean is above ``min_logit_diff`` (CI low > it; 0 by default: the model prefers the
  correct answer). The task gate every claim passes first is another statement (clean exceeds *corrupted*).

A model that prefers the correct answer by a wide margin (the bundled ones: about 20) refutes the first; one
that prefers the wrong answer refutes the second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from circuit.decision import Rule
from circuit.drafts import DraftContext, drafts
from circuit.spec import ClaimSpec, register_claim

STATEMENT = ("Small clean margin: on clean prompts the model prefers the correct answer, but only by a small "
             "margin (the mean clean logit difference lies between the spec's bounds).")

SMALL = math.log(2)
"""Discovery states the claim only when the held-out evidence supports a bound of at most this: the correct
answer less than twice as likely as the incorrect one (the source's 0.229 is 1.26x)."""


@register_claim("small-clean-margin")
@dataclass(frozen=True)
class SmallCleanMargin(ClaimSpec):
    """Parameters of the small-clean-margin claim."""

    max_logit_diff: float
    """The mean clean logit difference (correct - incorrect answer) must be below this (CI high): the margin is
    small. ``e^max_logit_diff`` bounds how many times likelier the correct answer is."""
    min_logit_diff: float = 0.0
    """The mean clean logit difference must be above this (CI low); 0 (the default): the model prefers the
    correct answer at all."""

    def check(self) -> None:
        if self.min_logit_diff >= self.max_logit_diff:
            raise ValueError(f"min_logit_diff = {self.min_logit_diff:g} is not below max_logit_diff = "
                             f"{self.max_logit_diff:g}: no logit difference lies between them.")


def clean_logit_diff(lab, ps):
    """Interval over prompts of the mean clean logit difference (the spec's metric on the clean run)."""
    clean, _ = lab.logit_diffs(ps)
    return lab.ci(clean.double())


def _figures(lab, ps):
    from circuit.report import line_figure

    clean, corrupted = lab.logit_diffs(ps)
    return {"Logit difference per prompt, clean and corrupted": (
        lambda: line_figure({"clean": clean.double(), "corrupted": corrupted.double()}, title="Logit difference",
                            xlabel="prompt", ylabel="logit difference"),
        "If the claim holds, the clean line lies between the spec's bounds on average.")}


@pytest.mark.claim(id="small-clean-margin", statement=STATEMENT)
@given(data=st.data())
def test_the_clean_margin_is_small(claim, verdict, data):
    verdict.judge(data, f"mean clean logit difference (small: the correct answer at most e^{claim.max_logit_diff:g} = "
                        f"{math.exp(claim.max_logit_diff):.3g}x as likely)", clean_logit_diff,
                  Rule("<", claim.max_logit_diff, "max_logit_diff"), figures=_figures)


@pytest.mark.claim(id="small-clean-margin", statement=STATEMENT)
@given(data=st.data())
def test_the_clean_margin_is_positive(claim, verdict, data):
    verdict.judge(data, "mean clean logit difference (the model prefers the correct answer)", clean_logit_diff,
                  Rule(">", claim.min_logit_diff, "min_logit_diff"), figures=_figures)


@drafts("small-clean-margin")
def _draft(ctx: DraftContext) -> tuple[SmallCleanMargin | None, str]:
    """State the bound the held-out sets support, only when it is small (at most :data:`SMALL`) and the lower bound
    0 clears too."""
    upper = ctx.rule("<", clean_logit_diff, "max_logit_diff")
    if upper.threshold > SMALL:
        return None, (f"not stated: the mean clean logit difference is not small: "
                      f"{ctx.log[ctx.claim_id]['max_logit_diff']} (stated only at most log 2 = {SMALL:.3g})")
    if not ctx.supports(">", clean_logit_diff, 0.0, "min_logit_diff"):
        return None, (f"not stated: the held-out sets do not support a clean logit difference above 0: "
                      f"{ctx.log[ctx.claim_id]['min_logit_diff']}")
    return SmallCleanMargin(tolerance=ctx.tolerance(clean_logit_diff), max_logit_diff=upper.threshold), ""
