"""Bad input, third round (issue 21): no green run that tested nothing, and files that belong to their model.

Each case is a run of pytest in-process (``pytester``) on the small test model, or a call of the function
that decides; each one fails when its fix is removed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
CLAIM = str(ROOT / "claims" / "test_attribution_completeness.py")
UNSTATED_SPEC = """
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
[claims.named-heads]
top_k = 4
tolerance = 2
heads = [{ head = "L1H0", sign = "any", by = ["z_patching"] }]
"""
"""A valid spec that does not state attribution-completeness: that claim's tests skip."""


@pytest.fixture(scope="module")
def libraries(test_model_folder) -> None:
    """Load the tiny model once here, so that the in-process runs find every library a load imports already
    imported (pytester drops the modules a run imported, and torch cannot register some of them twice)."""
    from circuit.models import load_model

    load_model(test_model_folder("test-qwen2-2l"), device="cpu")


@pytest.fixture
def run(pytester: pytest.Pytester, tmp_path: Path, libraries: None):
    """Run pytest in-process with the reports in ``tmp_path``; restores the outer hypothesis profile."""
    from hypothesis import settings

    profile = settings.get_current_profile_name()

    def run(*args: str) -> pytest.RunResult:
        return pytester.runpytest_inprocess("-p", "no:cacheprovider", "--claims-reports", str(tmp_path / "reports"),
                                            *args)

    yield run
    settings.load_profile(profile)


def one_error(result: pytest.RunResult, *fragments: str) -> str:
    text = "\n".join(result.outlines + result.errlines)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, text
    assert "Traceback" not in text and "INTERNALERROR" not in text, text
    errors = [line for line in result.errlines + result.outlines if line.startswith("ERROR:")]
    assert len(errors) == 1, text
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


# --- no green run on nothing ----------------------------------------------------------------------------


def test_a_model_typo_is_a_usage_error_with_did_you_mean(run, tmp_path):
    one_error(run("--model", "llama-mult2d", CLAIM), "--model llama-mult2d: not a folder, a bundled model",
              "Did you mean llama-mult-2d?", "--claims-allow-missing")
    assert not (tmp_path / "reports").exists()


def test_a_hub_id_not_in_the_cache_names_the_fetch_command_of_the_installed_hub(run):
    from circuit.models import fetch_command

    one_error(run("--model", "nosuch-org/nosuch-model", CLAIM), "nor in the Hugging Face cache",
              f"`{fetch_command('nosuch-org/nosuch-model')}`")


def test_the_fetch_command_follows_the_installed_huggingface_hub(monkeypatch):
    import importlib.util

    from circuit.models import fetch_command

    assert fetch_command("org/m", "abc") == "hf download org/m --revision abc"  # huggingface-hub >= 0.34
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "huggingface_hub.cli.hf" else real(name, *a))
    assert fetch_command("org/m") == "huggingface-cli download org/m"


def test_a_missing_model_skips_only_when_asked(run, tmp_path):
    result = run("--model", "nosuch-org/nosuch-model", "--claims-allow-missing", CLAIM)
    text = "\n".join(result.outlines)
    assert result.ret == pytest.ExitCode.OK, text
    assert result.parseoutcomes().get("skipped", 0) >= 1 and "passed" not in result.parseoutcomes(), text
    assert "no claim test reached a verdict" in text, text
    assert not (tmp_path / "reports" / "claims.html").exists()


def test_a_run_in_which_no_claim_reached_a_verdict_fails_and_keeps_the_last_report(run, tmp_path):
    (tmp_path / "spec.toml").write_text(UNSTATED_SPEC)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "claims.html").write_text("the last good report")
    result = run("--model", "test-qwen2-2l", "--claims-spec", str(tmp_path / "spec.toml"), CLAIM)
    text = "\n".join(result.outlines)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, text
    assert result.parseoutcomes().get("skipped", 0) >= 1 and "passed" not in result.parseoutcomes(), text
    assert "claims: no claim test reached a verdict (" in text and "skipped" in text, text
    assert "this run tested nothing" in text and "--claims-allow-missing" in text, text
    assert (tmp_path / "reports" / "claims.html").read_text() == "the last good report"
    assert not (tmp_path / "reports" / "evidence" / "test-qwen2-2l.json").exists()


