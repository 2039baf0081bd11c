"""The HTML claim report renders offline in a browser, with its figures visible.

Runs two claims on the small test model (in a separate pytest process, as a user would), then opens
the report in headless Chromium with the network off: every embedded figure must decode to a non-blank
image, the claims x models table must be there, and nothing may be fetched from the web. Needs Debian's
``chromium`` (installed by ``.ci/run``); skipped with the reason when it is absent.
"""

from __future__ import annotations

import base64
import html as html_lib
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from fixtures.claims_session import declared_claim_tests

N_CLAIM_TESTS = len(declared_claim_tests())
"""Claim tests in claims/ (a partial run reports "N of these")."""

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-extensions", "--proxy-server=127.0.0.1:9", "--virtual-time-budget=10000")

SPEC = """
[model]
match = ["test-qwen2-2l"]
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
[claims.named-heads]
top_k = 4
tolerance = 2
heads = [{ head = "L1H0", sign = "any", by = ["z_patching", "attribution"] }]
"""
"""named-heads states no sign (its sign test skips: the claim is partly tested); top-head-attention is not
stated (both its tests skip)."""


def images(html: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(data))).convert("L")
            for data in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def blank(image: Image.Image) -> bool:
    low, high = image.getextrema()
    return high - low < 50 or min(image.size) < 50


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    (tmp / "spec.toml").write_text(SPEC)
    reports = tmp / "reports"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp / "bt"),
               "--claims-reports", str(reports), "--claims-spec", str(tmp / "spec.toml"), "--model",
               "test-qwen2-2l", str(ROOT / "claims" / "test_attribution_completeness.py"),
               str(ROOT / "claims" / "test_named_heads.py"), str(ROOT / "claims" / "test_top_head_attention.py")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    path = reports / "claims-partial.html"  # two claim files of the suite: a partial run
    assert not (reports / "claims.html").exists()
    assert path.exists(), f"no report written by {' '.join(command)}:\n{result.stdout[-3000:]}{result.stderr[-2000:]}"
    return path


def test_the_report_is_written_by_default_and_self_contained(report):
    html = report.read_text()
    resources = re.findall(r'(?:src|srcset|data)\s*=\s*["\'](https?:[^"\']*)', html)
    resources += re.findall(r'<link[^>]+href\s*=\s*["\'](https?:[^"\']*)', html)
    resources += re.findall(r'(?:url\(|@import\s+)["\']?(https?:[^"\')]*)', html)
    assert resources == [], f"the report fetches {resources}"
    assert not re.search(r'<link[^>]+rel="stylesheet"[^>]+href="(?!data:)', html), "CSS is not inlined"
    assert f"partial run: 6 of {N_CLAIM_TESTS} claim tests" in html and "<title id=\"head-title\">Claims report</title>" in html


def test_the_summary_comes_first_with_the_forest_plot_a_table_per_claim_and_skipped_tests_folded(report):
    html = report.read_text()  # the per-test rows are a JSON blob in an attribute: compare escaped text
    summary = html.index("Claims at a glance")
    forest = html.index("aria-label='Forest plot of every claim test'")
    assert summary < forest < html.index("data-jsonblob"), "the forest plot is not before the per-test rows"
    assert html.count("<tr class='forest-row ") == 3, "not one forest row per judged claim test"
    tables = re.findall(r"<section class='claim-summary'><h3><code>([^<]*)</code> — ([^<]*<b>[^<]*</b>)", html)
    assert [claim for claim, _ in tables] == ["attribution-completeness", "named-heads", "top-head-attention"]
    verdicts = dict(tables)
    assert re.search(r"<b>(partly tested: 2 of 3 tests passed, 1 skipped|failed \(\d of 2 tests\), 1 skipped)</b>",
                     verdicts["named-heads"]), verdicts["named-heads"]
    assert verdicts["top-head-attention"].endswith("<b>skipped</b>")
    assert html.count("<tr><td><code>test_") == 3  # one row per judged test: 1 + 2
    folded = re.findall(r"<details class='claim-skipped'><summary>skipped: (\w+) on test-qwen2-2l — ([^<]*)</summary>",
                        html)
    assert sorted(test for test, _ in folded) == ["test_early_top_heads_attend_uniformly",
                                                  "test_late_top_heads_attend_to_bos",
                                                  "test_named_heads_have_their_stated_sign"]
    assert all("not stated in spec" in why or "states no head's sign" in why
               for why in (html_lib.unescape(w) for _, w in folded)), folded


