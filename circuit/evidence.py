"""Evidence: what a claim measured, written down so that runs can be compared.

Every claim test computes one statistic with a bootstrap confidence interval and judges it against a
threshold from the spec. :class:`ClaimEvidence` holds that record (claim id, statistic, interval,
threshold, decision, the prompt set it was measured on). A run writes one JSON file per model
(:func:`write_evidence`) with the model's name and revision and the versions of the libraries that
computed it, so a later run (a new model revision, a new transformers) can be compared with it.

:func:`compare_with_baseline` is that comparison: a claim whose statistic moved by more than its spec's
``tolerance`` since the baseline is a regression, even if it still passes its threshold, because the
analysis the claim summarizes no longer describes the model the way it did.
"""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "ClaimEvidence",
    "EVIDENCE_FORMAT",
    "EvidenceFile",
    "Regression",
    "compare_with_baseline",
    "library_versions",
    "load_evidence",
    "write_evidence",
]

EVIDENCE_FORMAT = 1
"""Version of the evidence file layout."""


@dataclass(frozen=True)
class ClaimEvidence:
    """One claim test's measurement and decision."""

    claim_id: str
    """The claim's id (as in the spec and the ``claim`` marker)."""
    test: str
    """The test function's name (stable across models: the key for baseline comparison)."""
    statistic: str
    """What was measured, in words."""
    estimate: float
    """The statistic on all prompts."""
    low: float | None = None
    """Lower end of the confidence interval (None when the statistic has none)."""
    high: float | None = None
    """Upper end of the confidence interval."""
    level: float | None = None
    """Confidence level of the interval."""
    threshold: str = ""
    """The decision rule, e.g. ``"CI low >= 0.8"``."""
    holds: bool = False
    """Whether the decision rule holds."""
    tolerance: float | None = None
    """How far the estimate may move from a baseline (from the spec)."""
    prompt_set: str = ""
    """The prompts it was measured on (their repr; for a failing claim, hypothesis' shrunk set)."""
    statement: str = ""
    """The claim's sentence."""
    outcome: str = ""
    """The test's outcome: passed, failed, skipped (filled in by the runner)."""
    note: str = ""
    """Anything else the runner adds (e.g. a baseline regression)."""

    def __repr__(self) -> str:  # short: assertion rewriting shows it under the message
        return f"ClaimEvidence({self.claim_id!r}, {self.test!r}, estimate={self.estimate:.4g}, holds={self.holds})"

    @property
    def interval(self) -> str:
        if self.low is None or self.high is None:
            return f"{self.estimate:.4g}"
        level = f"{self.level:.0%} " if self.level else ""
        return f"{self.estimate:.4g} [{level}CI {self.low:.4g}, {self.high:.4g}]"

    def describe(self) -> str:
        """One paragraph: statistic, interval, rule, verdict and the prompts (for assertion messages)."""
        verdict = "holds" if self.holds else "does NOT hold"
        return (f"{self.claim_id}: {self.statistic} = {self.interval}; rule {self.threshold} {verdict}. "
                f"Prompts: {self.prompt_set or '(none recorded)'}")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that compute the evidence (a missing one is reported as such)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "transformer-lens", "circuit-claims", "hypothesis"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


@dataclass(frozen=True)
class EvidenceFile:
    """The evidence of one run on one model."""

    model: str
    revision: str | None
    claims: tuple[ClaimEvidence, ...]
    spec: str | None = None
    """The spec file the claims were judged against."""
    versions: Mapping[str, str] = field(default_factory=library_versions)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def by_test(self) -> dict[str, ClaimEvidence]:
        return {c.test: c for c in self.claims}


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


def write_evidence(path: str | Path, evidence: EvidenceFile) -> Path:
    """Write ``evidence`` as JSON to ``path`` (folders created). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    claims = [{k: _clean(v) for k, v in asdict(c).items()} for c in evidence.claims]
    document = {
        "format": EVIDENCE_FORMAT,
        "model": evidence.model,
        "revision": evidence.revision,
        "spec": evidence.spec,
        "created": evidence.created,
        "library_versions": dict(evidence.versions),
        "claims": claims,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def load_evidence(path: str | Path) -> EvidenceFile:
    """Read an evidence file written by :func:`write_evidence`.

    Raises:
        ValueError: naming the file, when it is missing, not JSON, or not an evidence file.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"Baseline {path} does not exist. Write one with --update-baseline, or pass the "
                         f"path of a stored reports/evidence/<model>.json.") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"Baseline {path} is not JSON ({error}).") from None
    if not isinstance(document, dict) or document.get("format") != EVIDENCE_FORMAT or "claims" not in document:
        raise ValueError(f"{path} is not an evidence file of format {EVIDENCE_FORMAT} (keys: "
                         f"{sorted(document) if isinstance(document, dict) else type(document).__name__}). "
                         f"Regenerate it with --update-baseline.")
    known = set(ClaimEvidence.__dataclass_fields__)
    claims = []
    for i, record in enumerate(document["claims"]):
        missing = {"claim_id", "test", "statistic", "estimate"} - set(record)
        if missing:
            raise ValueError(f"{path}: claims[{i}] lacks {sorted(missing)}.")
        record = {k: v for k, v in record.items() if k in known}
        if isinstance(record["estimate"], str):
            record["estimate"] = float(record["estimate"])
        claims.append(ClaimEvidence(**record))
    return EvidenceFile(model=document.get("model", "?"), revision=document.get("revision"),
                        claims=tuple(claims), spec=document.get("spec"), versions=document.get("library_versions", {}),
                        created=document.get("created", "?"))


@dataclass(frozen=True)
class Regression:
    """A claim whose statistic moved further from the baseline than its tolerance allows."""

    test: str
    claim_id: str
    statistic: str
    baseline: float
    current: float
    tolerance: float

    @property
    def moved(self) -> float:
        return self.current - self.baseline

    def describe(self, baseline_path: str | Path = "the baseline") -> str:
        return (f"Regression against {baseline_path}: {self.claim_id} ({self.test}) {self.statistic} moved from "
                f"{self.baseline:.4g} to {self.current:.4g} (by {self.moved:+.4g}), beyond the spec tolerance "
                f"{self.tolerance:.4g}. If the change is expected (a new model revision or library), review the "
                f"report and rewrite the baseline with --update-baseline.")


def compare_with_baseline(current: ClaimEvidence, baseline: EvidenceFile | Iterable[ClaimEvidence]) -> Regression | None:
    """The regression of ``current`` against the baseline's record of the same test, or None.

    A test the baseline does not have, or a record without a tolerance, is no regression.
    """
    records = baseline.by_test() if isinstance(baseline, EvidenceFile) else {c.test: c for c in baseline}
    before = records.get(current.test)
    if before is None or current.tolerance is None:
        return None
    moved = abs(current.estimate - before.estimate)
    if math.isnan(moved) or moved > current.tolerance:
        return Regression(current.test, current.claim_id, current.statistic, before.estimate, current.estimate,
                          current.tolerance)
    return None
