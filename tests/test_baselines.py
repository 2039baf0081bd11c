"""Evidence, baselines and the report of real claim runs: written only from evidence that deserves it, never
lost, never replaced by a partial, failed or interrupted run.

One full run of ``claims/`` on the tiny test model (``test-qwen2-2l``: its spec states three claim tests, the
other twelve skip as not stated) writes the evidence, the report and a baseline; every other test copies
those files and runs pytest on them (with ``pytester``, in a subprocess, as a user would), then checks the
message it printed and which files changed. Small plugins written into the pytester folder stand in for what
is hard to provoke on purpose: a model whose load raises, Ctrl-C half-way, a claim that errors.
"""

from __future__ import annotations

import html as html_lib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from circuit.evidence import load_evidence
from fixtures.claims_session import declared_claim_tests

N_CLAIM_TESTS = len(declared_claim_tests())
"""Claim tests in claims/ (a partial run reports "N of these")."""

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
CLAIMS = ROOT / "claims"
ATTRIBUTION = str(CLAIMS / "test_attribution_completeness.py")
EQUIVALENCE = str(CLAIMS / "test_equivalence.py")
STATED = {"test_head_attributions_sum_to_the_logit_difference", "test_bridge_matches_hf_on_multiplication_prompts",
          "test_bridge_matches_hf_on_arbitrary_text"}
"""The claim tests the test models' spec states (the others skip)."""
EVIDENCE = Path("reports/evidence/test-qwen2-2l.json")
BASELINE = Path("baselines/test-qwen2-2l.json")
MATPLOTLIB_CACHE = os.environ.get("MPLCONFIGDIR") or str(Path.home() / ".cache" / "matplotlib")
"""Read before pytester points HOME at its folder (else every run rebuilds matplotlib's font cache)."""


@pytest.fixture(scope="module")
def tiny_model(test_model_folder) -> str:
    """The folder of ``test-qwen2-2l``, built once and loaded once here: the runs below pass the folder (its
    label is still ``test-qwen2-2l``), and the in-process ones find every library a load imports already
    imported (pytester drops modules a run imported, and torch cannot register some of them twice)."""
    from circuit.models import load_model

    folder = test_model_folder("test-qwen2-2l")
    load_model(folder, device="cpu")
    return folder


