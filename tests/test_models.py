import re
from pathlib import Path

import pytest
import torch

from circuit.models import (
    DeviceError,
    DtypeError,
    ModelFolderError,
    ModelNotAvailableError,
    TokenizerError,
    UnsafeWeightsError,
    check_tokenizer,
    load_model,
    resolve_device,
    resolve_dtype,
)


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


# --- bad model folders: each a one-line error naming the folder and the fix, never "not in the HF cache" ------

@pytest.fixture(scope="module")
def good_folder(test_model_folder):
    return Path(test_model_folder("test-qwen2-2l"))


def _folder(tmp_path: Path, good: Path, *names: str) -> Path:
    """A model folder in ``tmp_path`` with links to some of ``good``'s files."""
    folder = tmp_path / "model"
    folder.mkdir()
    for name in names:
        (folder / name).symlink_to(good / name)
    return folder


def _load_error(folder: Path, error: type[Exception] = ModelFolderError) -> str:
    with pytest.raises(error) as caught:
        load_model(folder, with_hf_reference=False)
    message = str(caught.value)
    assert "\n" not in message and "HF cache" not in message and "huggingface-cli" not in message
    assert repr(str(folder)) in message
    return message


TOKENIZER = ("vocab.json", "merges.txt", "tokenizer_config.json")


def test_an_empty_folder_says_what_a_model_folder_needs(tmp_path, good_folder):
    message = _load_error(_folder(tmp_path, good_folder))
    assert re.search(r"is empty: a model folder needs config.json, tokenizer files .* and \*.safetensors weights",
                     message)


def test_a_folder_with_only_a_config_names_the_missing_tokenizer_and_weights(tmp_path, good_folder):
    message = _load_error(_folder(tmp_path, good_folder, "config.json"))
    assert "has no tokenizer files and no *.safetensors weights (it holds ['config.json'])" in message


def test_a_folder_without_tokenizer_files_is_refused_rather_than_given_a_one_token_tokenizer(tmp_path, good_folder):
    message = _load_error(_folder(tmp_path, good_folder, "config.json", "model.safetensors"))
    assert "has no tokenizer files (it holds ['config.json', 'model.safetensors'])" in message


def test_a_folder_without_a_config_is_named(tmp_path, good_folder):
    assert "has no config.json (it holds" in _load_error(_folder(tmp_path, good_folder, "model.safetensors", *TOKENIZER))


def test_a_config_without_model_type_is_named(tmp_path, good_folder):
    folder = _folder(tmp_path, good_folder, "model.safetensors", *TOKENIZER)
    (folder / "config.json").write_text('{"hidden_size": 64}')
    assert "config.json has no 'model_type' key" in _load_error(folder)


@pytest.mark.parametrize("keep", [0, 7, 1000, 1_000_000])
def test_a_truncated_safetensors_file_is_named_with_its_sizes(tmp_path, good_folder, keep):
    folder = _folder(tmp_path, good_folder, "config.json", *TOKENIZER)
    (folder / "model.safetensors").write_bytes((good_folder / "model.safetensors").read_bytes()[:keep])
    message = _load_error(folder)
    assert "model.safetensors is broken" in message and "Copy or download it again" in message
    assert re.search(r"truncated|too few for a safetensors header", message)


def test_a_safetensors_file_with_a_corrupted_header_is_named(tmp_path, good_folder):
    folder = _folder(tmp_path, good_folder, "config.json", *TOKENIZER)
    data = bytearray((good_folder / "model.safetensors").read_bytes())
    data[8:40] = b"#" * 32
    (folder / "model.safetensors").write_bytes(bytes(data))
    assert re.search(r"model.safetensors is broken: its header cannot be read \(JSONDecodeError", _load_error(folder))


