"""Evidence files and baseline comparison."""

import json
import math
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from circuit.evidence import (
    ClaimEvidence,
    Comparison,
    EvidenceError,
    EvidenceFile,
    atomic_write_text,
    compare,
    compare_with_baseline,
    comparison_message,
    library_versions,
    load_evidence,
    locked,
    merge_evidence,
    update_baseline,
    write_evidence,
)


def evidence(test="test_a", estimate=0.9, tolerance=0.1, **kw):
    kw = {"rule_kind": ">=", "rule_threshold": 0.8, "verdict": "supported", "statistic": "recovery",
          "parameters": {"late_from_layer": 1, "prompts.metric": "seed"}, **kw}
    return ClaimEvidence(claim_id="final-token-localization", test=test, estimate=estimate,
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


def test_a_move_toward_failing_beyond_tolerance_is_a_regression_even_when_passing():
    baseline = EvidenceFile(model="m", revision=None, claims=(evidence(estimate=0.95),))
    assert compare_with_baseline(evidence(estimate=0.9), baseline).status == "unchanged"
    current = evidence(estimate=0.8)
    c = compare_with_baseline(current, baseline)
    assert (c.status, c.direction, c.baseline_estimate, c.baseline_verdict) == ("regressed", "worse", 0.95, "supported")
    assert c.change == pytest.approx(-0.15) and (c.baseline_low, c.baseline_high) == pytest.approx((0.9, 1.0))
    text = comparison_message(replace(current, comparison=c), "b.json")
    assert text.startswith("Regression against b.json: final-token-localization (test_a): moved beyond tolerance "
                           "toward failing. recovery: baseline 0.95 [CI 0.9, 1] (supported), now 0.8 [95% CI 0.75, "
                           "0.85] (supported); change -0.15 (worse), tolerance 0.1, drift = worse.")
    assert "--update-baseline" in text


@pytest.mark.parametrize("kind, threshold, before, after", [
    (">=", 0.45, 3.639, 55.79),    # the MLP-over-attention ratio of issue 23: stronger, not worse
    ("excludes", 0.0, 0.029, 0.64),  # "operands matter at all": further from 0
    ("excludes", 0.0, -0.029, -0.64),
    ("<=", 1.55, 0.64, 0.029),     # a fraction that must stay small got smaller
])
def test_a_move_away_from_failing_is_an_improvement_that_fails_nothing(kind, threshold, before, after):
    kw = {"rule_kind": kind, "rule_threshold": threshold}
    c = compare(evidence(estimate=after, tolerance=0.2, **kw), evidence(estimate=before, **kw))
    assert (c.status, c.direction, c.reason) == ("improved", "better", "moved beyond tolerance away from failing")
    assert c.change == pytest.approx(after - before)
    both = compare(evidence(estimate=after, tolerance=0.2, drift="both", **kw), evidence(estimate=before, **kw))
    assert (both.status, both.direction, both.drift) == ("regressed", "better", "both")  # the spec pins the number
    back = compare(evidence(estimate=before, tolerance=0.2, **kw), evidence(estimate=after, **kw))
    assert (back.status, back.direction) == ("regressed", "worse")  # the same move the other way


def test_a_verdict_that_leaves_supported_regresses_within_tolerance_and_one_that_reaches_it_improves():
    worse = compare(evidence(estimate=0.84, verdict="inconclusive"), evidence(estimate=0.86))
    assert (worse.status, worse.reason) == ("regressed", "verdict supported -> inconclusive")
    better = compare(evidence(estimate=0.86), evidence(estimate=0.84, verdict="refuted"))
    assert (better.status, better.reason) == ("improved", "verdict refuted -> supported")


def test_records_measured_with_other_parameters_are_not_comparable_and_carry_no_baseline_number():
    before = evidence(estimate=0.9664)
    current = evidence(estimate=0.7465, parameters={"late_from_layer": 2, "prompts.metric": "seed"})
    c = compare(current, before)
    assert (c.status, c.reason) == ("not-comparable", "parameters differ: late_from_layer 1 -> 2")
    assert (c.baseline_estimate, c.change, c.direction) == (None, None, "none")
    text = comparison_message(replace(current, comparison=c), "b.json")
    assert "0.9664" not in text and "parameters differ: late_from_layer 1 -> 2" in text
    added = compare(evidence(parameters={"late_from_layer": 1, "prompts.metric": "seed", "top_k": 3}), before)
    assert added.reason == "parameters differ: top_k (absent) -> 3"
    old = compare(evidence(), evidence(parameters=None))
    assert old.status == "not-comparable" and "rewrite it with --update-baseline" in old.reason
    assert compare(evidence(), evidence(statistic="other")).reason == "statistic differs: 'other' -> 'recovery'"


def test_unknown_tests_missing_tolerances_and_non_finite_statistics():
    baseline = EvidenceFile(model="m", revision=None, claims=(evidence(estimate=0.0),))
    assert compare_with_baseline(evidence(test="test_new", estimate=5.0), baseline).status == "no-baseline"
    assert compare_with_baseline(evidence(estimate=5.0, tolerance=None), baseline).status == "unchanged"
    assert compare_with_baseline(evidence(estimate=math.nan), baseline).status == "regressed"
    unknown = compare_with_baseline(evidence(estimate=5.0, rule_kind=""), baseline)
    assert (unknown.status, unknown.direction) == ("regressed", "none")  # no rule: either way regresses
    assert compare_with_baseline(evidence(estimate=0.05, rule_kind=""), baseline).status == "unchanged"


def test_a_comparison_round_trips_through_the_evidence_file(tmp_path):
    current = evidence(estimate=0.8)
    record = replace(current, comparison=compare(current, evidence(estimate=0.95)))
    path = write_evidence(tmp_path / "m.json", EvidenceFile(model="m", revision=None, claims=(record,)))
    saved = json.loads(path.read_text())["claims"][0]
    assert saved["comparison"]["status"] == "regressed" and saved["comparison"]["baseline_estimate"] == 0.95
    assert saved["parameters"] == {"late_from_layer": 1, "prompts.metric": "seed"}
    back = load_evidence(path).claims[0]
    assert back == record and isinstance(back.comparison, Comparison)
    saved["comparison"]["status"] = "worse"
    path.write_text(json.dumps({"format": 2, "claims": [saved]}))
    with pytest.raises(EvidenceError, match=r"claims\[0\]: comparison: status = 'worse' is not one of"):
        load_evidence(path)


def test_bad_baselines_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match=r"does not exist\. Write one with --update-baseline"):
        load_evidence(tmp_path / "absent.json")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(EvidenceError, match=r"x\.json is not an evidence file of format 2 .* Regenerate it"):
        load_evidence(tmp_path / "x.json")
    (tmp_path / "y.json").write_text("{")
    with pytest.raises(EvidenceError, match=r"y\.json is not JSON .*damaged\. Restore it .* --update-baseline"):
        load_evidence(tmp_path / "y.json")
    (tmp_path / "z.json").write_text(json.dumps({"format": 2, "claims": [{"claim_id": "c", "test": "t",
                                                                          "statistic": "s", "estimate": "x"}]}))
    with pytest.raises(EvidenceError, match=r"z\.json: claims\[0\]: estimate = 'x' is not a number"):
        load_evidence(tmp_path / "z.json")


