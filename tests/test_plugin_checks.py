"""Bad options fail at session start, before any model loads: one ``ERROR:`` line naming the problem and the
fix, no traceback, and no earlier file touched.

These run pytest in-process with ``pytester`` (the checks raise ``pytest.UsageError`` in
``pytest_configure``, so no claim module is imported and no model is loaded: each run takes a fraction of a
second).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from circuit.evidence import ClaimEvidence, EvidenceFile, write_evidence

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
CLAIM = str(ROOT / "claims" / "test_attribution_completeness.py")


@pytest.fixture
def run(pytester: pytest.Pytester, tmp_path: Path):
    """Run the claim on the tiny model in-process; restores the hypothesis profile the outer run uses."""
    from hypothesis import settings

    profile = settings.get_current_profile_name()

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest_inprocess("-p", "no:cacheprovider", "--claims-reports",
                                            str(tmp_path / "reports"), "--model", "test-qwen2-2l", CLAIM, *args)

    yield run
    settings.load_profile(profile)


def one_error(result: pytest.RunResult, *fragments: str) -> str:
    """The run's single ``ERROR:`` line, after checking it is a usage error without a traceback."""
    text = "\n".join(result.outlines + result.errlines)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, text
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    errors = [line for line in result.errlines + result.outlines if line.startswith("ERROR:")]
    assert len(errors) == 1, text
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def baseline_of(model: str) -> EvidenceFile:
    record = ClaimEvidence(claim_id="attribution-completeness", statistic="s", estimate=0.0, outcome="passed",
                           test="test_head_attributions_sum_to_the_logit_difference", tolerance=1e-4)
    return EvidenceFile(model=model, revision=None, claims=(record,), dtype="float32", device="cpu")


try:
    import torch

    HAS_CUDA, HAS_MPS = torch.cuda.is_available(), torch.backends.mps.is_available()
except ImportError:  # pragma: no cover
    HAS_CUDA = HAS_MPS = False


@pytest.mark.parametrize(("args", "fragments"), [
    pytest.param(("--device", "cuda"), ("--device cuda", "no usable cuda device", "Use --device cpu"),
                 marks=pytest.mark.skipif(HAS_CUDA, reason="this machine has CUDA")),
    pytest.param(("--device", "mps"), ("--device mps", "no usable mps device", "Use --device cpu"),
                 marks=pytest.mark.skipif(HAS_MPS, reason="this machine has MPS")),
    (("--device", "nosuchdev"), ("--device nosuchdev is not a torch device", "Use one of cpu, cuda")),
    (("--device", "cpu:x"), ("--device cpu:x is not a torch device",)),
    (("--dtype", "garbage"), ("--dtype garbage", "Unknown dtype 'garbage'", "use one of", "float32")),
    (("--hypothesis-profile", "nosuch"), ("--hypothesis-profile nosuch: no such profile",
                                          "Known profiles: ci, default, thorough")),
], ids=["cuda-on-cpu", "mps", "nosuchdev", "bad-index", "dtype", "profile"])
def test_bad_device_dtype_and_profile_are_one_line_each(run, tmp_path, args, fragments):
    one_error(run(*args), *fragments)
    assert not (tmp_path / "reports").exists()  # nothing written