def test_weights_that_lack_parameters_of_the_config_are_refused_not_filled_at_random(tmp_path, good_folder):
    """A safetensors file of another (here: smaller) model would load with random values in the gaps."""
    from safetensors.torch import load_file, save_file

    folder = _folder(tmp_path, good_folder, "config.json", *TOKENIZER)
    tensors = load_file(good_folder / "model.safetensors")
    kept = {name: tensor for name, tensor in tensors.items() if ".layers.1." not in name}
    save_file(kept, folder / "model.safetensors", metadata={"format": "pt"})
    message = _load_error(folder)
    assert re.search(r"its weights lack \d+ parameter\(s\) of its config's architecture \(model\.layers\.1\.", message)
    assert "random values" in message


def test_a_missing_shard_of_a_sharded_model_is_named(tmp_path, good_folder):
    folder = _folder(tmp_path, good_folder, "config.json", "model.safetensors", *TOKENIZER)
    (folder / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a": "model.safetensors", "b": "model-00002-of-00002.safetensors"}}')
    assert "lacks 1 of the 2 weight shards" in _load_error(folder)


def test_pickle_only_weights_are_refused_with_how_to_convert_them(tmp_path, good_folder):
    folder = _folder(tmp_path, good_folder, "config.json", *TOKENIZER)
    (folder / "pytorch_model.bin").write_bytes(b"not unpickled")  # never opened: refusing needs only its name
    message = _load_error(folder, UnsafeWeightsError)
    assert "has pickle weights only (['pytorch_model.bin'])" in message
    assert "safetensors only" in message and "save_pretrained" in message and "safe_serialization=True" in message


def test_the_conversion_recipe_of_the_refusal_works(tmp_path, good_folder):
    """Follow the message's recipe on a pickled copy of a test model: the folder then loads."""
    from safetensors.torch import load_file

    folder = _folder(tmp_path, good_folder, "config.json", *TOKENIZER)
    torch.save(load_file(good_folder / "model.safetensors"), folder / "pytorch_model.bin")
    message = _load_error(folder, UnsafeWeightsError)
    command = re.search(r'python -c "(.*?)"', message)[1]
    exec(command, {})  # noqa: S102 - the library's own recipe, on our own file
    assert load_model(folder, with_hf_reference=False).bridge.cfg.n_layers == 2


def _word_level_tokenizer(folder: Path, words: list[str]) -> None:
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["<unk>", "<|endoftext|>", *words])},
                                     unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "<unk>", "eos_token": "<|endoftext|>"}))


def test_a_tokenizer_without_digits_is_refused(tmp_path, good_folder):
    folder = _folder(tmp_path, good_folder, "config.json", "model.safetensors")
    _word_level_tokenizer(folder, ["x", "="])
    with pytest.raises(TokenizerError, match=r"cannot encode the task: '0' -> tokens \[\] -> ''.*digits 0-9"):
        load_model(folder, with_hf_reference=False)


def test_a_tokenizer_that_drops_the_separators_spaces_is_refused(tmp_path, good_folder):
    folder = _folder(tmp_path, good_folder, "config.json", "model.safetensors")
    _word_level_tokenizer(folder, [*"0123456789", "x", "="])
    with pytest.raises(TokenizerError, match=r"cannot encode the task: ' x' -> tokens \[\d+\] -> 'x'"):
        load_model(folder, with_hf_reference=False)


def test_the_real_tokenizers_encode_the_task(qwen_tokenizer, test_models):
    check_tokenizer(qwen_tokenizer)
    check_tokenizer(test_models["test-gpt2"].tokenizer)


