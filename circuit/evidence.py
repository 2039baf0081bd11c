"""Evidence: what a claim measured, written down so that runs can be compared.

Every claim test computes one statistic with a bootstrap confidence interval and judges it against a
threshold from the spec. :class:`ClaimEvidence` holds that record (claim id, statistic, interval,
threshold, decision, the prompt set it was measured on). A run keeps one JSON file per model
(:class:`EvidenceFile`): the model's name and revision, the spec (path and SHA-256), dtype, device and the
versions of the libraries that computed it, so a later run (a new model revision, a new transformers) can be
compared with it.

A *baseline* is such a file kept on purpose. :func:`compare_with_baseline` compares a record with the
baseline's record of the same test and says so in a :class:`Comparison`, whose fields (baseline estimate and
interval, change, direction, tolerance) are what the terminal and the report are written from:

- **not comparable** when the two records were measured with different settings (the claim's parameters or
  the prompts' population, :attr:`ClaimEvidence.parameters`; or another statistic): the baseline's number is
  never attached to settings it was not measured with;
- **regressed** when the change is toward failing the claim: its verdict moved from supported to
  inconclusive or refuted, or its statistic moved further than the spec's ``tolerance`` in the direction
  that fails the claim's rule (``circuit.decision.Rule.worsening``), even if it still passes its threshold;
- **improved** when the change is the other way: reported, and failing nothing, unless the claim's spec sets
  ``drift = "both"`` (then a move beyond tolerance either way regresses);
- **unchanged** otherwise; **no-baseline** when the baseline has no record of the test.

:func:`update_baseline` writes a baseline only from evidence that deserves it: records that ran to a
verdict with a finite statistic replace their test's record, every other record is kept.

Files are written atomically (a temporary file in the same folder, then ``os.replace``), under an advisory
lock (:func:`locked`) when a read-merge-write must not interleave with another run's: a reader sees the old
file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "ClaimEvidence",
    "EVIDENCE_FORMAT",
    "EvidenceError",
    "EvidenceFile",
    "BaselineUpdate",
    "Comparison",
    "DRIFTS",
    "STATUSES",
    "atomic_write_text",
    "compare",
    "compare_with_baseline",
    "comparison_message",
    "evidence_filename",
    "has_verdict",
    "library_versions",
    "load_evidence",
    "locked",
    "merge_evidence",
    "remove_leftovers",
    "spec_sha256",
    "update_baseline",
    "write_evidence",
]

EVIDENCE_FORMAT = 2
"""Version of the evidence file layout (format 1 files, without dtype/device/spec hash, are still read)."""

VERDICTS = ("passed", "failed")
"""Outcomes of a claim test that ran to a verdict (``error`` and ``skipped`` did not)."""


STATUSES = ("regressed", "improved", "unchanged", "not-comparable", "no-baseline")
"""What a comparison with a baseline found (:class:`Comparison`)."""

DRIFTS = ("worse", "both")
"""Which drift beyond tolerance regresses a claim (its spec's ``drift``): a move toward failing only (the
default), or a move either way."""


class EvidenceError(ValueError):
    """An evidence or baseline file that cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class Comparison:
    """A claim test's record compared with the baseline's record of the same test (:func:`compare`)."""

    status: str
    """One of :data:`STATUSES`: "regressed", "improved", "unchanged", "not-comparable" or "no-baseline"."""
    baseline_estimate: float | None = None
    """The baseline's statistic (None when no comparable baseline record exists)."""
    baseline_low: float | None = None
    """Lower end of the baseline's interval."""
    baseline_high: float | None = None
    """Upper end of the baseline's interval."""
    baseline_verdict: str | None = None
    """The baseline's verdict (supported, refuted, inconclusive)."""
    change: float | None = None
    """This run's estimate minus the baseline's (None when not comparable)."""
    direction: str = "none"
    """"worse" (toward failing the claim's rule), "better" (away from it) or "none" (no change, or unknown)."""
    tolerance: float | None = None
    """How far the statistic may move (the spec's ``tolerance``)."""
    drift: str = "worse"
    """Which moves beyond tolerance regress: "worse" (toward failing) or "both" (the spec's ``drift``)."""
    reason: str = ""
    """Why, in one line ("parameters differ: late_from_layer 1 -> 2", "verdict supported -> inconclusive")."""

    @property
    def compared(self) -> bool:
        """Whether the baseline's number was compared with this run's (regressed, improved or unchanged)."""
        return self.status in ("regressed", "improved", "unchanged")

    @property
    def baseline_interval(self) -> str:
        return _interval_text(self.baseline_estimate, self.baseline_low, self.baseline_high)


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
    """How far the estimate may move from a baseline toward failing (from the spec)."""
    prompt_set: str = ""
    """The prompts it was measured on (their repr; for a failing claim, hypothesis' shrunk set)."""
    statement: str = ""
    """The claim's sentence."""
    outcome: str = ""
    """The test's outcome: passed or failed (a verdict), error (no verdict: an exception, a model that did not
    load) or skipped (filled in by the runner)."""
    note: str = ""
    """Anything else the runner adds (the reason of an error or skip; a baseline comparison is :attr:`comparison`)."""
    dtype: str = ""
    """The model's dtype in the run that measured it."""
    device: str = ""
    """The device it ran on."""
    recorded: str = ""
    """When it was measured (UTC, ISO 8601): records of several runs can share a file."""
    verdict: str = ""
    """What the evidence says: "supported", "refuted" or "inconclusive" (``circuit.decision``); "" for a record
    with no judgement (an error, a skip). A claim test passes only when its claim is supported."""
    n_prompts: int | None = None
    """Prompts of the last look (the drawn set, grown while inconclusive)."""
    looks: str = ""
    """Every look at the set that decided the test, when there were several ("16 prompts: inconclusive; ...")."""
    prompts_to_decide: int | None = None
    """For an inconclusive verdict: about how many prompts per set would likely decide it."""
    false_support: float | None = None
    """The largest chance that a false claim is declared supported by this claim test (the spec's
    ``family_level``)."""
    tail: float | None = None
    """One-sided error of each look at the interval's deciding end (``false_support / looks``)."""
    n_sets: int | None = None
    """Prompt sets the claim test is judged on (the hypothesis profile's ``max_examples``); every one must
    support the claim."""
    power: float | None = None
    """The design power of the claim test (the spec's ``[statistics] power``)."""
    reason: str = ""
    """Why the claim could not be judged (a precondition), when it could not."""
    rule_kind: str = ""
    """The kind of the rule it was judged by (``>=``, ``>``, ``<=``, ``<``, ``excludes``: ``circuit.decision.Rule``);
    "" when unknown."""
    rule_threshold: float | None = None
    """The rule's threshold as a number."""
    parameters: Mapping[str, Any] | None = None
    """What the statistic was measured with: the claim's parameters from the spec, bounds and bookkeeping left
    out, and the prompts' population (``circuit.spec.measured_with``); None when not recorded. A baseline
    record is compared only with a record measured with the same."""
    drift: str = "worse"
    """Which moves beyond tolerance regress the claim (the spec's ``drift``, one of :data:`DRIFTS`)."""
    comparison: Comparison | None = None
    """This record against the baseline's (with ``--baseline``); None without a comparison."""

    def __repr__(self) -> str:  # short: assertion rewriting shows it under the message
        return (f"ClaimEvidence({self.claim_id!r}, {self.test!r}, estimate={self.estimate:.4g}, "
                f"verdict={self.verdict or self.holds!r})")

    @property
    def interval(self) -> str:
        return _interval_text(self.estimate, self.low, self.high, self.level)

    def describe(self) -> str:
        """One paragraph: statistic, interval, rule, verdict and the prompts (for assertion messages)."""
        verdict = self.verdict.upper() if self.verdict else ("holds" if self.holds else "does NOT hold")
        prompts = f" over {self.n_prompts} prompts" if self.n_prompts else ""
        return (f"{self.claim_id}: {self.statistic} = {self.interval}{prompts}; rule {self.threshold}: {verdict}. "
                f"Prompts: {self.prompt_set or '(none recorded)'}")


