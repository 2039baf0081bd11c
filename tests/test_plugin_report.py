"""The claim report's glue (fixtures/claims_html.py): verdicts per claim and model, the summary's notes."""

from __future__ import annotations

from pathlib import Path

from circuit.evidence import ClaimEvidence, record_to_dict
from fixtures.claims_html import evidence_html, summary_html, verdict
from fixtures.claims_session import ClaimsSession


def test_a_claim_fails_if_any_of_its_tests_fails_and_errors_are_not_verdicts():
    assert verdict(["passed", "passed"]) == "passed (2 tests)"
    assert verdict(["passed", "failed", "skipped"]) == "failed (1 of 2 tests)"
    assert verdict(["passed", "error"]) == "passed (1 test), 1 errored"
    assert verdict(["error", "error"]) == "error (2)"
    assert verdict(["skipped"]) == "skipped"


def test_the_summary_states_the_partial_run_and_escapes_what_it_shows(tmp_path: Path):
    state = ClaimsSession(models=["m"], device=None, dtype="float32", revision=None, trust_remote_code=False,
                          spec_path=None, baseline=None, update_baseline=False, baseline_missing="fail",
                          reports=tmp_path, runs_claims=True, collect_only=False, worker=False)
    record = ClaimEvidence(claim_id="c<1>", test="test_a", statistic="s", estimate=0.5, outcome="failed",
                           statement="A & B", dtype="float32", device="cpu")
    state.records["n"] = {"model": "m", "evidence": record_to_dict(record)}
    html = summary_html(state, ["partial run: 1 of 15 claim tests"])
    assert "<p class='claims-note'>partial run: 1 of 15 claim tests</p>" in html
    assert "c&lt;1&gt;" in html and "failed (1 of 1 test)" in html
    table = evidence_html("m", record, {"figure": "<img>"})
    assert "A &amp; B" in table and "float32 / cpu" in table and table.endswith("<img></div>")
