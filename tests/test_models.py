import pytest
import torch

from circuit.models import ModelNotAvailableError, load_model, resolve_device, resolve_dtype


def test_an_unknown_model_offline_names_it_and_says_how_to_provide_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailableError, match=r"(?s)'no-such-org/no-such-model'.*HF_HUB_OFFLINE.*local folder"):
        load_model("no-such-org/no-such-model")


def test_a_missing_local_folder_is_named(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="no such folder"):
        load_model(str(tmp_path / "missing" / "model"))


def test_a_local_folder_loads_bridge_and_a_separate_eager_hf_copy(test_models):
    loaded = test_models["test-qwen2-2l"]
    assert loaded.hf_model is not loaded.bridge.original_model
    assert loaded.hf_model.config._attn_implementation == "eager"
    assert loaded.bridge.cfg.n_key_value_heads < loaded.bridge.cfg.n_heads  # GQA kept
    assert loaded.device == torch.device("cpu")


def test_device_and_dtype_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type in {"cpu", "cuda"}
    assert resolve_dtype("bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="Unknown dtype 'float8'"):
        resolve_dtype("float8")
