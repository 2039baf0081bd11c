"""The equivalence check fails when it should: a tampered bridge, or another model."""

import pytest
import torch

from circuit.equivalence import compare_models
from circuit.models import load_model
from circuit.prompts import tokenize_prompts


@pytest.fixture()
def fresh_model(test_model_folder):
    """A freshly loaded test model that a test may tamper with."""
    return load_model(test_model_folder("test-qwen2-2l"), device="cpu")


def _tokens(model):
    return tokenize_prompts(model.tokenizer, ["70620 x 99460 =", "42399 x 65985 ="]).tokens


def test_an_untouched_bridge_matches_its_hf_copy(fresh_model):
    result = compare_models(fresh_model.bridge, fresh_model.hf_model, _tokens(fresh_model),
                            tokenizer=fresh_model.tokenizer)
    assert result.holds, result.describe()


def test_one_corrupted_weight_of_the_bridge_is_reported(fresh_model):
    weight = dict(fresh_model.bridge.named_parameters())[
        "model.layers.0._original_component.self_attn._original_component.k_proj._original_component.weight"
    ]
    with torch.no_grad():
        weight[0, 0] += 0.5
    result = compare_models(fresh_model.bridge, fresh_model.hf_model, _tokens(fresh_model),
                            tokenizer=fresh_model.tokenizer)
    assert not result.holds
    assert "EXCEEDS atol" in result.describe() and "70620 x 99460 =" in result.describe() or \
        "42399 x 65985 =" in result.describe()


def test_a_different_model_is_reported(fresh_model, test_models):
    other = test_models["test-qwen2-3l"]
    result = compare_models(fresh_model.bridge, other.hf_model, _tokens(fresh_model),
                            tokenizer=fresh_model.tokenizer)
    assert not result.holds


def test_comparing_with_the_wrapped_model_is_refused(fresh_model):
    with pytest.raises(ValueError, match="separate copy"):
        compare_models(fresh_model.bridge, fresh_model.bridge.original_model, _tokens(fresh_model),
                       tokenizer=fresh_model.tokenizer)
