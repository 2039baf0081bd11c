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
Remote code runs only when ``trust_remote_code=True`` is asked for; weights load from safetensors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["LoadedModel", "ModelNotAvailableError", "load_model", "resolve_device", "resolve_dtype"]

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}


class ModelNotAvailableError(RuntimeError):
    """The model's files are neither in a local folder, nor in the HF cache, nor reachable."""


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


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"`` picks cuda when present, else cpu; anything else is taken as given."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """Accepts a torch dtype or one of its names (``float32``, ``bf16``...)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"Unknown dtype {dtype!r}: use one of {sorted(_DTYPES)}.") from None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes", "on"}


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else with a separator is meant as a path."""
    return name.startswith((".", "~", os.sep)) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def _not_available(name: str, revision: str | None, cause: BaseException) -> ModelNotAvailableError:
    at = f" at revision {revision!r}" if revision else ""
    how = (
        f"Provide it in one of three ways: (1) pass a local folder holding its config.json, tokenizer files "
        f"and *.safetensors weights; (2) download it into the HF cache on a machine with network access, "
        f"e.g. `huggingface-cli download {name}`{' --revision ' + revision if revision else ''}, and copy "
        f"the cache (~/.cache/huggingface/hub) here; (3) unset HF_HUB_OFFLINE on a machine that reaches "
        f"the hub."
    )
    mode = "HF_HUB_OFFLINE is set and " if _offline() else ""
    return ModelNotAvailableError(
        f"Model {name!r}{at} is not available: {mode}it is neither a local folder nor in the HF cache "
        f"({type(cause).__name__}: {cause}). {how}"
    )


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
    if not local and _looks_like_path(name):
        raise ModelNotAvailableError(
            f"Model {name!r} looks like a local path, but no such folder exists. Check the path, or pass a "
            f"hub id such as 'Qwen/Qwen2.5-0.5B'."
        )
    try:
        AutoConfig.from_pretrained(name, **hub_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name, **hub_kwargs)
    except OSError as error:
        raise _not_available(name, revision, error) from error

    def hf_copy() -> Any:
        kwargs: dict[str, Any] = dict(hub_kwargs, dtype=torch_dtype, attn_implementation="eager",
                                      use_safetensors=True)
        if device_map is not None:
            kwargs["device_map"] = device_map
        try:
            model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
        except OSError as error:
            raise _not_available(name, revision, error) from error
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
