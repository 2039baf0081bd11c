"""Evidence files and baseline comparison."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from circuit.evidence import (
    ClaimEvidence,
    EvidenceFile,
    compare_with_baseline,
    library_versions,
    load_evidence,
    write_evidence,
)


def evidence(test="test_a", estimate=0.9, tolerance=0.1, **kw):
    return ClaimEvidence(claim_id="final-token-localization", test=test, statistic="recovery", estimate=estimate,
                         low=estimate - 0.05, high=estimate + 0.05, level=0.95, threshold="CI low >= 0.8",
                         holds=True, tolerance=tolerance, outcome="passed", **kw)


def test_round_trip_keeps_every_field(tmp_path):
    run = EvidenceFile(model="m", revision="abc", claims=(evidence(), evidence("test_b", math.nan)))
    path = write_evidence(tmp_path / "evidence" / "m.json", run)
    document = json.loads(path.read_text())
    assert document["model"] == "m" and document["revision"] == "abc"
    assert {"torch", "transformers", "transformer-lens"} <= set(document["library_versions"])
    assert document["claims"][0]["low"] == pytest.approx(0.85)
    back = load_evidence(path)
    assert back.claims[0] == run.claims[0]
    assert math.isnan(back.claims[1].estimate)


def test_library_versions_names_the_libraries():
    versions = library_versions()
    assert versions["torch"] != "not installed"


def test_a_move_beyond_tolerance_is_a_regression_even_when_passing():
    baseline = EvidenceFile(model="m", revision=None, claims=(evidence(estimate=0.95),))
    assert compare_with_baseline(evidence(estimate=0.9), baseline) is None
    regression = compare_with_baseline(evidence(estimate=0.8), baseline)
    assert regression is not None
    assert regression.moved == pytest.approx(-0.15)
    assert "moved from 0.95 to 0.8 (by -0.15), beyond the spec tolerance 0.1" in regression.describe("b.json")
    assert "--update-baseline" in regression.describe()


def test_unknown_tests_and_missing_tolerances_are_not_regressions():
    baseline = EvidenceFile(model="m", revision=None, claims=(evidence(estimate=0.0),))
    assert compare_with_baseline(evidence(test="test_new", estimate=5.0), baseline) is None
    assert compare_with_baseline(evidence(estimate=5.0, tolerance=None), baseline) is None
    assert compare_with_baseline(evidence(estimate=math.nan), baseline) is not None


def test_bad_baselines_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match=r"does not exist\. Write one with --update-baseline"):
        load_evidence(tmp_path / "absent.json")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match=r"x\.json is not an evidence file of format 1"):
        load_evidence(tmp_path / "x.json")
    (tmp_path / "y.json").write_text("{")
    with pytest.raises(ValueError, match=r"y\.json is not JSON"):
        load_evidence(tmp_path / "y.json")


def test_describe_states_statistic_interval_rule_and_prompts():
    text = evidence(prompt_set="PromptSet(...)").describe()
    assert text == ("final-token-localization: recovery = 0.9 [95% CI 0.85, 0.95]; rule CI low >= 0.8 holds. "
                    "Prompts: PromptSet(...)")


# --- the plugin: evidence written by a run, --update-baseline, --baseline ---------------------------------

ROOT = Path(__file__).resolve().parent.parent
CLAIM = str(ROOT / "claims" / "test_attribution_completeness.py")


def run_claims(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:html", "--basetemp",
               str(tmp_path / "bt"), "--claims-reports", str(tmp_path / "reports"), "--model", "test-qwen2-2l",
               CLAIM, *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_a_run_writes_evidence_and_a_baseline_and_fails_when_a_statistic_moves(tmp_path):
    baseline = tmp_path / "baseline.json"
    first = run_claims(tmp_path, "--update-baseline", "--baseline", str(baseline))
    assert first.returncode == 0, first.stdout[-3000:]
    written = load_evidence(tmp_path / "reports" / "evidence" / "test-qwen2-2l.json")
    (claim,) = written.claims
    assert (claim.claim_id, claim.outcome, claim.holds) == ("attribution-completeness", "passed", True)
    assert claim.low is not None and claim.high is not None and claim.tolerance == pytest.approx(1e-4)
    assert written.versions["transformer-lens"] != "not installed"
    assert load_evidence(baseline).claims == written.claims

    document = json.loads(baseline.read_text())
    document["claims"][0]["estimate"] += 1.0  # as if the model had changed since the baseline
    baseline.write_text(json.dumps(document))
    second = run_claims(tmp_path, "--baseline", str(baseline))
    assert second.returncode == 1
    assert "Regression against" in second.stdout and "beyond the spec tolerance 0.0001" in second.stdout
    (moved,) = load_evidence(tmp_path / "reports" / "evidence" / "test-qwen2-2l.json").claims
    assert moved.outcome == "failed" and moved.holds and "Regression against" in moved.note