def test_every_prompt_set_tried_is_listed_with_the_one_the_figures_show(report):
    from hypothesis import settings

    from fixtures.plugin import register_hypothesis_profiles

    register_hypothesis_profiles()
    examples = settings.get_profile("ci").max_examples
    rows = html_lib.unescape(report.read_text())
    tried = [int(n) for n in re.findall(r"Prompt sets hypothesis tried: (\d+)", rows)]
    assert len(tried) == 3 and all(1 <= n <= examples for n in tried), tried
    held = re.findall(r"<td>(\d+) / (\d+)</td>", report.read_text())
    assert sorted(int(n) for _, n in held) == sorted(tried)
    assert rows.count(" (shown)</td>") == 3 and "<th>corrupted prompt</th>" in rows and "<b>incorrect</b>" in rows
    assert rows.count("If the claim holds") >= 3, "figures without a caption saying what to look for"


def test_the_environment_names_model_spec_versions_machine_and_run_time_and_no_progress_bar(report):
    html = report.read_text()
    environment = dict(re.findall(r"<tr><th>([^<]+)</th><td>([^<]*)</td></tr>",
                                  html[html.index("Environment of this run"):]))
    for key in ("model test-qwen2-2l", "hypothesis profile", "hypothesis", "torch", "transformers", "transformer-lens", "machine",
                "run time"):
        assert environment.get(key), f"the environment has no {key!r}: {sorted(environment)}"
    assert "spec.toml (sha256 " in environment["model test-qwen2-2l"]
    assert "dtype float32; device cpu" in environment["model test-qwen2-2l"]
    assert environment["hypothesis profile"].startswith("ci, max_examples 3, seed 0")
    text = html_lib.unescape(html)
    assert "Loading weights" not in text and not re.search(r"\d+it/s\]|\d+%\|", text), "a progress bar"


def test_the_report_renders_in_chromium_with_visible_figures(report, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed: `apt-get install -y chromium` (Debian; .ci/run installs it)")
    url = f"{report.as_uri()}?collapsed="  # expand every row, so figures are laid out
    common = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert "Claims at a glance" in dom, "the summary is missing"
    assert "attribution-completeness" in dom and "named-heads" in dom
    rendered = images(dom)
    assert len(rendered) >= 2, f"only {len(rendered)} figures in the rendered page"
    assert not [i for i, image in enumerate(rendered) if blank(image)], "a figure is blank"
    layout = _layout(report, tmp_path, common)
    assert layout["forest"]["top"] + 50 < 900, f"the forest plot is not in the first screen: {layout}"
    assert layout["forest"]["height"] > 50, layout
    assert layout["overflow"] == [], f"text overflows its box: {layout['overflow']}"
    screenshot = tmp_path / "page.png"
    subprocess.run([*common, "--window-size=1280,2400", f"--screenshot={screenshot}", url],
                   capture_output=True, timeout=120)
    assert screenshot.exists(), "chromium wrote no screenshot"
    assert not blank(Image.open(screenshot).convert("L")), "the rendered page is blank"


LAYOUT_PROBE = """<script>
window.addEventListener('load', () => setTimeout(() => {
  const box = document.querySelector('.claims-forest').getBoundingClientRect();
  const cells = document.querySelectorAll('.claims-report td, .claims-report th, .claims-report summary, '
                                          + '.claim-evidence td, .claim-evidence th, figcaption');
  const overflow = [...cells].filter(e => e.scrollWidth > e.clientWidth + 1 || box.right > innerWidth + 1)
                             .map(e => e.textContent.slice(0, 80));
  document.body.setAttribute('data-layout', JSON.stringify(
    {forest: {top: box.top, height: box.height}, overflow}));
}, 500));
</script>"""


def _layout(report: Path, tmp_path: Path, common: list[str]) -> dict:
    """Where the report lays things out in a 1280 x 900 window (a probe script writes it into the DOM)."""
    import json

    probed = tmp_path / "probed.html"
    probed.write_text(report.read_text().replace("</body>", LAYOUT_PROBE + "</body>"))
    dom = subprocess.run([*common, "--window-size=1280,900", "--dump-dom", f"{probed.as_uri()}?collapsed="],
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'data-layout="([^"]*)"', dom)
    assert found, "the layout probe did not run"
    return json.loads(html_lib.unescape(found[1]))
