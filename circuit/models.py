"""Loading a language model for circuit analysis.

One function, :func:`load_model`, turns a model name (hub id), a local folder or a cached hub id into
three objects that the rest of the library needs: the tokenizer, a TransformerLens ``TransformerBridge``
in compatibility mode (folded layer norms, centred writing weights and unembedding: the numerics and
hook names of the old ``HookedTransformer``), and, on request, a *separate* Hugging Face copy loaded
with eager attention.

The separate copy matters: booting a bridge forces eager attention on the HF model it wraps and writes
processed weights into it, so comparing the bridge with the model it wraps compares it with itself.

Loading never reaches a hub when ``HF_HUB_OFFLINE=1`` is set; a model that is neither a local folder nor
in the HF cache then raises :class:`ModelNotAvailableError`, naming the model and how to provide it.
Remote code runs only when ``trust_remote_code=True`` is asked for; weights load from safetensors only
(unpickling a ``pytorch_model.bin`` can run arbitrary code, so such a folder is refused with a recipe to
convert it: :class:`UnsafeWeightsError`).

A local folder is checked before anything loads (:func:`check_model_folder`): a folder that is empty,
lacks ``config.json``, tokenizer files or weights, or holds a truncated or corrupted safetensors file
raises :class:`ModelFolderError`, naming the folder, what is wrong and the fix. Transformers would
otherwise load a folder without tokenizer files as a one-token tokenizer that turns every prompt into
``[0]``. Every tokenizer, local or from the hub, must then encode the task (:func:`check_tokenizer`):
digits, the separators ``" x"`` and ``" ="`` and whole prompts round-trip, and distinct digits get
distinct tokens; else :class:`TokenizerError`. Devices and dtypes are checked by :func:`resolve_device`
(the device must exist on this machine) and :func:`resolve_dtype`, with :class:`DeviceError` and
:class:`DtypeError`.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DeviceError",
    "DtypeError",
    "LoadedModel",
    "ModelFolderError",
    "ModelLoadError",
    "ModelNotAvailableError",
    "TokenizerError",
    "UnsafeWeightsError",
    "check_model_folder",
    "check_tokenizer",
    "fetch_command",
    "in_hf_cache",
    "load_model",
    "resolve_device",
    "resolve_dtype",
]

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}


class ModelLoadError(RuntimeError):
    """The model cannot be loaded as given; the message names it, what is wrong and the fix."""


class ModelNotAvailableError(ModelLoadError):
    """The model's files are neither in a local folder, nor in the HF cache, nor reachable."""


class ModelFolderError(ModelLoadError):
    """A local model folder is incomplete or holds a broken file (empty, no config, tokenizer or weights,
    truncated or corrupted safetensors)."""


class UnsafeWeightsError(ModelFolderError):
    """The weights are pickle files only (``pytorch_model.bin``...): refused, safetensors only."""


class TokenizerError(ModelLoadError):
    """The tokenizer cannot encode the task's prompts and answers faithfully."""


class DeviceError(ValueError):
    """A device name torch does not know, or a device this machine does not have."""