def test_two_specs_matching_one_model_are_an_error_listing_both(run, tmp_path, monkeypatch):
    import fixtures.claims_checks
    from circuit.spec import AmbiguousSpecError, find_spec

    specs = tmp_path / "specs"
    specs.mkdir()
    for name in ("a.toml", "b.toml"):
        (specs / name).write_text('[model]\nmatch = ["test-qwen2-2l"]\n')
    with pytest.raises(AmbiguousSpecError, match=r"Several claim specs match model 'test-qwen2-2l': \['a\.toml', 'b\.toml'\]"):
        find_spec("test-qwen2-2l", specs)
    monkeypatch.setattr(fixtures.claims_checks, "SPEC_DIR", specs)
    one_error(run("--model", "test-qwen2-2l", CLAIM), "spec: Several claim specs match", "a.toml", "b.toml",
              "--claims-spec PATH")


# --- the model --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qwen2-mult-2d", "test-qwen2-2l", str(ROOT / "fixtures" / "models" / "qwen2-mult-2d")],
                         ids=["bundled", "test-model", "folder"])
def test_a_revision_of_a_local_model_is_refused(run, name):
    one_error(run("--model", name, "--revision", "abc123", CLAIM), "--revision abc123 with --model",
              "a revision selects a commit of a hub model", "Leave --revision out")


def test_the_same_model_by_name_and_by_path_runs_once(run):
    result = run("--co", "-q", "--model", "qwen2-mult-2d", "--model", str(ROOT / "fixtures" / "models" / "qwen2-mult-2d"),
                 CLAIM)
    text = "\n".join(result.outlines)
    assert result.ret == pytest.ExitCode.OK, text
    ids = [line for line in result.outlines if "::" in line]
    assert ids and all(line.endswith("[qwen2-mult-2d]") for line in ids), text
    assert len(ids) == len(set(ids)), text


# --- a file belongs to its model ----------------------------------------------------------------------------


def evidence_of(model: str, tests: tuple[str, ...] = ("test_head_attributions_sum_to_the_logit_difference",)):
    from circuit.evidence import ClaimEvidence, EvidenceFile

    records = tuple(ClaimEvidence(claim_id="attribution-completeness", statistic="s", estimate=0.0, outcome="passed",
                                  test=test, tolerance=1e-4) for test in tests)
    return EvidenceFile(model=model, revision=None, claims=records, dtype="float32", device="cpu")


def test_update_baseline_refuses_the_file_of_another_model_and_leaves_it_byte_identical(run, tmp_path):
    from circuit.evidence import write_evidence

    path = write_evidence(tmp_path / "baselines" / "test-qwen2-2l.json", evidence_of("other-model"))
    before = path.read_bytes()
    one_error(run("--model", "test-qwen2-2l", "--update-baseline", "--baseline", str(path.parent), CLAIM),
              "--update-baseline:", "test-qwen2-2l.json is the baseline of model 'other-model', not of "
              "'test-qwen2-2l'", "left as it is")
    assert path.read_bytes() == before


def test_the_evidence_merge_refuses_the_file_of_another_model_and_leaves_it_byte_identical(run, tmp_path):
    from circuit.evidence import EvidenceError, merge_evidence, write_evidence

    path = write_evidence(tmp_path / "reports" / "evidence" / "test-qwen2-2l.json", evidence_of("other-model"))
    before = path.read_bytes()
    one_error(run("--model", "test-qwen2-2l", CLAIM), "evidence file:", "holds the evidence of model 'other-model', "
              "not of 'test-qwen2-2l'", "--claims-reports DIR")
    assert path.read_bytes() == before
    with pytest.raises(EvidenceError, match="the evidence of model 'other-model', not of 'test-qwen2-2l'"):
        merge_evidence(evidence_of("other-model"), evidence_of("test-qwen2-2l"))  # the file changed meanwhile


