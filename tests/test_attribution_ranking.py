"""Ranking honestly (``circuit.attribution``): ties across the k-th place rank nothing first, values that are
not finite are not ranked, and a model with a NaN weight is named rather than given NaN attributions."""

import pytest
import torch

from circuit.attribution import _top_k, head_attribution, residual_directions
from circuit.metrics import seed_logit_diff
from circuit.models import load_model
from circuit.prompts import tokenize_prompts
from circuit.stats import NonFiniteError
from circuit.task import Problem


def test_top_k_leaves_out_ties_across_the_kth_place():
    labels = ["a", "b", "c", "d"]
    assert _top_k(torch.zeros(4), labels, 3, "abs") == []  # all tied: nothing is surely in the top 3
    assert [x for x, _ in _top_k(torch.zeros(4), labels, 4, "abs")] == labels
    values = torch.tensor([0.5, -2.0, 2.0, 0.1])
    assert _top_k(values, labels, 1, "abs") == []  # b and c tie for first
    assert [x for x, _ in _top_k(values, labels, 2, "abs")] == ["b", "c"]
    assert _top_k(values, labels, 1, "positive") == [("c", 2.0)]
    assert [x for x, _ in _top_k(values, labels, 3, "abs")] == ["b", "c", "a"]


def test_values_that_are_not_finite_are_not_ranked():
    with pytest.raises(NonFiniteError, match=r"^The values to rank are not finite: 1 NaN and 0 infinite of 3 .*"
                                             r"cannot rank them"):
        _top_k(torch.tensor([1.0, float("nan"), 0.0]), ["a", "b", "c"], 1, "abs")


def test_head_attribution_on_a_model_with_a_nan_weight_names_the_weight(test_model_folder):
    model = load_model(test_model_folder("test-qwen2-2l"), device="cpu", with_hf_reference=False)  # our own copy
    problems = [Problem(12, 34), Problem(43, 21)]
    batch = tokenize_prompts(model.tokenizer, [p.prompt for p in problems])
    directions = residual_directions(model, seed_logit_diff(model.tokenizer, batch, problems,
                                                            [p.product * 2 for p in problems]))
    assert bool(torch.isfinite(head_attribution(model, batch.tokens, directions).values).all())
    weight = model.bridge.original_model.model.layers[1].mlp.down_proj.weight
    with torch.no_grad():
        weight[3, 5] = float("nan")
    with pytest.raises(NonFiniteError, match=r"^The run's final residual stream \[batch, pos, d_model\] is not finite: "
                                             r".*: no attribution can be computed: parameter "
                                             r"model.layers.1.mlp.down_proj.weight has 1 NaN or infinite entries"):
        head_attribution(model, batch.tokens, directions)
