"""Running the claims on mutants: one pytest subprocess per spec, many models per run.

``python -m pytest <claim files> --model A --model B ... --claims-spec S --claims-reports DIR`` judges every
model under one spec, each model loaded once; the outcome of each claim test is then read from
``DIR/evidence/<label>.json`` (``circuit.evidence``), where the label is the model folder's name. The HTML
report is left out (``-p no:html``): its figures cost time and nobody reads a mutant's report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["ClaimsRunError", "read_outcomes", "run_claims"]

PYTEST_OK = (0, 1)
"""pytest exit codes of a run that judged its tests (1: some failed, as claims on mutants should)."""


class ClaimsRunError(RuntimeError):
    """The claims did not run (a usage error, no tests collected); the message holds pytest's last lines."""


def read_outcomes(reports: str | Path, label: str) -> dict[str, tuple[str, str | None]]:
    """``{test: (outcome, verdict or None)}`` of model ``label`` in a run's reports folder."""
    from circuit.evidence import evidence_filename, load_evidence

    evidence = load_evidence(Path(reports) / "evidence" / evidence_filename(label))
    return {r.test: (r.outcome, getattr(r, "verdict", None) or None) for r in evidence.claims}


def run_claims(models: Sequence[str | Path], spec: str | Path, reports: str | Path, *, files: Sequence[str | Path],
               root: str | Path, timeout: float | None = None) -> dict[str, dict[str, tuple[str, str | None]]]:
    """Run the claim ``files`` on ``models`` under ``spec`` from the repository ``root``; outcomes per model
    label (the folder's name)."""
    command = [sys.executable, "-m", "pytest", *map(str, files), "-p", "no:cacheprovider", "-q", "--no-header",
               "-p", "no:html", "--claims-spec", str(spec), "--claims-reports", str(reports)]
    for model in models:
        command += ["--model", str(model)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode not in PYTEST_OK:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise ClaimsRunError(f"pytest exited with {done.returncode} on {[Path(m).name for m in models]} under spec "
                             f"{spec}; fix the run below and retry:\n{tail}")
    return {Path(m).name: read_outcomes(reports, Path(m).name) for m in models}