def _interval_text(estimate: float | None, low: float | None, high: float | None, level: float | None = None) -> str:
    if estimate is None:
        return "-"
    if low is None or high is None:
        return f"{estimate:.4g}"
    percent = f"{level:.0%} " if level else ""
    return f"{estimate:.4g} [{percent}CI {low:.4g}, {high:.4g}]"


def has_verdict(record: ClaimEvidence) -> str | None:
    """Why ``record`` may not go into a baseline, or None when it may (a verdict on a finite statistic)."""
    if record.outcome not in VERDICTS:
        return f"{record.outcome or 'no outcome'}{': ' + record.note if record.note else ''}"
    if not record.statistic:
        return "no statistic recorded"
    numbers = [record.estimate] + [v for v in (record.low, record.high) if v is not None]
    if not all(math.isfinite(v) for v in numbers):
        return f"non-finite statistic ({record.interval})"
    return None


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


def spec_sha256(path: str | Path | None) -> str | None:
    """SHA-256 of a spec file's bytes (None without a readable file)."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
    except OSError:
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class EvidenceFile:
    """The evidence of one model: its claims' records and the run that wrote the file last."""

    model: str
    """The model's name (its folder's name or hub id, without the revision)."""
    revision: str | None
    claims: tuple[ClaimEvidence, ...]
    spec: str | None = None
    """The spec file the claims were judged against."""
    spec_sha256: str | None = None
    """SHA-256 of that spec's bytes."""
    dtype: str | None = None
    device: str | None = None
    versions: Mapping[str, str] = field(default_factory=library_versions)
    created: str = field(default_factory=_now)
    run: Mapping[str, Any] = field(default_factory=dict)
    """What the run that wrote the file was: claim tests selected of those known, partial, load error."""

    def by_test(self) -> dict[str, ClaimEvidence]:
        return {c.test: c for c in self.claims}

    def identity(self) -> dict[str, Any]:
        """What a baseline belongs to: model, revision, spec, dtype, device, library versions."""
        return {"model": self.model, "revision": self.revision, "spec": self.spec, "spec_sha256": self.spec_sha256,
                "dtype": self.dtype, "device": self.device, **{f"version of {k}": v for k, v in self.versions.items()}}

    def differences(self, other: EvidenceFile) -> list[str]:
        """``key: ours -> theirs`` for every field of :meth:`identity` that differs (``model`` excluded)."""
        ours, theirs = self.identity(), other.identity()
        return [f"{key}: {ours.get(key)} -> {theirs.get(key)}" for key in dict.fromkeys([*ours, *theirs])
                if key != "model" and ours.get(key) != theirs.get(key)]