def pytest_args(folder: Path, *args: str, model: str = "test-qwen2-2l") -> list[str]:
    return ["-p", "no:cacheprovider", "--claims-reports", str(folder / "reports"), "--model", model,
            "--baseline", str(folder / "baselines"), *args]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_model) -> tuple[Path, subprocess.CompletedProcess]:
    """``pytest claims/ --model test-qwen2-2l --update-baseline``: evidence, claims.html and a baseline."""
    folder = tmp_path_factory.mktemp("full")
    (folder / "baselines").mkdir()
    command = [sys.executable, "-m", "pytest", "-q", "--basetemp", str(folder / "bt"),
               *pytest_args(folder, str(CLAIMS), "--update-baseline", model=tiny_model)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    shutil.rmtree(folder / "bt")
    return folder, result


@pytest.fixture
def files(full_run, pytester: pytest.Pytester, monkeypatch, tiny_model) -> Path:
    """A copy of the full run's reports and baselines in the pytester folder."""
    monkeypatch.setenv("MPLCONFIGDIR", MATPLOTLIB_CACHE)
    for name in ("reports", "baselines"):
        shutil.copytree(full_run[0] / name, pytester.path / name)
    return pytester.path


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of the reports and baselines folders (lock files aside), by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for name in ("reports", "baselines")
            for p in sorted((folder / name).rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


@pytest.fixture
def claims_run(pytester: pytest.Pytester, tiny_model: str):
    """``claims_run(*args, plugins=(), model=None)``: pytest in-process on the tiny model (the libraries are
    imported already: a run takes seconds), checking it printed no traceback. The hypothesis profile the
    inner run loads is undone afterwards."""
    from hypothesis import settings

    def run(*args: str, plugins: tuple = (), model: str | None = None) -> pytest.RunResult:
        profile = settings.get_current_profile_name()
        try:
            result = pytester.runpytest_inprocess(*pytest_args(pytester.path, *args, model=model or tiny_model),
                                                  plugins=list(plugins), no_reraise_ctrlc=True)
        finally:
            settings.load_profile(profile)
        text = result.stdout.str() + result.stderr.str()
        assert "Traceback" not in text and "INTERNALERROR" not in text, text
        return result

    return run


def records(path: Path) -> dict[str, dict]:
    return {c["test"]: c for c in json.loads(path.read_text())["claims"]}


def test_a_full_run_writes_evidence_report_and_a_baseline_that_belongs_to_its_model(full_run):
    folder, result = full_run
    evidence = records(folder / EVIDENCE)
    assert len(evidence) == N_CLAIM_TESTS
    assert {t for t, c in evidence.items() if c["outcome"] == "passed"} == STATED
    skipped = [c for c in evidence.values() if c["outcome"] == "skipped"]
    assert len(skipped) == N_CLAIM_TESTS - len(STATED) and all("is not stated in spec" in c["note"] for c in skipped)
    assert {(c["dtype"], c["device"]) for c in evidence.values()} == {("float32", "cpu")}
    baseline = json.loads((folder / BASELINE).read_text())
    assert {c["test"] for c in baseline["claims"]} == STATED  # verdicts only, not the skips
    assert (baseline["model"], baseline["revision"], baseline["spec"]) == ("test-qwen2-2l", None,
                                                                           "claims/specs/test-models.toml")
    assert (baseline["dtype"], baseline["device"], len(baseline["spec_sha256"])) == ("float32", "cpu", 64)
    assert {"torch", "transformers", "transformer-lens", "hypothesis"} <= set(baseline["library_versions"])
    assert (folder / "reports" / "claims.html").exists() and not (folder / "reports" / "claims-partial.html").exists()
    n_skipped = N_CLAIM_TESTS - len(STATED)
    assert "baseline updated: " in result.stdout
    assert f"3 updated, 0 kept, {n_skipped} not updated ({n_skipped} skipped)" in result.stdout
    assert not [p for p in folder.rglob("*.tmp")]


def test_a_k_run_merges_into_evidence_and_baseline_per_test_and_reports_itself_as_partial(files, pytester, claims_run):
    before = snapshot(files)
    result = claims_run(str(CLAIMS), "-k", "attributions", "--update-baseline")
    assert result.ret == 0
    result.stdout.fnmatch_lines([f"*partial run: 1 of {N_CLAIM_TESTS} claim tests*",
                                 "*baseline updated: *test-qwen2-2l.json: 1 updated, 2 kept*"])
    after = snapshot(files)
    assert after["reports/claims.html"] == before["reports/claims.html"]  # the full run's report stays
    assert f"partial run: 1 of {N_CLAIM_TESTS} claim tests" in (files / "reports" / "claims-partial.html").read_text()
    old, new = records(full_run_path(before, EVIDENCE)), records(files / EVIDENCE)
    assert new.keys() == old.keys()  # every record: all kept but 1, which is replaced
    changed = {t for t in new if new[t] != old[t]}
    assert changed == {"test_head_attributions_sum_to_the_logit_difference"}
    old_baseline, new_baseline = records(full_run_path(before, BASELINE)), records(files / BASELINE)
    assert new_baseline.keys() == STATED
    assert {t for t in STATED if new_baseline[t] != old_baseline[t]} == changed


def full_run_path(snapshot_: dict[str, bytes], path: Path) -> Path:
    """Write a snapshot's file to a temporary path (to read it as records)."""
    import tempfile

    handle = Path(tempfile.mkdtemp()) / path.name
    handle.write_bytes(snapshot_[str(path)])
    return handle


def move_baseline(files: Path, by: float, test: str = "test_head_attributions_sum_to_the_logit_difference") -> None:
    """Shift the baseline's estimate of ``test``, as if the model had changed since the baseline."""
    baseline = json.loads((files / BASELINE).read_text())
    for record in baseline["claims"]:
        if record["test"] == test:
            record["estimate"] += by
    (files / BASELINE).write_text(json.dumps(baseline))


def test_a_statistic_that_moved_toward_failing_beyond_its_tolerance_fails_as_a_regression(files, pytester, claims_run):
    move_baseline(files, -1.0)  # the largest error (rule <= atol) was 1 lower: it grew toward failing
    result = claims_run(ATTRIBUTION)
    assert result.ret == 1
    result.stdout.fnmatch_lines([
        "*Regression against *test-qwen2-2l.json: attribution-completeness "
        "(test_head_attributions_sum_to_the_logit_difference): moved beyond tolerance toward failing. *: baseline "
        "-1 (supported), now * (supported); change +1 (worse), tolerance 0.0001, drift = worse. If the change is "
        "expected*rewrite the baseline with --update-baseline.*",
        "*3 baseline records: 1 compared (1 regressed, 0 improved, 0 unchanged), 0 not comparable, 2 dropped "
        "(test_bridge_matches_hf_on_multiplication_prompts: not run; test_bridge_matches_hf_on_arbitrary_text: not "
        "run); 0 claim tests without a baseline record*"])
    moved = records(files / EVIDENCE)["test_head_attributions_sum_to_the_logit_difference"]
    assert moved["outcome"] == "failed" and moved["holds"] and moved["note"] == ""  # the fields say it, not a note
    assert moved["comparison"]["status"] == "regressed" and moved["comparison"]["direction"] == "worse"
    assert moved["comparison"]["baseline_estimate"] < -0.99 and moved["comparison"]["change"] == pytest.approx(1, abs=1e-3)


def test_a_statistic_that_moved_away_from_failing_is_an_improvement_and_passes(files, pytester, claims_run):
    move_baseline(files, +1.0)  # the largest error was 1 higher: it shrank, the claim got stronger
    result = claims_run(ATTRIBUTION)
    assert result.ret == 0
    result.stdout.fnmatch_lines([
        "*claims: test-qwen2-2l: Improvement against *test-qwen2-2l.json: attribution-completeness *: moved beyond "
        "tolerance away from failing.*change -1 (better)*",
        "*1 compared (0 regressed, 1 improved, 0 unchanged)*"])
    improved = records(files / EVIDENCE)["test_head_attributions_sum_to_the_logit_difference"]
    assert (improved["outcome"], improved["comparison"]["status"]) == ("passed", "improved")


def test_a_record_measured_with_other_parameters_is_not_comparable_and_every_record_is_counted(files, pytester,
                                                                                               claims_run):
    baseline = json.loads((files / BASELINE).read_text())
    for record in baseline["claims"]:
        if record["test"] == "test_bridge_matches_hf_on_arbitrary_text":
            record["parameters"]["prompts.max_digits"] = 9  # measured on another population
            record["estimate"] += 1.0  # a number that must not be compared with this run's
    baseline["claims"].append({**baseline["claims"][0], "test": "test_gone", "claim_id": "gone"})
    (files / BASELINE).write_text(json.dumps(baseline))
    failed = claims_run(EQUIVALENCE)
    failed.assert_outcomes(passed=1, failed=1)
    failed.stdout.fnmatch_lines([
        "*Not comparable with *test-qwen2-2l.json: hf-equivalence (test_bridge_matches_hf_on_arbitrary_text): "
        "parameters differ: prompts.max_digits 9 -> *; the baseline's number belongs to its own settings*"
        "--baseline-missing=warn*",
        "*4 baseline records: 1 compared (0 regressed, 0 improved, 1 unchanged), 1 not comparable, 2 dropped "
        "(test_head_attributions_sum_to_the_logit_difference: not run; test_gone: not run); 0 claim tests without a "
        "baseline record*"])
    assert "Regression" not in failed.stdout.str()
    warned = claims_run(EQUIVALENCE, "--baseline-missing=warn")
    warned.assert_outcomes(passed=2)
    record = records(files / EVIDENCE)["test_bridge_matches_hf_on_arbitrary_text"]
    assert record["comparison"]["status"] == "not-comparable"
    assert record["comparison"]["baseline_estimate"] is None and record["comparison"]["change"] is None


def test_a_claim_without_a_baseline_fails_with_the_reason_and_warn_downgrades_it(files, pytester, claims_run):
    baseline = json.loads((files / BASELINE).read_text())
    baseline["claims"] = [c for c in baseline["claims"] if c["test"] != "test_bridge_matches_hf_on_arbitrary_text"]
    (files / BASELINE).write_text(json.dumps(baseline))
    failed = claims_run(EQUIVALENCE)
    assert failed.ret == 1
    failed.assert_outcomes(passed=1, failed=1)
    failed.stdout.fnmatch_lines([
        "*No baseline for claim hf-equivalence (test_bridge_matches_hf_on_arbitrary_text): *test-qwen2-2l.json has "
        "no record of test_bridge_matches_hf_on_arbitrary_text. Write it with --update-baseline --baseline *, or "
        "pass --baseline-missing=warn*",
        "*baseline *baselines: 2 baseline records: 1 compared (0 regressed, 0 improved, 1 unchanged), 0 not comparable, "
        "1 dropped (test_head_attributions_sum_to_the_logit_difference: not run); 1 claim test without a baseline "
        "record*"])
    warned = claims_run(EQUIVALENCE, "--baseline-missing=warn")
    assert warned.ret == 0
    warned.assert_outcomes(passed=2)
    warned.stdout.fnmatch_lines(["*1 claim test without a baseline record (--baseline-missing=warn: claims without a "
                                 "comparable baseline record were not failed)*"])
    assert "1 claim test without a baseline record" in (files / "reports" / "claims-partial.html").read_text()


def test_a_folder_without_this_models_baseline_fails_every_stated_claim(files, pytester, claims_run):
    (files / BASELINE).unlink()
    result = claims_run(EQUIVALENCE)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*no baseline file *test-qwen2-2l.json for model 'test-qwen2-2l'*",
                                 "*0 baseline records: 0 compared (0 regressed, 0 improved, 0 unchanged), 0 not "
                                 "comparable, 0 dropped; 2 claim tests without a baseline record*"])


