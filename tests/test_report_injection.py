"""Nothing a user names can inject markup into the claim report, or break its figures.

A model folder (or ``--model`` value, or any test id) may hold ``<img src=x onerror=...>`` or matplotlib's
mathtext ``$...$``. The report must show it as text: pytest-html inserts its results-table cells as HTML
from JavaScript, so the test id is escaped there (``fixtures.claims_html.escape_results_row``) and the
model's part of a test id is reduced to a safe charset (``fixtures.plugin._model_id``); figures draw every
text as written (``circuit.report.plain_text``). The browser test opens a report made from hostile names in
headless Chromium and checks that no script ran. Needs Debian's ``chromium``; skipped when it is absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from fixtures.claims_html import escape_results_row
from fixtures.plugin import _model_id
from fixtures.test_models import TEST_MODELS, build_test_model

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-extensions", "--proxy-server=127.0.0.1:9", "--virtual-time-budget=5000")
SCRIPT = "<img src=x onerror=document.body.dataset.pwned=1>"
"""Marks the page's body when it runs (a folder name: no slash)."""
HOSTILE = "m$\\undefinedcmd$x" + SCRIPT
SPEC = """
[model]
match = ["hostile"]
[statistics]
level = 0.95
n_resamples = 200
[prompts]
min_size = 6
max_size = 6
min_digits = 2
max_digits = 2
corruptions = ["same_length"]
[claims.attribution-completeness]
atol = 1e-4
tolerance = 1e-4
"""
HOSTILE_IDS = f"""
import pytest

@pytest.mark.parametrize("x", [1], ids=[{SCRIPT!r}])
def test_hostile_id(x):
    assert x == 1
"""


def test_a_test_id_in_the_results_table_is_escaped():
    report = SimpleNamespace(nodeid=f"t.py::test[{SCRIPT}]", when="call")
    cells = ['<td class="col-result">Passed</td>', f'<td class="col-testId">{report.nodeid}</td>']
    escape_results_row(report, cells)
    assert cells[1] == '<td class="col-testId">t.py::test[&lt;img src=x onerror=document.body.dataset.pwned=1&gt;]</td>'
    assert cells[0] == '<td class="col-result">Passed</td>'


def test_the_model_part_of_a_test_id_is_a_safe_charset(tmp_path):
    folder = tmp_path / HOSTILE
    folder.mkdir()
    assert _model_id(str(folder)) == "m__undefinedcmd_x_img_src_x_onerror_document.body.dataset.pwned_1_"
    assert _model_id(HOSTILE) == "m__undefinedcmd_x_img_src_x_onerror_document.body.dataset.pwned_1_"
    assert _model_id("Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert _model_id("test-qwen2-2l") == "test-qwen2-2l"


def test_a_mathtext_model_name_in_a_figure_is_drawn_as_text():
    import torch

    from circuit.report import figure_html, heatmap

    figure = heatmap(torch.randn(2, 2), title=f"claim · {HOSTILE}", xlabel=HOSTILE, ylabel="layer")
    assert "data:image/png;base64," in figure_html(figure)


def test_a_hostile_name_in_the_forest_plot_is_text():
    from circuit.report import forest_html

    row = {"claim": SCRIPT, "sentence": HOSTILE, "title": SCRIPT, "estimate": 0.5, "low": 0.1, "high": 0.9,
           "kind": ">=", "threshold": 0.2, "rule": SCRIPT, "verdict": SCRIPT, "marker": None}
    html = forest_html([row])
    assert SCRIPT not in html and "&lt;img src=x onerror=document.body.dataset.pwned=1&gt;" in html


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("hostile")
    folder = build_test_model(TEST_MODELS["test-qwen2-2l"], tmp / HOSTILE)
    (tmp / "spec.toml").write_text(SPEC)
    (tmp / "test_hostile_ids.py").write_text(HOSTILE_IDS)
    reports = tmp / "reports"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp / "bt"),
               "--claims-reports", str(reports), "--claims-spec", str(tmp / "spec.toml"), "--model", str(folder),
               str(ROOT / "claims" / "test_attribution_completeness.py"), str(tmp / "test_hostile_ids.py")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    path = reports / "claims-partial.html"
    assert path.exists(), f"no report written by {command}:\n{result.stdout[-3000:]}{result.stderr[-2000:]}"
    return path


def test_a_report_of_hostile_names_has_its_figures_and_no_raw_markup(hostile_report):
    html = hostile_report.read_text()
    assert SCRIPT not in html, "the hostile name is in the file unescaped"
    assert "&lt;img src=x onerror=document.body.dataset.pwned=1&gt;" in html, "the model's name is not shown"
    assert "aria-label='Forest plot of every claim test'" in html and "data:image/png;base64," in html
    assert "figure" in html and " failed: " not in html, "a figure failed to draw"


def test_no_script_runs_when_the_report_of_hostile_names_is_opened_in_chromium(hostile_report, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed: `apt-get install -y chromium` (Debian; .ci/run installs it)")
    dom = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          f"{hostile_report.as_uri()}?collapsed="],
                         capture_output=True, text=True, timeout=120).stdout
    assert "Claims at a glance" in dom and "test_hostile_id" in dom, "the report did not render"
    assert "data-pwned" not in dom, "a script in a model's name or a test id ran in the report"
    assert "onerror=document.body.dataset.pwned=1&gt;" in dom, "the hostile name is not shown as text"