def test_a_symlinked_evidence_file_is_written_through_to_its_target(tmp_path):
    from circuit.evidence import load_evidence, write_evidence

    target = write_evidence(tmp_path / "store" / "m.json", evidence_of("m", ("test_a",)))
    link = tmp_path / "reports" / "m.json"
    link.parent.mkdir()
    link.symlink_to(target)
    write_evidence(link, evidence_of("m", ("test_b",)))
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert [c.test for c in load_evidence(target).claims] == ["test_b"]
    assert not list(tmp_path.rglob("*.tmp"))


def test_leftover_temporary_files_are_cleaned(tmp_path):
    from circuit.evidence import locked
    from fixtures.claims_html import remove_stale_reports

    path = tmp_path / "m.json"
    leftover, other = tmp_path / ".m.json.abc123.tmp", tmp_path / ".n.json.abc123.tmp"
    leftover.write_text("half")
    other.write_text("another file's")
    with locked(path):
        pass
    assert not leftover.exists() and other.exists()
    import subprocess
    import sys

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, alive = tmp_path / f".claims-{finished.stdout.strip()}.html.tmp", tmp_path / f".claims-{os.getpid()}.html.tmp"
    dead.write_text("killed run")
    alive.write_text("this run")
    remove_stale_reports(tmp_path)
    assert not dead.exists() and alive.exists()


