"""``python -m circuit.discover``'s command line (issue 21, case 7): bad arguments fail before discovery runs,
in one line; what it writes is valid TOML whatever the names; a draft never says it was reviewed."""

from __future__ import annotations

import tomllib

import pytest

from circuit.discover import DiscoveryOptions, _toml_value, draft_header, main


def usage_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(lines) == 1, lines
    return lines[0]


def test_out_in_a_missing_folder_fails_before_the_model_loads(capsys, tmp_path):
    line = usage_error(capsys, ["--model", "no-such-org/no-such-model", "--out", str(tmp_path / "absent" / "d.toml")])
    assert f"--out {tmp_path / 'absent' / 'd.toml'}: the folder {tmp_path / 'absent'} does not exist" in line
    assert "--model" not in line.split(":", 2)[-1].split("does not exist")[0]  # not the model's load error
    line = usage_error(capsys, ["--model", "no-such-org/no-such-model", "--out", str(tmp_path)])
    assert "is a folder; pass a file name" in line


def test_a_claim_module_that_fails_to_import_is_one_line(capsys, tmp_path):
    (tmp_path / "test_broken.py").write_text("import no_such_module_anywhere\n")
    line = usage_error(capsys, ["--model", "x", "--claims-dir", str(tmp_path)])
    assert "a claim module cannot be imported (ModuleNotFoundError: No module named 'no_such_module_anywhere')" in line
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("name", ['say "hi"', "back\\slash", "new\nline", "tab\tand 'quote'"])
def test_match_values_are_written_as_toml_strings(name):
    assert tomllib.loads(f"match = [{_toml_value(name)}]")["match"] == [name]


def test_a_draft_header_says_it_is_not_reviewed():
    from circuit.spec import PromptSpec

    prompts = PromptSpec(min_size=16, max_size=16, min_digits=2, max_digits=2, corruptions=("same_length",))
    header = draft_header("a\nb", 50, DiscoveryOptions(prompts=prompts))
    assert "Reviewed" not in header and "not reviewed" in header and "Review every claim" in header
    assert "--model a b`" in header