def test_unknown_and_unavailable_devices_are_named_with_the_choices():
    with pytest.raises(DeviceError, match=r"^Unknown device 'nosuchdev': use 'auto' .*'cpu', 'cuda'"):
        resolve_device("nosuchdev")
    with pytest.raises(DeviceError, match="Unknown device ''"):
        resolve_device("")
    if not torch.backends.mps.is_available():
        with pytest.raises(DeviceError, match=r"^Device 'mps' is not available on this machine \(the MPS backend"):
            resolve_device("mps")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match=r"^Device 'cuda' is not available on this machine \(torch .* sees no "
                                              r"CUDA GPU\): use 'cpu'"):
            resolve_device("cuda")
    n_gpus = torch.cuda.device_count()
    with pytest.raises(DeviceError, match=f"Device 'cuda:{n_gpus}' is not available"):
        resolve_device(f"cuda:{n_gpus}")
    with pytest.raises(DeviceError, match="Device 'meta' is not available"):
        resolve_device("meta")


def test_load_model_checks_the_device_before_reading_anything(tmp_path):
    with pytest.raises(DeviceError, match="nosuchdev"):
        load_model(tmp_path / "not-even-a-folder", device="nosuchdev")


def test_bad_dtypes_are_named_with_the_choices():
    with pytest.raises(DtypeError, match=r"^Unknown dtype 'garbage': use one of \['bf16', "):
        resolve_dtype("garbage")
    with pytest.raises(DtypeError, match="torch.int64 is not a floating-point dtype"):
        resolve_dtype(torch.int64)
    assert resolve_dtype(torch.float16) is torch.float16


def _hub_cache(tmp_path: Path, good: Path, repo: str, names: tuple[str, ...]) -> Path:
    """An HF hub cache holding one snapshot of ``repo`` with some of ``good``'s files."""
    root = tmp_path / "hub"
    entry = root / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    snapshot = entry / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in names:
        (snapshot / name).symlink_to(good / name)
    return root


def test_a_cached_hub_model_without_safetensors_weights_says_so(tmp_path, good_folder, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(_hub_cache(tmp_path, good_folder, "org/tiny",
                                                                   ("config.json", *TOKENIZER))))
    with pytest.raises(ModelNotAvailableError) as caught:
        load_model("org/tiny", with_hf_reference=False)
    message = str(caught.value)
    assert "\n" not in message and "neither a local folder nor in the HF cache" not in message
    assert message.startswith("Model 'org/tiny': its config and tokenizer were found but not its *.safetensors weights")
    assert "huggingface-cli download org/tiny --include '*.safetensors'" in message


def test_a_cached_hub_model_loads(tmp_path, good_folder, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(_hub_cache(tmp_path, good_folder, "org/tiny",
                                                                   ("config.json", "model.safetensors", *TOKENIZER))))
    assert load_model("org/tiny", with_hf_reference=False).label == "org/tiny"


def test_a_bridge_that_cannot_run_a_forward_fails_at_load_with_what_to_do(test_model_folder, monkeypatch):
    """E.g. TransformerLens 4.3's OLMo-2 bridge in bfloat16 mixes dtypes in its attention: one clear error."""
    from transformer_lens.model_bridge import TransformerBridge

    from circuit.models import ModelLoadError

    def broken(self, *args, **kwargs):
        raise RuntimeError("expected m1 and m2 to have the same dtype, but got: float != c10::BFloat16")

    monkeypatch.setattr(TransformerBridge, "forward", broken)
    with pytest.raises(ModelLoadError, match=r"bridge of this qwen2 model cannot run a forward in float32 "
                                             r"\(RuntimeError: expected m1.*\)\. Load it in another dtype"):
        load_model(test_model_folder("test-qwen2-2l"), with_hf_reference=False)


def test_a_model_with_non_finite_weights_is_refused_at_load(tmp_path, good_folder):
    from safetensors.torch import load_file, save_file

    from circuit.models import ModelLoadError

    folder = _folder(tmp_path, good_folder, "config.json", *TOKENIZER)
    tensors = load_file(good_folder / "model.safetensors")
    name = next(n for n in tensors if n.endswith("layers.0.mlp.down_proj.weight"))
    tensors[name][0, 0] = float("nan")
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"gives non-finite logits in float32"):
        load_model(folder, with_hf_reference=False)