def test_a_model_that_fails_to_load_is_tried_once_and_changes_no_file(files, pytester, claims_run, monkeypatch):
    calls = []

    def load_model(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("the weights are damaged")

    monkeypatch.setattr("circuit.models.load_model", load_model)
    before = snapshot(files)
    result = claims_run(ATTRIBUTION, EQUIVALENCE, "--update-baseline")
    assert result.ret == 1
    result.assert_outcomes(errors=3)
    assert len(calls) == 1
    reason = ("test-qwen2-2l' failed to load (tried once this session; every test of it reports this): "
              "RuntimeError: the weights are damaged")
    assert result.stdout.str().count(reason) >= 3
    result.stdout.fnmatch_lines(["*claims: model test-qwen2-2l did not load (RuntimeError: the weights are damaged)*"
                                 "left as it was*",
                                 "*baseline NOT updated: model test-qwen2-2l did not load*The old baseline is "
                                 "untouched*"])
    assert {k: v for k, v in snapshot(files).items() if "partial" not in k} == before


def test_an_unavailable_model_skips_and_does_not_update_the_baseline(files, pytester, claims_run):
    before = snapshot(files)
    result = claims_run(ATTRIBUTION, "--update-baseline", "--claims-allow-missing", "-rs",
                        model="no-such-org/no-such-model")
    assert result.ret == 1  # not the 0 of an all-skipped run: the update asked for did not happen
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*Model 'no-such-org/no-such-model' is not available*",
                                 "*baseline NOT updated: model no-such-org/no-such-model did not load*"])
    assert {k: v for k, v in snapshot(files).items() if k != "reports/claims-partial.html"} == before