def test_describe_states_statistic_interval_rule_and_prompts():
    text = evidence(prompt_set="PromptSet(...)", verdict="").describe()
    assert text == ("final-token-localization: recovery = 0.9 [95% CI 0.85, 0.95]; rule CI low >= 0.8: holds. "
                    "Prompts: PromptSet(...)")
    judged = evidence(prompt_set="PromptSet(...)", verdict="inconclusive", n_prompts=64).describe()
    assert judged == ("final-token-localization: recovery = 0.9 [95% CI 0.85, 0.95] over 64 prompts; rule CI low >= "
                      "0.8: INCONCLUSIVE. Prompts: PromptSet(...)")


def test_a_format_1_file_is_still_read_and_its_revision_split_off(tmp_path):
    (tmp_path / "old.json").write_text(json.dumps({"format": 1, "model": "Qwen/Qwen2.5-0.5B@abc", "revision": "abc",
                                                   "claims": [record_dict("test_a")]}))
    old = load_evidence(tmp_path / "old.json")
    assert (old.model, old.revision, old.dtype, [c.test for c in old.claims]) == ("Qwen/Qwen2.5-0.5B", "abc", None,
                                                                                   ["test_a"])


def record_dict(test, **kw):
    from circuit.evidence import record_to_dict

    return record_to_dict(evidence(test, **kw))


