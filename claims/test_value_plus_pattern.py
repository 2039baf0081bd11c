"""Claim: a head's effect splits into what it moves (values) and where it looks (pattern).

Per head, patching the clean values under the corrupted pattern (``v``, per query head) and patching the
clean pattern over the corrupted values (``pattern``) are the two halves of patching its output (``z``).
The source: "the sum of value patching and pattern patching is approx the same as output patching".
Measured over all heads: the correlation of (v + pattern) effects with z effects, and the largest
|v + pattern - z| in normalized units (fraction of clean - corrupted).
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from circuit import measures
from circuit.decision import Rule
from circuit.report import scatter_figure

STATEMENT = ("Value + pattern ~ output: per head, value patching plus pattern patching effects approximately "
             "equal the z (output) patching effect.")


def _figures(lab, prompt_set):
    v, pattern, z = measures.head_effects(lab, prompt_set).mean(-1)
    n_heads = lab.model.bridge.cfg.n_heads
    labels = [f"L{i // n_heads}H{i % n_heads}" for i in range(z.numel())]
    return {
        f"{name} patching vs z patching, per head": (
            lambda x=x, name=name: scatter_figure(z, x, title=f"{name} vs z patching", labels=labels,
                                                  xlabel="z patching effect", ylabel=f"{name} patching effect"),
            "One point per head. If the claim holds, the v + pattern points lie on the dashed y = x line.")
        for name, x in (("v", v), ("pattern", pattern), ("v + pattern", v + pattern))
    }


@pytest.mark.claim(id="value-plus-pattern", statement=STATEMENT)
@given(data=st.data())
def test_value_plus_pattern_correlates_with_output(claim, verdict, data):
    verdict.judge(data, "correlation across heads of (v + pattern) with z patching effects",
                  measures.value_pattern_correlation, Rule(">=", claim.min_correlation, "min_correlation"),
                  figures=_figures)


@pytest.mark.claim(id="value-plus-pattern", statement=STATEMENT)
@given(data=st.data())
def test_value_plus_pattern_residual_is_small(claim, verdict, data):
    verdict.judge(data, "largest |v + pattern - z| over heads, as a fraction of (clean - corrupted)",
                  measures.value_pattern_residual, Rule("<=", claim.max_residual, "max_residual"), figures=_figures)