class Interrupt:
    """Ctrl-C, or a plugin asking pytest to stop, at the second test."""

    def __init__(self, how: str) -> None:
        self.how, self.seen = how, 0

    def pytest_runtest_call(self, item: pytest.Item) -> None:
        self.seen += 1
        if self.seen == 2 and self.how == "ctrl-c":
            raise KeyboardInterrupt
        if self.seen == 2:
            item.session.shouldstop = "stop requested"


@pytest.mark.parametrize("how", ["ctrl-c", "shouldstop"])
def test_an_interrupted_run_leaves_every_file_intact(files, pytester, claims_run, how):
    before = snapshot(files)
    result = claims_run(EQUIVALENCE, "--update-baseline", plugins=(Interrupt(how),))
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*claims: run * evidence and baselines left as they were.*",
                                 "*baseline NOT updated: the run was *The old baseline is untouched.*"])
    after = snapshot(files)
    assert "reports/claims-partial.html" in after
    assert {k: v for k, v in after.items() if k != "reports/claims-partial.html"} == before


class SetupError:
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        if item.originalname == "test_bridge_matches_hf_on_arbitrary_text":
            raise RuntimeError("a fixture broke")


def test_a_run_that_errored_does_not_update_the_baseline_but_records_the_reason(files, pytester, claims_run):
    before = snapshot(files)
    result = claims_run(EQUIVALENCE, "--update-baseline", plugins=(SetupError(),))
    assert result.ret == 1
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*baseline NOT updated: 1 test(s) errored (*test_bridge_matches_hf_on_arbitrary_text*"
                                 "fix them and run again. The old baseline is untouched.*"])
    assert snapshot(files)[str(BASELINE)] == before[str(BASELINE)]
    errored = records(files / EVIDENCE)["test_bridge_matches_hf_on_arbitrary_text"]
    assert (errored["outcome"], errored["note"]) == ("error", "RuntimeError: a fixture broke")