def run_file(*claims, **kw):
    return EvidenceFile(model="m", revision=None, claims=tuple(claims), dtype="float32", device="cpu", **kw)


def test_a_baseline_is_updated_only_from_verdicts_on_finite_statistics_and_keeps_the_rest():
    old = run_file(*(evidence(t, estimate=0.5) for t in ("test_a", "test_b", "test_c", "test_d", "test_e")))
    run = run_file(
        evidence("test_a", estimate=0.9),                                    # a verdict: replaces
        replace(evidence("test_b", estimate=0.9), outcome="failed"),         # a failed verdict: replaces
        replace(evidence("test_c", estimate=math.nan), outcome="failed"),    # NaN: refused
        replace(evidence("test_d", estimate=0.9), outcome="error", note="ValueError: boom"),  # error: refused
        replace(evidence("test_e", estimate=math.nan), outcome="skipped", note="not stated"),  # skip: refused
        evidence("test_new", estimate=0.7),                                  # new test: added
    )
    update = update_baseline(old, run)
    records = update.baseline.by_test()
    assert update.updated == ("test_a", "test_b", "test_new")
    assert update.kept == ("test_c", "test_d", "test_e")
    assert {t: records[t].estimate for t in records} == {"test_a": 0.9, "test_b": 0.9, "test_c": 0.5, "test_d": 0.5,
                                                        "test_e": 0.5, "test_new": 0.7}
    assert set(update.refused) == {"test_c", "test_d", "test_e"}
    assert "non-finite statistic" in update.refused["test_c"]
    assert update.refused["test_d"] == "error: ValueError: boom"
    assert update.describe("b.json") == ("b.json: 3 updated, 3 kept, 3 not updated (1 skipped; test_c: non-finite "
                                         "statistic (nan [95% CI nan, nan]); test_d: error: ValueError: boom)")
    assert update_baseline(None, run).baseline.by_test().keys() == {"test_a", "test_b", "test_new"}


def test_merging_replaces_the_records_of_the_tests_run_and_keeps_the_others():
    old = run_file(evidence("test_a", estimate=0.1), evidence("test_b", estimate=0.2))
    new = run_file(evidence("test_b", estimate=0.3), evidence("test_c", estimate=0.4))
    merged = merge_evidence(old, new)
    assert [(c.test, c.estimate) for c in merged.claims] == [("test_a", 0.1), ("test_b", 0.3), ("test_c", 0.4)]
    assert merge_evidence(None, new) is new


def test_a_baseline_names_model_revision_spec_dtype_device_and_versions(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text("x = 1\n")
    from circuit.evidence import spec_sha256

    run = run_file(evidence(), spec="spec.toml", spec_sha256=spec_sha256(spec))
    document = json.loads(write_evidence(tmp_path / "b.json", run).read_text())
    assert {k: document[k] for k in ("model", "revision", "spec", "dtype", "device")} == {
        "model": "m", "revision": None, "spec": "spec.toml", "dtype": "float32", "device": "cpu"}
    assert len(document["spec_sha256"]) == 64
    assert {"torch", "transformers", "transformer-lens", "hypothesis"} <= set(document["library_versions"])
    other = replace(load_evidence(tmp_path / "b.json"), dtype="float16", versions={**run.versions, "torch": "0"})
    assert sorted(run.differences(other)) == ["dtype: float32 -> float16", f"version of torch: "
                                              f"{run.versions['torch']} -> 0"]


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = atomic_write_text(tmp_path / "e.json", "old")

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["e.json"]


def _merge_one(path: str, test: str) -> None:
    """In another process: read, merge one record, write, under the lock (slowly, to invite a race)."""
    import time

    with locked(path):
        old = load_evidence(path) if Path(path).exists() else None
        time.sleep(0.05)
        write_evidence(path, merge_evidence(old, run_file(evidence(test))))


def test_concurrent_merges_under_the_lock_lose_no_record(tmp_path):
    import multiprocessing

    path = str(tmp_path / "e.json")
    context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
    processes = [context.Process(target=_merge_one, args=(path, f"test_{i}")) for i in range(4)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(60)
    assert all(p.exitcode == 0 for p in processes)
    assert sorted(load_evidence(path).by_test()) == [f"test_{i}" for i in range(4)]
