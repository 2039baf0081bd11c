"""Under pytest-xdist each worker loads its model once, and the controller's report holds every worker's tests.

Runs two claim files on the small test model with ``-n 2`` (in a separate pytest process, as a user would), with
a plugin that counts ``circuit.models.load_model`` calls per worker process.
"""

from __future__ import annotations

import html as html_lib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.claims_session import declared_claim_tests

ROOT = Path(__file__).resolve().parent.parent
N_CLAIM_TESTS = len(declared_claim_tests())
"""Claim tests in claims/ (a partial run reports "N of these")."""
COUNTER = '''
import os
import circuit.models as models

_load = models.load_model


def load_model(*args, **kwargs):
    with open(os.path.join(os.environ["CLAIMS_LOAD_LOG"], f"{os.getpid()}.log"), "a") as log:
        log.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'controller')} {args[0] if args else kwargs}\\n")
    return _load(*args, **kwargs)


models.load_model = load_model
'''


def test_each_worker_loads_its_model_once_and_the_report_holds_every_test(tmp_path):
    pytest.importorskip("xdist")
    (tmp_path / "count_loads.py").write_text(COUNTER)
    logs = tmp_path / "loads"
    logs.mkdir()
    reports = tmp_path / "reports"
    files = [str(ROOT / "claims" / f"test_{name}.py") for name in ("attribution_completeness", "equivalence")]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "-p", "count_loads",
               "--basetemp", str(tmp_path / "bt"), "--claims-reports", str(reports), "--model", "test-qwen2-2l",
               *files]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CLAIMS_LOAD_LOG": str(logs),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    loads = [line.split()[0] for log in logs.glob("*.log") for line in log.read_text().splitlines()]
    assert loads and set(loads) <= {"gw0", "gw1"} and len(loads) == len(set(loads)), f"loads per worker: {loads}"
    html = (reports / "claims-partial.html").read_text()
    assert html.count("<tr><td><code>test_") == 3, "the summary lacks a worker's tests"
    assert f"partial run: 3 of {N_CLAIM_TESTS} claim tests" in html and "aria-label='Forest plot of every claim test'" in html
    # the workers' evidence (rendered there, carried in the report's rows): one block per judged test
    assert len(re.findall(r"Prompt sets hypothesis tried: \d+", html_lib.unescape(html))) == 3