def test_a_nan_statistic_never_reaches_the_baseline(files, pytester, claims_run, monkeypatch):
    from fixtures.claims_session import ClaimRecorder

    record = ClaimRecorder.record
    monkeypatch.setattr(ClaimRecorder, "record", lambda self, statistic, value, **kw: record(self, statistic,
                                                                                           math.nan, **kw))
    before = snapshot(files)
    result = claims_run(EQUIVALENCE, "--update-baseline")
    result.stdout.fnmatch_lines(["*baseline NOT updated (no test ran to a verdict): *0 updated, 3 kept, 2 not "
                                 "updated (test_bridge_matches_hf_on_multiplication_prompts: non-finite statistic*"])
    assert snapshot(files)[str(BASELINE)] == before[str(BASELINE)]


def test_a_write_that_fails_at_the_end_is_one_line_and_loses_nothing(files, pytester, claims_run, monkeypatch):
    def disk_full(path, evidence):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("circuit.evidence.write_evidence", disk_full)
    before = snapshot(files)
    result = claims_run(EQUIVALENCE, "--update-baseline")
    assert result.ret == 1
    result.assert_outcomes(passed=2)
    assert result.stdout.str().count("claims: could not write (OSError: [Errno 28] No space left on device); the "
                                     "previous file is intact.") == 2  # the evidence and the baseline
    assert {k: v for k, v in snapshot(files).items() if k != "reports/claims-partial.html"} == before


def test_collect_only_writes_nothing(files, pytester, claims_run):
    before = snapshot(files)
    result = claims_run(str(CLAIMS), "--co", "--update-baseline")
    assert result.ret == 0
    assert snapshot(files) == before


LOAD_COUNTER = '''
import os
import circuit.models as models

_load = models.load_model


def load_model(*args, **kwargs):
    with open(os.path.join(os.environ["CLAIMS_LOAD_LOG"], f"{os.getpid()}.log"), "a") as log:
        log.write(f"{os.environ.get('PYTEST_XDIST_WORKER', 'controller')} {args[0] if args else kwargs}\\n")
    return _load(*args, **kwargs)


models.load_model = load_model
'''
"""A plugin (``-p count_loads``) that logs every ``circuit.models.load_model`` call with its xdist worker."""


def test_xdist_workers_send_every_record_to_the_controller(pytester, monkeypatch, tiny_model):
    """Under ``-n 2`` each worker loads its model once, the workers send their records (evidence, baseline, the
    figures they rendered) to the controller, and the controller's report holds every worker's tests."""
    pytest.importorskip("xdist")
    monkeypatch.setenv("MPLCONFIGDIR", MATPLOTLIB_CACHE)
    (pytester.path / "count_loads.py").write_text(LOAD_COUNTER)
    logs = pytester.mkdir("loads")
    monkeypatch.setenv("CLAIMS_LOAD_LOG", str(logs))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(pytester.path), os.environ.get("PYTHONPATH", "")]))
    result = pytester.runpytest_subprocess(*pytest_args(pytester.path, "-n", "2", "-p", "count_loads", ATTRIBUTION,
                                                        EQUIVALENCE, "--update-baseline", model=tiny_model), timeout=600)
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert "Traceback" not in result.stdout.str()
    loads = [line.split()[0] for log in logs.glob("*.log") for line in log.read_text().splitlines()]
    assert loads and set(loads) <= {"gw0", "gw1"} and len(loads) == len(set(loads)), f"loads per worker: {loads}"
    evidence = load_evidence(pytester.path / EVIDENCE)
    assert {c.test for c in evidence.claims} == STATED and {c.outcome for c in evidence.claims} == {"passed"}
    assert {c.test for c in load_evidence(pytester.path / BASELINE).claims} == STATED
    assert not list(pytester.path.rglob("*.tmp"))
    report = (pytester.path / "reports" / "claims-partial.html").read_text()
    assert "data:image/png;base64," in report  # the workers rendered the figures
    assert f"partial run: 3 of {N_CLAIM_TESTS} claim tests" in report
    assert report.count("<tr><td><code>test_") == 3, "the summary lacks a worker's tests"
    assert "aria-label='Forest plot of every claim test'" in report
    # the workers' evidence (rendered there, carried in the report's rows): one block per judged test
    assert len(re.findall(r"Prompt sets hypothesis tried: \d+", html_lib.unescape(report))) == 3
