"""Claim: a head's effect splits into what it moves (values) and where it looks (pattern).

Per head, patching the clean values under the corrupted pattern (``v``, per query head) and patching the
clean pattern over the corrupted values (``pattern``) are the two halves of patching its output (``z``).
The source: "the sum of value patching and pattern patching is approx the same as output patching".
Measured over all heads: the correlation of (v + pattern) effects with z effects, and the largest
|v + pattern - z| in normalized units (fraction of clean - corrupted).
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from circuit.report import scatter_figure

STATEMENT = ("Value + pattern ~ output: per head, value patching plus pattern patching effects approximately "
             "equal the z (output) patching effect.")


def _stacked_effects(lab, prompt_set):
    """``[3, layer * head, batch]``: v, pattern and z patching effects (patched - corrupted)."""
    return torch.stack([lab.effects(lab.patch(prompt_set, site)).flatten(0, 1) for site in ("v", "pattern", "z")])


def _figures(lab, prompt_set):
    v, pattern, z = _stacked_effects(lab, prompt_set).mean(-1)
    n_heads = lab.model.bridge.cfg.n_heads
    labels = [f"L{i // n_heads}H{i % n_heads}" for i in range(z.numel())]
    return {
        f"{name} patching vs z patching, per head": (
            lambda x=x, name=name: scatter_figure(z, x, title=f"{name} vs z patching", labels=labels,
                                                  xlabel="z patching effect", ylabel=f"{name} patching effect"))
        for name, x in (("v", v), ("pattern", pattern), ("v + pattern", v + pattern))
    }


def _correlation(x):
    """Pearson correlation across heads of mean(v) + mean(pattern) with mean(z): x is [..., 3, head, batch]."""
    means = x.mean(-1)
    a, b = means[..., 0, :] + means[..., 1, :], means[..., 2, :]
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.pow(2).sum(-1).sqrt() * b.pow(2).sum(-1).sqrt())


@pytest.mark.claim(id="value-plus-pattern", statement=STATEMENT)
@given(data=st.data())
def test_value_plus_pattern_correlates_with_output(model, lab, claim, evidence, data):
    prompt_set = lab.draw(data)
    lab.require_task_solved(prompt_set, evidence)
    correlation = lab.ci(_stacked_effects(lab, prompt_set), _correlation)
    record = evidence.record(
        "correlation across heads of (v + pattern) with z patching effects", correlation,
        threshold=f"CI low >= {claim.min_correlation}", holds=bool(correlation.low >= claim.min_correlation),
        prompt_set=prompt_set, figures=_figures(lab, prompt_set),
    )
    assert record.holds, record.describe()


@pytest.mark.claim(id="value-plus-pattern", statement=STATEMENT)
@given(data=st.data())
def test_value_plus_pattern_residual_is_small(model, lab, claim, evidence, data):
    prompt_set = lab.draw(data)
    lab.require_task_solved(prompt_set, evidence)
    clean, corrupted = lab.logit_diffs(prompt_set)
    gap = (clean - corrupted).double()
    effects = _stacked_effects(lab, prompt_set)
    stacked = torch.cat([effects.flatten(0, 1), gap[None]])  # [3 * heads + 1, batch]

    def largest_residual(x):
        means = x.mean(-1)
        v, pattern, z = means[..., :-1].unflatten(-1, (3, -1)).unbind(-2)
        return ((v + pattern - z) / means[..., -1:]).abs().amax(-1)

    residual = lab.ci(stacked, largest_residual)
    record = evidence.record(
        "largest |v + pattern - z| over heads, as a fraction of (clean - corrupted)", residual,
        threshold=f"CI high <= {claim.max_residual}", holds=bool(residual.high <= claim.max_residual),
        prompt_set=prompt_set, figures=_figures(lab, prompt_set),
    )
    assert record.holds, record.describe()