@pytest.mark.parametrize(("change", "fragments"), [
    (lambda d: d["claims"][0].update(test=3), ("claims[0]: test = 3 is a int, not a string",)),
    (lambda d: d.update(library_versions=["torch"]), ("library_versions is a list, not a mapping",)),
    (lambda d: d["claims"].append(dict(d["claims"][0])), ("claims[0] and claims[1] are both records of test",
                                                           "'test_head_attributions_sum_to_the_logit_difference'")),
], ids=["test-id-not-a-string", "versions-not-a-mapping", "two-records-for-one-test"])
def test_a_malformed_record_is_an_error_naming_the_file_and_the_record(tmp_path, change, fragments):
    import json

    from circuit.evidence import EvidenceError, load_evidence, write_evidence

    path = write_evidence(tmp_path / "m.json", evidence_of("m"))
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))
    with pytest.raises(EvidenceError) as error:
        load_evidence(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    for fragment in fragments:
        assert fragment in str(error.value)


@pytest.fixture
def small_disk(tmp_path):
    """A 100 KiB tmpfs at ``tmp_path / "disk"`` (root only; skipped where mount is not permitted)."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    yield disk
    subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_full_disk_keeps_the_last_report_and_says_so_in_one_line(run, small_disk):
    reports = small_disk / "reports"
    reports.mkdir()
    (reports / "claims-partial.html").write_text("the last good report")
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    (small_disk / "filler").write_bytes(b"x" * (free - 24 * 1024))  # room for the evidence, not the report
    result = run("--model", "test-qwen2-2l", "--claims-spec", str(ROOT / "claims" / "specs" / "test-models.toml"),
                 "--claims-reports", str(reports), CLAIM)
    text = "\n".join(result.outlines + result.errlines)
    assert result.ret == pytest.ExitCode.TESTS_FAILED, text
    assert "INTERNALERROR" not in text and "Traceback" not in text, text
    lines = [line for line in result.outlines if "report NOT written" in line]
    assert len(lines) == 1 and "No space left on device" in lines[0], text
    assert (reports / "claims-partial.html").read_text() == "the last good report"
    assert not list(reports.glob(".claims-*.tmp"))


# --- the model and its task -------------------------------------------------------------------------------------


def _copy_model(source: str, folder: Path, **config: object) -> Path:
    import json
    import shutil

    shutil.copytree(source, folder)
    values = json.loads((folder / "config.json").read_text())
    values.update(config)
    if "layer_types" in values:  # transformers checks it against num_hidden_layers
        values["layer_types"] = values["layer_types"][:values["num_hidden_layers"]]
    (folder / "config.json").write_text(json.dumps(values))
    return folder


def test_weights_with_parameters_the_config_lacks_are_refused(tmp_path, test_model_folder):
    from circuit.models import ModelFolderError, load_model

    folder = _copy_model(test_model_folder("test-qwen2-2l"), tmp_path / "m", num_hidden_layers=1)
    with pytest.raises(ModelFolderError, match=r"its weights hold \d+ parameter\(s\) its config's architecture lacks "
                                               r"\(model\.layers\.1\..*do not match config\.json"):
        load_model(folder, device="cpu")


class MultiDigitTokenizer:
    """GPT-2 style: runs of up to three digits are one token."""

    unk_token_id = None

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.vocab)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        import re

        return {"input_ids": [self.vocab.setdefault(piece, len(self.vocab))
                              for piece in re.findall(r" ?\d{1,3}| ?[^\d ]+| ", text)]}

    def decode(self, ids: list[int]) -> str:
        inverse = {i: piece for piece, i in self.vocab.items()}
        return "".join(inverse[i] for i in ids)


def test_a_tokenizer_with_multi_digit_tokens_is_refused_with_the_reason():
    from circuit.models import TokenizerError, check_tokenizer

    with pytest.raises(TokenizerError, match=r"puts several digits in one token \('70620 x 99460 =' -> \['706', '20'"
                                             r".*assume one digit per token"):
        check_tokenizer(MultiDigitTokenizer(), "gpt2-like")


def test_prompts_longer_than_the_context_are_refused_before_any_sweep(run, tmp_path, test_model_folder):
    folder = _copy_model(test_model_folder("test-qwen2-2l"), tmp_path / "short", max_position_embeddings=16)
    (tmp_path / "spec.toml").write_text(UNSTATED_SPEC.replace("max_digits = 2", "max_digits = 5")
                                        .replace("[claims.named-heads]", "[claims.attribution-completeness]\n"
                                                 "atol = 1e-4\ntolerance = 1e-4\n[claims.named-heads]"))
    result = run("--model", str(folder), "--claims-spec", str(tmp_path / "spec.toml"), CLAIM)
    text = "\n".join(result.outlines)
    assert result.ret == pytest.ExitCode.TESTS_FAILED and "IndexError" not in text, text
    assert "[prompts] max_digits = 5: its longest problem takes" in text, text
    assert "more than model 'short''s context of 16; lower [prompts] max_digits to" in text, text


def test_operands_outside_the_declared_domain_warn_in_the_terminal_and_the_report(run, tmp_path):
    import json
    import shutil

    folder = tmp_path / "mult"
    shutil.copytree(ROOT / "fixtures" / "models" / "qwen2-mult-2d", folder)
    summary = json.loads((folder / "training_summary.json").read_text())
    assert summary["domain"].startswith("a x b for 0 <= a, b <= 99")
    spec = (ROOT / "claims" / "specs" / "qwen2-mult-2d.toml").read_text()
    (tmp_path / "spec.toml").write_text(spec.replace("max_digits = 2", "max_digits = 3", 1))
    result = run("--model", str(folder), "--claims-spec", str(tmp_path / "spec.toml"), CLAIM)
    text = "\n".join(result.outlines)
    warning = ("draws operands of up to 3 digits (up to 999), but model 'mult' was trained on operands up to 99 "
               "(its training_summary.json)")
    assert f"claims: WARNING: {tmp_path / 'spec.toml'} {warning}" in text, text
    report = (tmp_path / "reports" / "claims-partial.html").read_text()
    assert warning in report.replace("&#x27;", "'"), "the warning is not in the report"
