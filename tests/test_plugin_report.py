"""The claim report's glue (fixtures/claims_html.py): verdicts per claim and model, the summary's notes."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from circuit.evidence import ClaimEvidence, compare, record_to_dict
from fixtures.claims_html import evidence_html, summary_html, threshold_value, verdict
from fixtures.claims_session import ClaimsSession


def test_a_claim_fails_if_any_of_its_tests_fails_and_errors_are_not_verdicts():
    assert verdict(["passed", "passed"]) == "passed (2 tests)"
    assert verdict(["passed", "failed", "skipped"]) == "failed (1 of 2 tests), 1 skipped"
    assert verdict(["passed", "error"]) == "passed (1 test), 1 errored"
    assert verdict(["error", "error"]) == "error (2)"
    assert verdict(["skipped"]) == "skipped"


def test_a_claim_whose_tests_were_partly_skipped_does_not_read_as_passed():
    assert verdict(["passed", "skipped", "skipped"]) == "partly tested: 1 of 3 tests passed, 2 skipped"


def test_the_threshold_mark_is_the_number_the_rule_compares_with():
    assert threshold_value("CI low >= 0.8") == 0.8
    assert threshold_value("CI high <= top_k = 4") == 4.0
    assert threshold_value("CI high <= atol[float32] = 1e-05") == 1e-05
    assert threshold_value("95% CI excludes 0") == 0.0
    assert threshold_value("CI low >= 0.8 (0.9667 interval per set (one-sided 0.0167; family-wise 0.05))") == 0.8
    assert threshold_value("rule") is None


def test_the_summary_states_the_partial_run_and_escapes_what_it_shows(tmp_path: Path):
    state = ClaimsSession(models=["m"], device=None, dtype="float32", revision=None, trust_remote_code=False,
                          spec_path=None, baseline=None, update_baseline=False, baseline_missing="fail",
                          reports=tmp_path, runs_claims=True, collect_only=False, worker=False)
    record = ClaimEvidence(claim_id="c<1>", test="test_a", statistic="s", estimate=0.5, outcome="failed",
                           statement="A & B", dtype="float32", device="cpu")
    state.records["n"] = {"nodeid": "n", "model": "m", "test": "test_a", "evidence": record_to_dict(record)}
    html = summary_html(state, ["partial run: 1 of 15 claim tests"])
    assert "<p class='claims-note'>partial run: 1 of 15 claim tests</p>" in html
    assert "c&lt;1&gt;" in html and "failed (1 of 1 test)" in html
    table = evidence_html(state.records["n"], record, {"figure": "<img>"})
    assert "A &amp; B" in table and "float32 / cpu" in table and table.endswith("<img></div>")


def compared(estimate: float, baseline: float, **kw) -> ClaimEvidence:
    """A supported record (rule ``>= 0.1``) compared with a baseline record of ``baseline``."""
    record = ClaimEvidence(claim_id="c", test=kw.pop("test", "test_a"), statistic="s", estimate=estimate, low=0.4,
                           high=1.0, threshold="CI low >= 0.1", holds=True, tolerance=0.1, verdict="supported",
                           rule_kind=">=", rule_threshold=0.1, parameters={}, **kw)
    return replace(record, comparison=compare(record, replace(record, estimate=baseline)))


def test_a_baseline_regression_explains_why_a_rule_that_holds_failed(tmp_path: Path):
    record = replace(compared(0.5, 0.8), outcome="failed")
    html = evidence_html({"model": "m"}, record, {})
    assert "holds on this run, but it regressed against the baseline: ▼ regressed: -0.3 (worse) from baseline 0.8" in html
    assert "tolerance 0.1 — moved beyond tolerance toward failing" in html


def test_the_summary_marks_regressions_and_improvements_and_colours_by_the_claims_own_verdict(tmp_path: Path):
    state = ClaimsSession(models=["m"], device=None, dtype="float32", revision=None, trust_remote_code=False,
                          spec_path=None, baseline=tmp_path / "b.json", update_baseline=False,
                          baseline_missing="fail", reports=tmp_path, runs_claims=True, collect_only=False,
                          worker=False)
    for test, record in (("test_a", replace(compared(0.5, 0.8, test="test_a"), outcome="failed")),
                         ("test_b", replace(compared(0.9, 0.5, test="test_b"), outcome="passed"))):
        state.records[test] = {"nodeid": test, "model": "m", "test": test, "tries": [{"holds": True}] * 3,
                               "evidence": record_to_dict(record)}
    html = summary_html(state, [])
    assert "<th>baseline</th>" in html
    assert ("<td class='claim-baseline regressed'>▼ regressed: -0.3 (worse) from baseline 0.8 [CI 0.4, 1], "
            "tolerance 0.1 — moved beyond tolerance toward failing</td>") in html
    assert ("<td class='claim-baseline improved'>▲ improved: +0.4 (better) from baseline 0.5 [CI 0.4, 1], "
            "tolerance 0.1 — moved beyond tolerance away from failing</td>") in html
    # both claims hold: both verdicts are drawn green, the regression has its own marker
    assert html.count("<td style='color:#1a7f37;font-weight:bold'>supported") == 2
    assert html.count("<td>3 / 3</td>") == 2 and "<b>failed (1 of 2 tests)</b>" in html
    assert "aria-label='Forest plot of every claim test'" in html
    assert "▼ regressed" in html and "<b>1</b> regressed" in html, "the regression has no marker or count"


def test_the_recorder_keeps_every_prompt_set_tried_and_the_last_ones_rows():
    from types import SimpleNamespace

    from circuit.strategies import PromptSet
    from circuit.task import Problem
    from fixtures.claims_session import ClaimRecorder

    recorder = ClaimRecorder("c", "C holds", "test_c", SimpleNamespace(claims={}))
    recorder.record("s", 2.0, threshold="x >= 1", holds=True, prompt_set="some text")
    prompts = PromptSet(clean=(Problem(12, 34),), incorrect=(409,), corrupted=(Problem(56, 78),),
                        corruption="same_length")
    recorder.record("s", 0.5, threshold="x >= 1", holds=False, prompt_set=prompts)
    assert [(t["estimate"], t["holds"], t["n_prompts"]) for t in recorder.tries] == [(2.0, True, 1), (0.5, False, 1)]
    assert recorder.tries[0]["first_prompt"] == "some text"
    assert recorder.prompts == [[Problem(12, 34).prompt, "408", "409", Problem(56, 78).prompt]]
    assert recorder.last.estimate == 0.5


def test_hypothesis_example_goes_to_the_report_escaped():
    record = ClaimEvidence(claim_id="c", test="test_a", statistic="s", estimate=0.5, low=0.4, high=0.6,
                           threshold="CI low >= 0.8", outcome="failed", verdict="refuted")
    notes = "Failing test case: test_a(claim=<x>)\nYou can reproduce this test case by @reproduce_failure('6', b'AX')"
    html = evidence_html({"model": "m", "hypothesis": notes}, record, {})
    assert "<summary>hypothesis' failing example and how to reproduce it</summary>" in html
    assert "test_a(claim=&lt;x&gt;)" in html and "@reproduce_failure(&#x27;6&#x27;, b&#x27;AX&#x27;)" in html
    assert "failed (refuted)" in html and "style='color:#cf222e'>refuted</b>" in html


def test_the_summary_reads_a_structured_comparison_when_records_carry_one(tmp_path: Path):
    """Records with ``evidence.comparison`` (the structured baseline comparison): its status gives the marker
    and the count; colour stays the verdict's."""
    state = ClaimsSession(models=["m"], device=None, dtype="float32", revision=None, trust_remote_code=False,
                          spec_path=None, baseline=None, update_baseline=False, baseline_missing="fail",
                          reports=tmp_path, runs_claims=True, collect_only=False, worker=False)
    for test, status in (("test_a", "regressed"), ("test_b", "improved"), ("test_c", "unchanged")):
        record = record_to_dict(ClaimEvidence(claim_id="c", test=test, statistic="s", estimate=0.9, low=0.85,
                                              high=0.95, threshold="CI low >= 0.8", holds=True, outcome="passed",
                                              verdict="supported"))
        record["comparison"] = {"status": status}
        state.records[test] = {"nodeid": test, "model": "m", "test": test, "evidence": record, "tries": []}
    html = summary_html(state, [])
    assert "<b>3</b> supported" in html and "<b>1</b> regressed" in html and "<b>1</b> improved" in html
    assert html.count("▼ regressed</span>") == 2 and html.count("▲ improved</span>") == 2  # forest and table
    rows = re.findall(r"<tr class='forest-row (\w+)'.*?class='forest-verdict' style='color:(#\w+)'", html)
    assert rows == [("supported", "#1a7f37")] * 3 and "fill='#cf222e'" not in html, "a supported claim drawn in red"