class DtypeError(ValueError):
    """A dtype name that is not a floating-point torch dtype."""


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for analysis. Treat every field as read-only.

    Attributes:
        name: the name or path it was loaded from.
        revision: the hub revision asked for (``None``: the default branch or a local folder).
        tokenizer: the model's tokenizer.
        bridge: a ``TransformerBridge`` in compatibility mode (hook names ``blocks.{l}.attn.hook_z``...).
        hf_model: a separate HF copy with eager attention, for equivalence checks, or ``None``.
        device: where the bridge lives.
        dtype: the bridge's dtype.
    """

    name: str
    revision: str | None
    tokenizer: Any = field(repr=False)
    bridge: Any = field(repr=False)
    hf_model: Any | None = field(repr=False)
    device: torch.device
    dtype: torch.dtype

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """Keep pretty-printers (hypothesis' falsifying examples) to the short repr."""
        printer.text(repr(self))

    @property
    def label(self) -> str:
        """A short label for reports: the folder's name or the hub id, with the revision if any."""
        base = Path(self.name).name if Path(self.name).exists() else self.name
        return f"{base}@{self.revision}" if self.revision else base


_DEVICE_HELP = "use 'auto' (cuda when present, else cpu), 'cpu', 'cuda', 'cuda:<index>' or 'mps'"


def _unavailable_reason(device: torch.device) -> str | None:
    """Why ``device`` cannot be used on this machine, or ``None`` when it can."""
    if device.type == "cpu":
        return None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            return f"torch {torch.__version__} ({build}) sees no CUDA GPU"
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            return f"torch sees {count} CUDA GPU(s), cuda:0..cuda:{count - 1}"
        return None
    if device.type == "mps":
        return None if torch.backends.mps.is_available() else "the MPS backend (Apple GPUs) is not available"
    backend = getattr(torch, device.type, None)
    is_available = getattr(backend, "is_available", None)
    if callable(is_available) and is_available():
        return None
    return f"torch has no usable {device.type!r} backend here"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"`` picks cuda when present, else cpu; any other device must exist on this machine.

    Raises:
        DeviceError: an unknown device name, or a device this machine does not have (``"cuda"`` without a
            GPU, ``"mps"`` off Apple silicon, ``"cuda:3"`` with one GPU).
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DeviceError(f"Unknown device {device!r}: {_DEVICE_HELP}.") from None
    reason = _unavailable_reason(resolved)
    if reason is not None:
        raise DeviceError(f"Device {device!r} is not available on this machine ({reason}): "
                          f"use 'cpu', or 'auto' to take a GPU when there is one.")
    return resolved


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """Accepts a floating-point torch dtype or one of its names (``float32``, ``bf16``...).

    Raises:
        DtypeError: any other name or dtype.
    """
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise DtypeError(f"dtype {dtype} is not a floating-point dtype: use one of {sorted(_DTYPES)}.")
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise DtypeError(f"Unknown dtype {dtype!r}: use one of {sorted(_DTYPES)}.") from None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else with a separator is meant as a path."""
    return name.startswith((".", "~", os.sep)) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def _first_line(error: BaseException) -> str:
    """The first line of an error's message: messages here stay one line."""
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def fetch_command(name: str, revision: str | None = None) -> str:
    """The command that downloads hub model ``name`` into the HF cache with the installed huggingface-hub:
    ``hf download`` (huggingface-hub 0.34 and later) or ``huggingface-cli download`` (earlier)."""
    import importlib.util

    try:
        has_hf = importlib.util.find_spec("huggingface_hub.cli.hf") is not None
    except ImportError:  # no huggingface_hub.cli package: an old huggingface-hub
        has_hf = False
    command = "hf download" if has_hf else "huggingface-cli download"
    return f"{command} {name}" + (f" --revision {revision}" if revision else "")


def in_hf_cache(name: str, revision: str | None = None) -> bool:
    """Whether hub model ``name`` (at ``revision``) has its ``config.json`` in the HF cache; False for a name
    that is not a valid hub id."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, "config.json", revision=revision)
    except Exception:  # HFValidationError and the like: not a hub id, so not cached
        return False
    return isinstance(found, str)


def _not_available(name: str, revision: str | None, cause: BaseException) -> ModelNotAvailableError:
    at = f" at revision {revision!r}" if revision else ""
    how = (
        f"Provide it in one of three ways: (1) pass a local folder holding its config.json, tokenizer files "
        f"and *.safetensors weights; (2) download it into the HF cache on a machine with network access, "
        f"e.g. `{fetch_command(name, revision)}`, and copy "
        f"the cache (~/.cache/huggingface/hub) here; (3) unset HF_HUB_OFFLINE on a machine that reaches "
        f"the hub."
    )
    mode = "HF_HUB_OFFLINE is set and " if _offline() else ""
    return ModelNotAvailableError(
        f"Model {name!r}{at} is not available: {mode}it is neither a local folder nor in the HF cache "
        f"({type(cause).__name__}: {_first_line(cause)}). {how}"
    )


_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "spiece.model", "vocab.txt")
"""A folder holding none of these has no tokenizer (BPE needs ``vocab.json`` with ``merges.txt``)."""

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

_FOLDER_FIX = ("a model folder needs config.json, tokenizer files (tokenizer.json, or vocab.json + merges.txt) and "
               "*.safetensors weights, as written by model.save_pretrained(folder) and tokenizer.save_pretrained(folder)")


def _convert_recipe(folder: Path) -> str:
    return (f"convert them once, only if you trust the file: python -c \"from transformers import "
            f"AutoModelForCausalLM as M; M.from_pretrained('{folder}', use_safetensors=False)"
            f".save_pretrained('{folder}', safe_serialization=True)\" (or safetensors.torch.save_file on the "
            f"state dict that torch.load(path, weights_only=True) returns)")


def _check_safetensors(path: Path) -> str | None:
    """What is wrong with a safetensors file (its header and size), or ``None`` when it looks whole."""
    size = path.stat().st_size
    try:
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                return f"it holds {size} bytes, too few for a safetensors header"
            (length,) = struct.unpack("<Q", prefix)
            if length > size - 8:
                return f"its header claims {length} bytes but the file holds {size}: the file is truncated or not safetensors"
            header = json.loads(handle.read(length))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"its header cannot be read ({type(error).__name__}: {error})"
    if not isinstance(header, dict):
        return "its header is not a table of tensors"
    try:
        ends = [int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"]
    except (KeyError, IndexError, TypeError, ValueError):
        return "its header does not describe tensors (no data_offsets)"
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        return f"its header describes {expected} bytes but the file holds only {size}: the file is truncated"
    if size > expected:
        return f"it holds {size} bytes but its header describes {expected}: the file is corrupted"
    return None


def check_model_folder(folder: str | os.PathLike) -> None:
    """Check that a local model folder holds what loading needs, before anything loads.

    Raises:
        UnsafeWeightsError: the weights are pickle files only (with a recipe to convert them).
        ModelFolderError: the folder is empty; ``config.json`` is missing or unreadable; tokenizer files or
            weights are missing; a safetensors file is truncated or corrupted; a shard listed in
            ``model.safetensors.index.json`` is missing.
    """
    folder = Path(folder)
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    if not files:
        raise ModelFolderError(f"Model folder {str(folder)!r} is empty: {_FOLDER_FIX}.")
    held = f"it holds {files[:8]}{' ...' if len(files) > 8 else ''}"
    safetensors = sorted(folder.glob("*.safetensors"))
    pickles = [name for name in files if name.endswith(_PICKLE_SUFFIXES) and not name.startswith("training_args")]
    if not safetensors and pickles:
        raise UnsafeWeightsError(
            f"Model folder {str(folder)!r} has pickle weights only ({pickles[:4]}), which this library refuses to "
            f"load (unpickling can run arbitrary code; safetensors only): {_convert_recipe(folder)}.")
    missing = [what for what, present in (
        ("config.json", "config.json" in files),
        ("tokenizer files", any(name in files for name in _TOKENIZER_FILES)),
        ("*.safetensors weights", bool(safetensors))) if not present]
    if missing:
        raise ModelFolderError(f"Model folder {str(folder)!r} has no {' and no '.join(missing)} ({held}): {_FOLDER_FIX}.")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFolderError(f"Model folder {str(folder)!r}: config.json is not valid JSON ({error}); write it "
                               f"again with config.save_pretrained(folder).") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelFolderError(f"Model folder {str(folder)!r}: config.json has no 'model_type' key, so the "
                               f"architecture is unknown; write it with config.save_pretrained(folder).")
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, AttributeError) as error:
            raise ModelFolderError(f"Model folder {str(folder)!r}: {index.name} cannot be read ({type(error).__name__}: "
                                   f"{error}); copy it again.") from None
        absent = [name for name in shards if not (folder / name).is_file()]
        if absent:
            raise ModelFolderError(f"Model folder {str(folder)!r} lacks {len(absent)} of the {len(shards)} weight "
                                   f"shards {index.name} lists ({absent[:3]}): copy them into the folder.")
    for path in safetensors:
        problem = _check_safetensors(path)
        if problem is not None:
            raise ModelFolderError(f"Model folder {str(folder)!r}: {path.name} is broken: {problem}. Copy or "
                                   f"download it again (compare its size and checksum with the original).")


_TASK_PROMPT = "70620 x 99460 ="
_TASK_ANSWER = " 7023865200"


def check_tokenizer(tokenizer: Any, name: str = "the model") -> None:
    """Check that ``tokenizer`` encodes the task: every digit, ``" x"``, ``" ="``, a prompt and an answer
    encode to known tokens that decode back to the same text (so the ten digits get ten different tokens),
    and operands and answers take one token per digit.

    Raises:
        TokenizerError: naming the model, the first text that fails and how.
    """
    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    fix = ("load the tokenizer the model was trained with (its tokenizer.json, or vocab.json + merges.txt); the "
           "task needs digits 0-9 and ' x', ' =' as text")
    unknown = getattr(tokenizer, "unk_token_id", None)
    for text in [*"0123456789", " x", " =", _TASK_PROMPT, _TASK_ANSWER]:
        ids = encode(text)
        back = tokenizer.decode(ids) if ids else ""
        if not ids or back != text or (unknown is not None and unknown in ids):
            raise TokenizerError(
                f"The tokenizer of {name} cannot encode the task: {text!r} -> tokens {ids[:16]} -> {back!r} "
                f"(vocabulary of {len(tokenizer)} tokens): {fix}.")
    for text in (_TASK_PROMPT, _TASK_ANSWER):  # the claims' positions count one token per digit
        pieces = [tokenizer.decode([i]) for i in encode(text)]
        merged = [p for p in pieces if sum(c.isdigit() for c in p) > 1]
        if merged:
            raise TokenizerError(
                f"The tokenizer of {name} puts several digits in one token ({text!r} -> {pieces}): the task and "
                f"the claims' per-digit parameters (operand positions, leading_tokens) assume one digit per "
                f"token, so the claims would measure something else. Use a model whose tokenizer splits digits "
                f"(Qwen2, Llama 3 and the bundled models do).")


def _check_bridge_runs(bridge: Any, tokenizer: Any, name: str, dtype: torch.dtype) -> None:
    """One forward of a short prompt, so that a bridge that cannot run (e.g. a TransformerLens adapter that
    mixes dtypes) fails here, once, with what to do, instead of in every claim."""
    tokens = torch.tensor([tokenizer.encode("12 x 34 =")], device=next(bridge.parameters()).device)
    try:
        with torch.no_grad():
            logits = bridge(tokens)
    except (RuntimeError, TypeError, ValueError, AttributeError) as error:
        model_type = getattr(getattr(bridge, "original_model", None), "config", None)
        model_type = getattr(model_type, "model_type", type(bridge).__name__)
        raise ModelLoadError(
            f"Model {name!r}: the TransformerLens bridge of this {model_type} model cannot run a forward in "
            f"{str(dtype).removeprefix('torch.')} ({type(error).__name__}: {_first_line(error)}). Load it in "
            f"another dtype (e.g. --dtype float32), or check transformer-lens for a fix.") from error
    if not bool(torch.isfinite(logits).all()):
        raise ModelLoadError(
            f"Model {name!r} gives non-finite logits in {str(dtype).removeprefix('torch.')} on a short prompt: "
            f"its weights hold NaN/inf or overflow this dtype (float16 overflows easily; try bfloat16 or float32).")


def load_model(
    name_or_path: str | os.PathLike,
    *,
    revision: str | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = "float32",
    device_map: str | dict | None = None,
    trust_remote_code: bool = False,
    with_hf_reference: bool = True,
) -> LoadedModel:
    """Load tokenizer, TransformerBridge (compatibility mode) and a separate eager HF reference copy.

    Args:
        name_or_path: a hub id (``"Qwen/Qwen2.5-0.5B"``) or a local folder in HF format.
        revision: hub revision (branch, tag or commit); ignored for a local folder.
        device: ``None``/``"auto"`` (cuda when present), ``"cpu"``, ``"cuda:1"``...
        dtype: torch dtype or its name; float32 by default (the equivalence claim's tolerance assumes it).
        device_map: passed to HF/accelerate (e.g. ``"auto"``) for a model larger than one device.
        trust_remote_code: run the model repository's own code; off unless asked for.
        with_hf_reference: also load the separate HF copy used by the equivalence claim.

    Raises:
        ModelNotAvailableError: the model cannot be found locally, in the cache, or on a reachable hub.
        ModelFolderError: a local folder is incomplete or holds a broken file (:func:`check_model_folder`);
            :class:`UnsafeWeightsError` when its weights are pickle files only.
        TokenizerError: the tokenizer cannot encode the task (:func:`check_tokenizer`).
        DeviceError, DtypeError: an unknown or unavailable device, an unknown dtype.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    name = str(name_or_path)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    local = Path(name).is_dir()
    hub_kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if not local:
        hub_kwargs["revision"] = revision
    if not local and _offline():
        hub_kwargs["local_files_only"] = True
    if Path(name).is_file():
        raise ModelFolderError(f"Model {name!r} is a file, not a folder: pass the folder that holds config.json, "
                               f"the tokenizer files and the *.safetensors weights.")
    if not local and _looks_like_path(name):
        raise ModelNotAvailableError(
            f"Model {name!r} looks like a local path, but no such folder exists. Check the path, or pass a "
            f"hub id such as 'Qwen/Qwen2.5-0.5B'."
        )
    if local:
        check_model_folder(name)

    def failed(error: BaseException, what: str) -> ModelLoadError:
        """A loading error, as the error of the folder or of the hub model (never 'not in the cache' for a folder)."""
        if local:
            return ModelFolderError(f"Model folder {name!r}: its {what} cannot be loaded ({type(error).__name__}: "
                                    f"{_first_line(error)}); {_FOLDER_FIX}.")
        if what == "weights":  # config and tokenizer were found: the model is there, its safetensors are not
            at = f" at revision {revision!r}" if revision else ""
            return ModelNotAvailableError(
                f"Model {name!r}{at}: its config and tokenizer were found but not its *.safetensors weights "
                f"({type(error).__name__}: {_first_line(error)}). This library loads safetensors only: download "
                f"them (`huggingface-cli download {name} --include '*.safetensors'`), or, if the repository has only "
                f"pickle weights (pytorch_model.bin), convert them into a folder you trust with "
                f"save_pretrained(folder, safe_serialization=True) and pass that folder.")
        return _not_available(name, revision, error)

    try:
        AutoConfig.from_pretrained(name, **hub_kwargs)
    except (OSError, ValueError) as error:
        raise failed(error, "config") from error
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **hub_kwargs)
    except (OSError, ValueError) as error:
        raise failed(error, "tokenizer") from error
    check_tokenizer(tokenizer, repr(name))

    def hf_copy() -> Any:
        from safetensors import SafetensorError

        kwargs: dict[str, Any] = dict(hub_kwargs, dtype=torch_dtype, attn_implementation="eager",
                                      use_safetensors=True)
        if device_map is not None:
            kwargs["device_map"] = device_map
        try:
            model, info = AutoModelForCausalLM.from_pretrained(name, output_loading_info=True, **kwargs)
        except (OSError, SafetensorError) as error:
            raise failed(error, "weights") from error
        missing = sorted(info.get("missing_keys") or [])
        if missing:  # transformers would fill them with random values: the analysis would be of noise
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            where = f"Model folder {name!r}" if local else f"Model {name!r}"
            raise ModelFolderError(
                f"{where}: its weights lack {len(missing)} parameter(s) of its config's architecture ({shown}), "
                f"which transformers would fill with random values: the safetensors do not match config.json. "
                f"Save the model again with model.save_pretrained(folder) or use the config it was trained with.")
        unexpected = sorted(k for k in info.get("unexpected_keys") or [] if not k.endswith("rotary_emb.inv_freq"))
        if unexpected:  # transformers would drop them: the weights are of another architecture or size
            shown = ", ".join(unexpected[:3]) + (f" and {len(unexpected) - 3} more" if len(unexpected) > 3 else "")
            where = f"Model folder {name!r}" if local else f"Model {name!r}"
            raise ModelFolderError(
                f"{where}: its weights hold {len(unexpected)} parameter(s) its config's architecture lacks "
                f"({shown}), which transformers would drop: the safetensors do not match config.json (e.g. more "
                f"layers than num_hidden_layers). Use the config the weights were trained with.")
        if device_map is None:
            model = model.to(torch_device)
        return model.eval()

    from transformer_lens.model_bridge import TransformerBridge

    wrapped = hf_copy()
    bridge = TransformerBridge.boot_transformers(
        name,
        hf_model=wrapped,
        tokenizer=tokenizer,
        device=None if device_map is not None else torch_device,
        dtype=torch_dtype,
        trust_remote_code=trust_remote_code,
        revision=None if local else revision,
        device_map=device_map,
    )
    bridge.enable_compatibility_mode()
    bridge.eval()
    _check_bridge_runs(bridge, tokenizer, name, torch_dtype)
    reference = hf_copy() if with_hf_reference else None
    return LoadedModel(
        name=name,
        revision=None if local else revision,
        tokenizer=tokenizer,
        bridge=bridge,
        hf_model=reference,
        device=torch_device,
        dtype=torch_dtype,
    )