def evidence_filename(label: str) -> str:
    """The file name of a model's evidence (``Qwen/Qwen2.5-0.5B@abc`` -> ``Qwen--Qwen2.5-0.5B_at_abc.json``)."""
    return label.replace("/", "--").replace("@", "_at_").replace(" ", "_") + ".json"


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def record_to_dict(record: ClaimEvidence) -> dict[str, Any]:
    """A record as JSON-safe values (non-finite numbers as strings)."""
    return {k: _clean(v) for k, v in asdict(record).items()}


def record_from_dict(data: Mapping[str, Any], where: str = "record") -> ClaimEvidence:
    """Inverse of :func:`record_to_dict`; unknown keys are ignored.

    Raises:
        EvidenceError: a required key is missing or a number is not a number.
    """
    if not isinstance(data, Mapping):
        raise EvidenceError(f"{where} is a {type(data).__name__}, not a claim record.")
    missing = {"claim_id", "test", "statistic", "estimate"} - set(data)
    if missing:
        raise EvidenceError(f"{where} lacks {sorted(missing)}.")
    for key in ("claim_id", "test", "statistic"):
        if not isinstance(data[key], str):
            raise EvidenceError(f"{where}: {key} = {data[key]!r} is a {type(data[key]).__name__}, not a string.")
    known = set(ClaimEvidence.__dataclass_fields__)
    record = {k: v for k, v in data.items() if k in known}
    _numbers(record, ("estimate", "low", "high", "level", "tolerance", "false_support", "tail", "power",
                      "rule_threshold"), where)
    if record.get("parameters") is not None and not isinstance(record["parameters"], Mapping):
        raise EvidenceError(f"{where}: parameters = {record['parameters']!r} is not a mapping.")
    if record.get("comparison") is not None:
        record["comparison"] = _comparison_from_dict(record["comparison"], f"{where}: comparison")
    return ClaimEvidence(**record)


def _numbers(values: dict[str, Any], keys: Iterable[str], where: str) -> None:
    """Turn ``values[key]`` into floats in place (None stays None; JSON keeps NaN as a string)."""
    for key in keys:
        value = values.get(key)
        if value is None or isinstance(value, bool):
            continue
        try:
            values[key] = float(value)
        except (TypeError, ValueError):
            raise EvidenceError(f"{where}: {key} = {value!r} is not a number.") from None