def test_an_unwritable_reports_folder_fails_at_the_start_not_after_the_run(run, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    one_error(run("--claims-reports", str(tmp_path / "a-file" / "reports")),
              "a-file/reports is not a writable folder", "Pass a writable folder with --claims-reports DIR")
    assert (tmp_path / "a-file").read_text() == "not a folder"


def test_a_spec_with_an_unknown_claim_fails_before_the_model_loads(run, tmp_path):
    spec = (ROOT / "claims" / "specs" / "test-models.toml").read_text() + "\n[claims.no-such-claim]\ntolerance = 1\n"
    (tmp_path / "spec.toml").write_text(spec)
    one_error(run("--claims-spec", str(tmp_path / "spec.toml")), "spec:", "spec.toml", "claims.no-such-claim",
              "unknown claim id")


def test_a_spec_that_is_a_folder_is_one_line_too(run, tmp_path):
    one_error(run("--claims-spec", str(tmp_path)), "spec:", "cannot be read (IsADirectoryError",
              "Pass a spec file (TOML) to --claims-spec")


def test_an_empty_model_name_is_refused(run):
    one_error(run("--model", ""), "--model is empty", "pass a hub id, a local folder")


def test_a_missing_baseline_says_how_to_write_one(run, tmp_path):
    one_error(run("--baseline", str(tmp_path / "absent.json")), "absent.json does not exist",
              "Write one with --update-baseline")


@pytest.mark.parametrize("update", [False, True], ids=["compare", "update"])
def test_a_corrupted_baseline_in_a_folder_is_a_clear_error_and_stays(run, tmp_path, update):
    folder = tmp_path / "baselines"
    folder.mkdir()
    (folder / "test-qwen2-2l.json").write_text('{"format": 2, "claims": [')
    before = snapshot(folder)
    line = one_error(run("--baseline", str(folder), *(["--update-baseline"] if update else [])),
                     "test-qwen2-2l.json is not JSON", "damaged", "Restore it from version control")
    assert line.startswith("ERROR: --update-baseline:" if update else "ERROR: --baseline:")
    assert snapshot(folder) == before


def test_a_corrupted_evidence_file_in_the_reports_folder_is_a_clear_error_and_stays(run, tmp_path):
    evidence = tmp_path / "reports" / "evidence" / "test-qwen2-2l.json"
    evidence.parent.mkdir(parents=True)
    evidence.write_text("[1, 2")
    one_error(run(), "evidence file:", "test-qwen2-2l.json is not JSON", "another --claims-reports DIR")
    assert evidence.read_text() == "[1, 2"


@pytest.mark.parametrize("renamed", [False, True], ids=["file", "renamed-in-folder"])
def test_a_baseline_of_another_model_is_refused(run, tmp_path, renamed):
    path = tmp_path / "baselines" / ("test-qwen2-2l.json" if renamed else "other.json")
    write_evidence(path, baseline_of("other-model"))
    before = snapshot(tmp_path / "baselines")
    one_error(run("--baseline", str(path.parent if renamed else path)),
              "is the baseline of model 'other-model', not of 'test-qwen2-2l'", "--baseline-missing=warn",
              "--update-baseline")
    assert snapshot(tmp_path / "baselines") == before


def test_baseline_missing_takes_only_fail_or_warn(run):
    result = run("--baseline-missing", "maybe")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "invalid choice: 'maybe' (choose from 'fail', 'warn')" in "\n".join(result.errlines)



class SettingsProbe:
    """Reads (never writes) the settings hypothesis will run each collected claim test with."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple] = {}

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        for item in session.items:
            test = item.obj
            self.seen[item.originalname] = (test._hypothesis_internal_use_settings.phases,
                                            getattr(test, "_hypothesis_internal_use_seed", None))


def test_claims_run_unshrunk_with_one_seed_under_the_ci_profile(pytester, tmp_path):
    """The plugin sets this with hypothesis' public ``@settings``/``@seed``: no shrink or explain phase (each
    shrink step runs the model), and seed 0 for every claim (all claims draw the same prompt sets)."""
    from hypothesis import Phase, settings

    profile = settings.get_current_profile_name()
    probe = SettingsProbe()
    try:
        result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--co", "--claims-reports",
                                              str(tmp_path / "reports"), "--model", "test-qwen2-2l", CLAIM,
                                              "--hypothesis-profile", "ci", plugins=[probe])
    finally:
        settings.load_profile(profile)
    assert result.ret == 0
    phases, seed = probe.seen["test_head_attributions_sum_to_the_logit_difference"]
    assert Phase.generate in phases and Phase.shrink not in phases and Phase.explain not in phases
    assert seed == 0
    assert not (tmp_path / "reports").exists()  # --co writes nothing


def test_each_xdist_worker_takes_its_own_gpu(monkeypatch):
    """One model/device per worker: gwN loads on cuda:N mod count when several GPUs are present."""
    import torch

    from fixtures.claims_session import worker_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for worker, expected in (("gw0", "cuda:0"), ("gw1", "cuda:1"), ("gw2", "cuda:0")):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        assert worker_device(None) == expected and worker_device("cuda") == expected
        assert worker_device("cpu") == "cpu" and worker_device("cuda:1") == "cuda:1"
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert worker_device(None) is None


PROGRESS_PROBE = '''
from fixtures.claims_plugin import UncapturedStream, progress_options


def test_writes_past_capture(request):
    options = progress_options(request.config, worker=False)
    assert isinstance(options["file"], UncapturedStream) and options["delay"] == 3.0 and not options["leave"]
    options["file"].write("BAR-ON-THE-TERMINAL")
    print("CAPTURED-OUTPUT")
    assert progress_options(request.config, worker=True) is False  # an xdist worker has no terminal
    assert False  # show the captured section
'''


def _run_probe(pytester: pytest.Pytester, choice: str) -> pytest.RunResult:
    """The probe file in a pytest subprocess with the suite's plugins."""
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:html", "-p", "fixtures.plugin", "-p",
                                         "fixtures.claims_plugin", "--claims-progress", choice, "--claims-reports",
                                         str(pytester.path / "reports"), "test_probe.py")


def test_claims_progress_bars_go_to_the_terminal_past_capture(pytester, monkeypatch):
    """With ``--claims-progress on`` a sweep's bar is written to the terminal while capture is on (it does not
    land in the test's captured output, which the report shows); ``off`` and ``auto`` off a terminal give none."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile(test_probe=PROGRESS_PROBE)
    result = _run_probe(pytester, "on")
    out = result.stdout.str() + result.stderr.str()
    assert "BAR-ON-THE-TERMINAL" in result.stderr.str(), out
    captured = result.stdout.str()[result.stdout.str().index("Captured stdout call"):]  # what the report shows
    assert "CAPTURED-OUTPUT" in captured and "BAR-ON-THE-TERMINAL" not in captured


def test_claims_progress_is_off_when_asked_and_off_a_terminal(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makepyfile(test_probe='''
from fixtures.claims_plugin import progress_options


def test_off(request):
    assert progress_options(request.config, worker=False) is False
''')
    for choice in ("off", "auto"):  # the subprocess' stderr is a pipe, not a terminal
        result = _run_probe(pytester, choice)
        assert result.ret == 0, result.stdout.str()
