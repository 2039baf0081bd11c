"""The equivalence check holds on every architecture, and fails when it should: a tampered bridge, or another
model."""

import pytest
import torch

from circuit.equivalence import compare_models
from circuit.models import load_model
from circuit.prompts import tokenize_prompts
from fixtures.test_models import ARCHITECTURES

TAMPERED = ("qwen2", "gpt2", "phi3")
"""A subset for the tests that need a fresh model: separate q/k/v, GPT-2's fused Conv1D c_attn, Phi-3's qkv_proj."""


@pytest.fixture(params=TAMPERED)
def fresh_model(request, test_model_folder):
    """A freshly loaded test model that a test may tamper with."""
    return load_model(test_model_folder(ARCHITECTURES[request.param]), device="cpu")


def _tokens(model):
    return tokenize_prompts(model.tokenizer, ["70620 x 99460 =", "42399 x 65985 ="]).tokens


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_an_untouched_bridge_matches_its_hf_copy(test_models, arch):
    model = test_models[ARCHITECTURES[arch]]
    result = compare_models(model.bridge, model.hf_model, _tokens(model), tokenizer=model.tokenizer)
    assert result.holds, result.describe()
    assert result.max_abs_diff < 1e-5 and result.n_compared == 2 * _tokens(model).shape[1] * model.bridge.cfg.d_vocab


def test_corrupted_attention_weights_of_the_bridge_are_reported(fresh_model):
    # Layer 0's attention matrices scaled by 1.5, whatever the architecture calls them (fused or not).
    names = []
    with torch.no_grad():
        for name, weight in fresh_model.bridge.blocks[0].attn.named_parameters():
            if weight.ndim == 2:
                weight.mul_(1.5)
                names.append(name)
    result = compare_models(fresh_model.bridge, fresh_model.hf_model, _tokens(fresh_model),
                            tokenizer=fresh_model.tokenizer)
    assert not result.holds, names
    assert "EXCEEDS atol" in result.describe()
    assert "70620 x 99460 =" in result.describe() or "42399 x 65985 =" in result.describe()


def test_a_different_model_is_reported(test_models):
    model, other = test_models["test-qwen2-2l"], test_models["test-qwen2-3l"]
    result = compare_models(model.bridge, other.hf_model, _tokens(model), tokenizer=model.tokenizer)
    assert not result.holds


def test_comparing_with_the_wrapped_model_is_refused(test_models):
    model = test_models["test-llama"]
    with pytest.raises(ValueError, match="separate copy"):
        compare_models(model.bridge, model.bridge.original_model, _tokens(model), tokenizer=model.tokenizer)