def _comparison_from_dict(data: Any, where: str) -> Comparison:
    if not isinstance(data, Mapping):
        raise EvidenceError(f"{where} is a {type(data).__name__}, not a comparison.")
    values = {k: v for k, v in data.items() if k in Comparison.__dataclass_fields__}
    if values.get("status") not in STATUSES:
        raise EvidenceError(f"{where}: status = {values.get('status')!r} is not one of {list(STATUSES)}.")
    _numbers(values, ("baseline_estimate", "baseline_low", "baseline_high", "change", "tolerance"), where)
    return Comparison(**values)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically: a temporary file in the same folder, then ``os.replace``.

    A reader (or a run interrupted half-way) sees the old file or the new one, never a mixture. When ``path``
    is a symbolic link, its target is written (the link is kept).
    """
    path = Path(os.path.realpath(path))  # a symlink is written through to its target, and stays a link
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(temporary, _file_mode(path))
        with os.fdopen(handle, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return path


def _file_mode(path: Path) -> int:
    """The mode of the file being replaced, or what a new file gets under the process' umask."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold an advisory lock (``fcntl.flock`` on the folder of ``path``) while reading, merging and writing it.

    Two runs that update files in the same folder then take turns instead of each writing what it read
    before the other wrote. The folder itself is locked, so no lock file is left behind. Without ``fcntl``
    (Windows) nothing is serialized; writes stay atomic.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        remove_leftovers(path)
        yield
    finally:
        os.close(handle)  # closing releases the lock


