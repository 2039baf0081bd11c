"""What the unit tests of the claim files share: a claim file imported as discovery imports it, and hand-made
per-prompt values whose bootstrap interval is a point."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

__all__ = ["claims_module", "constant", "point"]


def claims_module(path: Path) -> ModuleType:
    """The claim file at ``path``, imported once under the private name ``_circuit_claims_.<stem>`` (its claims
    and drafters registered, as ``circuit.spec.import_claims`` does), so that pytest's own import of it as a test
    module is left alone."""
    name = f"_circuit_claims_.{path.stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def constant(values, n_prompts: int = 8) -> torch.Tensor:
    """``values`` on every prompt (a last axis of ``n_prompts``): every resample's mean is the value itself, so
    every interval is a point."""
    values = torch.as_tensor(values, dtype=torch.float64)
    return values[..., None].expand(*values.shape, n_prompts).clone()


def point(interval) -> float:
    """The estimate of an interval that must be a point (hand-made values without noise)."""
    assert float(interval.low) == pytest.approx(float(interval.high)), interval
    return float(interval.estimate)
