"""The HTML claim report renders offline in a browser, with its figures visible.

Runs two claims on the small test model (in a separate pytest process, as a user would), then opens
the report in headless Chromium with the network off: every embedded figure must decode to a non-blank
image, the claims x models table must be there, and nothing may be fetched from the web. Needs Debian's
``chromium`` (installed by ``.ci/run``); skipped with the reason when it is absent.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

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
heads = [{ head = "L1H0", sign = "positive", by = ["z_patching", "attribution"] }]
"""


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
               str(ROOT / "claims" / "test_named_heads.py")]
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
    assert "partial run: 4 of 15 claim tests" in html and "<title id=\"head-title\">Claims report</title>" in html


def test_the_report_renders_in_chromium_with_visible_figures(report, tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed: `apt-get install -y chromium` (Debian; .ci/run installs it)")
    url = f"{report.as_uri()}?collapsed="  # expand every row, so figures are laid out
    common = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert "Claims &times; models" in dom or "Claims × models" in dom, "the summary table is missing"
    assert "attribution-completeness" in dom and "named-heads" in dom
    rendered = images(dom)
    assert len(rendered) >= 3, f"only {len(rendered)} figures in the rendered page"
    assert not [i for i, image in enumerate(rendered) if blank(image)], "a figure is blank"
    screenshot = tmp_path / "page.png"
    subprocess.run([*common, "--window-size=1280,2400", f"--screenshot={screenshot}", url],
                   capture_output=True, timeout=120)
    assert screenshot.exists(), "chromium wrote no screenshot"
    assert not blank(Image.open(screenshot).convert("L")), "the rendered page is blank"