def remove_leftovers(path: str | Path) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write_text` left beside ``path`` when a process was killed
    mid-write (``.<name>.*.tmp``). Call it only while holding :func:`locked` (a writer that holds the lock has
    no temporary file to lose). Returns what was deleted."""
    target = Path(os.path.realpath(path))
    removed = []
    for leftover in {*Path(path).parent.glob(f".{Path(path).name}.*.tmp"), *target.parent.glob(f".{target.name}.*.tmp")}:
        with contextlib.suppress(OSError):
            leftover.unlink()
            removed.append(leftover)
    return removed


def write_evidence(path: str | Path, evidence: EvidenceFile) -> Path:
    """Write ``evidence`` as JSON to ``path`` atomically (folders created). Returns the path."""
    document = {
        "format": EVIDENCE_FORMAT,
        "model": evidence.model,
        "revision": evidence.revision,
        "spec": evidence.spec,
        "spec_sha256": evidence.spec_sha256,
        "dtype": evidence.dtype,
        "device": evidence.device,
        "created": evidence.created,
        "library_versions": dict(evidence.versions),
        "run": dict(evidence.run),
        "claims": [record_to_dict(c) for c in evidence.claims],
    }
    return atomic_write_text(path, json.dumps(document, indent=2) + "\n")


def load_evidence(path: str | Path) -> EvidenceFile:
    """Read an evidence file written by :func:`write_evidence` (format 1 or 2).

    Raises:
        EvidenceError: naming the file and what to do, when it is missing, not JSON, or not an evidence file.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise EvidenceError(f"Baseline {path} does not exist. Write one with --update-baseline, or pass the "
                            f"path of a stored reports/evidence/<model>.json.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise EvidenceError(f"{path} is not JSON ({error}): the file is damaged. Restore it from version "
                            f"control, or delete it and write a new one with --update-baseline.") from None
    except OSError as error:
        raise EvidenceError(f"{path} cannot be read ({type(error).__name__}: {error}).") from None
    if (not isinstance(document, dict) or document.get("format") not in (1, EVIDENCE_FORMAT)
            or not isinstance(document.get("claims"), list)):
        keys = sorted(document) if isinstance(document, dict) else type(document).__name__
        raise EvidenceError(f"{path} is not an evidence file of format {EVIDENCE_FORMAT} (keys: {keys}). "
                            f"Regenerate it with --update-baseline.")
    claims = tuple(record_from_dict(record, f"{path}: claims[{i}]") for i, record in enumerate(document["claims"]))
    first: dict[str, int] = {}
    for i, claim in enumerate(claims):
        if claim.test in first:
            raise EvidenceError(f"{path}: claims[{first[claim.test]}] and claims[{i}] are both records of test "
                                f"{claim.test!r}: the file is damaged. Keep one of them, or restore the file from "
                                f"version control.")
        first[claim.test] = i
    for key in ("library_versions", "run"):
        if document.get(key) is not None and not isinstance(document[key], dict):
            raise EvidenceError(f"{path}: {key} is a {type(document[key]).__name__}, not a mapping: the file is "
                                f"damaged. Restore it from version control, or delete it and write a new one.")
    model = str(document.get("model", "?"))
    if document["format"] == 1:  # format 1 put the revision into the model's label
        model = model.split("@")[0]
    return EvidenceFile(model=model, revision=document.get("revision"), claims=claims, spec=document.get("spec"),
                        spec_sha256=document.get("spec_sha256"), dtype=document.get("dtype"),
                        device=document.get("device"), versions=document.get("library_versions") or {},
                        created=document.get("created", "?"), run=document.get("run") or {})


def merge_evidence(old: EvidenceFile | None, new: EvidenceFile) -> EvidenceFile:
    """``new`` with every record of ``old`` whose test ``new`` did not run kept (old order first).

    Raises:
        EvidenceError: ``old`` is the evidence of another model (its records are not this model's).
    """
    if old is None:
        return new
    if old.model != new.model:
        raise EvidenceError(f"the file holds the evidence of model {old.model!r}, not of {new.model!r}: its records "
                            f"are not merged into another model's. Move the file away, or write to another "
                            f"folder.")
    fresh = new.by_test()
    merged = [fresh.pop(c.test, c) for c in old.claims]
    return replace(new, claims=(*merged, *fresh.values()))


@dataclass(frozen=True)
class BaselineUpdate:
    """What :func:`update_baseline` did."""

    baseline: EvidenceFile
    updated: tuple[str, ...]
    """Tests whose record this run replaced or added."""
    kept: tuple[str, ...]
    """Tests whose old record was kept because this run did not measure them."""
    refused: Mapping[str, str]
    """Tests this run measured without a verdict worth keeping, and why (their old record, if any, is kept)."""

    def describe(self, path: str | Path) -> str:
        text = f"{path}: {len(self.updated)} updated, {len(self.kept)} kept"
        if self.refused:
            skipped = [t for t, why in self.refused.items() if why.startswith("skipped")]
            reasons = [f"{len(skipped)} skipped"] if skipped else []
            reasons += [f"{test}: {why}" for test, why in self.refused.items() if test not in skipped]
            text += f", {len(self.refused)} not updated ({'; '.join(reasons)})"
        return text


def update_baseline(old: EvidenceFile | None, run: EvidenceFile) -> BaselineUpdate:
    """The baseline ``old`` updated from ``run``: only records with a verdict on a finite statistic replace
    (or add) their test's record; all other records of ``old`` are kept. The header (model, revision, spec,
    dtype, device, versions) becomes ``run``'s.
    """
    refused = {c.test: why for c in run.claims if (why := has_verdict(c)) is not None}
    good = replace(run, claims=tuple(c for c in run.claims if c.test not in refused))
    merged = merge_evidence(old, good)
    ran = {c.test for c in good.claims}
    kept = tuple(c.test for c in merged.claims if c.test not in ran)
    return BaselineUpdate(merged, tuple(c.test for c in good.claims), kept, refused)


def compare(current: ClaimEvidence, before: ClaimEvidence | None) -> Comparison:
    """``current`` against the baseline's record ``before`` of the same test (None: the baseline has none).

    Measured with different settings (parameters, statistic): not comparable, naming them. Otherwise a verdict
    that moved from supported is a regression; then the statistic's change is judged against ``current``'s
    tolerance in the direction that fails ``current``'s rule (with ``drift = "both"``, either way). A record
    without a tolerance is compared by its verdict only.
    """
    tolerance, drift = current.tolerance, current.drift
    if before is None:
        return Comparison("no-baseline", tolerance=tolerance, drift=drift, reason="the baseline has no record of it")
    differ = _differences(before, current)
    if differ:
        return Comparison("not-comparable", baseline_verdict=before.verdict or None, tolerance=tolerance, drift=drift,
                          reason=differ)
    base = dict(baseline_estimate=before.estimate, baseline_low=before.low, baseline_high=before.high,
                baseline_verdict=before.verdict or None, change=current.estimate - before.estimate,
                tolerance=tolerance, drift=drift)
    if not math.isfinite(current.estimate):
        return Comparison("regressed", **base, direction="worse", reason=f"the statistic is {current.estimate}")
    worse = _worsening(current, before.estimate)
    direction = "none" if worse is None or worse == 0 else "worse" if worse > 0 else "better"
    verdicts = f"verdict {before.verdict} -> {current.verdict}"
    if before.verdict == "supported" and current.verdict in ("inconclusive", "refuted"):
        return Comparison("regressed", **base, direction="worse", reason=verdicts)
    moved = abs(worse if worse is not None else base["change"])
    if tolerance is not None and moved > tolerance:
        if worse is None:
            return Comparison("regressed", **base, direction=direction,
                              reason="moved beyond tolerance (no rule recorded: a move either way regresses)")
        if direction == "worse":
            return Comparison("regressed", **base, direction=direction, reason="moved beyond tolerance toward failing")
        if drift == "both":
            return Comparison("regressed", **base, direction=direction,
                              reason="moved beyond tolerance away from failing (drift = both: either way regresses)")
        return Comparison("improved", **base, direction=direction, reason="moved beyond tolerance away from failing")
    if before.verdict and before.verdict != "supported" and current.verdict == "supported":
        return Comparison("improved", **base, direction=direction, reason=verdicts)
    return Comparison("unchanged", **base, direction=direction,
                      reason="within tolerance" if tolerance is not None else "no tolerance stated; verdict unchanged")


def _worsening(current: ClaimEvidence, before: float) -> float | None:
    """How far the statistic moved toward failing ``current``'s rule (None: no rule recorded)."""
    from circuit.decision import Rule

    if not current.rule_kind or current.rule_threshold is None or not math.isfinite(current.rule_threshold):
        return None
    return Rule(current.rule_kind, current.rule_threshold).worsening(before, current.estimate)


def _differences(before: ClaimEvidence, current: ClaimEvidence) -> str:
    """Why the two records were not measured alike ("" when they were)."""
    if before.parameters is None or current.parameters is None:
        which = "the baseline's record" if before.parameters is None else "this run's record"
        return (f"{which} does not say what it was measured with (no parameters recorded: a baseline written "
                f"before they were; rewrite it with --update-baseline)")
    keys = dict.fromkeys([*before.parameters, *current.parameters])
    differ = [f"{key} {_value(before.parameters.get(key))} -> {_value(current.parameters.get(key))}"
              for key in keys if before.parameters.get(key) != current.parameters.get(key)]
    if differ:
        return f"parameters differ: {'; '.join(differ)}"
    if before.statistic != current.statistic:
        return f"statistic differs: {before.statistic!r} -> {current.statistic!r}"
    return ""


def _value(value: Any) -> str:
    return "(absent)" if value is None else json.dumps(value, separators=(", ", ": "))


def compare_with_baseline(current: ClaimEvidence, baseline: EvidenceFile | Iterable[ClaimEvidence]) -> Comparison:
    """:func:`compare` with the baseline's record of ``current``'s test (no-baseline when it has none)."""
    records = baseline.by_test() if isinstance(baseline, EvidenceFile) else {c.test: c for c in baseline}
    return compare(current, records.get(current.test))


def comparison_message(record: ClaimEvidence, where: str | Path = "the baseline") -> str:
    """What ``record.comparison`` found, for a person: written from its fields ("" without a comparison)."""
    c = record.comparison
    if c is None:
        return ""
    claim = f"{record.claim_id} ({record.test})"
    if c.status == "no-baseline":
        return f"No baseline for claim {claim}: {where} has no record of {record.test}."
    if c.status == "not-comparable":
        return (f"Not comparable with {where}: {claim}: {c.reason}; the baseline's number belongs to its own "
                f"settings and is not compared with this run's.")
    now = f"{record.interval} ({record.verdict or 'no verdict'})"
    numbers = (f"{record.statistic}: baseline {c.baseline_interval} ({c.baseline_verdict or 'no verdict'}), now "
               f"{now}; change {c.change:+.4g} ({c.direction}), tolerance "
               f"{'none' if c.tolerance is None else f'{c.tolerance:.4g}'}, drift = {c.drift}")
    if c.status == "regressed":
        return (f"Regression against {where}: {claim}: {c.reason}. {numbers}. If the change is expected (a new "
                f"model revision or library), review the report and rewrite the baseline with --update-baseline.")
    title = "Improvement" if c.status == "improved" else "Unchanged"
    return f"{title} against {where}: {claim}: {c.reason}. {numbers}."
