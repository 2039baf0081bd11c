"""README.md's library example, run verbatim on the bundled default model, prints what README shows."""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks_after(heading: str) -> tuple[str, str]:
    text = README.read_text()
    section = text[text.index(heading):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    shown = re.search(r"```text\n(.*?)```", section, re.S).group(1)
    return code, shown


def test_the_library_example_prints_what_the_readme_shows(monkeypatch):
    monkeypatch.chdir(README.parent)
    code, shown = _blocks_after("## Library")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md (library example)", "exec"), {})
    assert out.getvalue() == shown, f"README shows:\n{shown}\nthe example prints:\n{out.getvalue()}"


def _adding_a_claim() -> tuple[str, str]:
    text = README.read_text()
    section = text[text.index("## Adding a claim"):]
    section = section[: section.index("\n## ", 1)]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    table = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    return code, table


def _run_claim_file(tmp_path: Path, claim_file: Path, spec: Path) -> tuple[int, str, dict]:
    """``pytest <claim_file> --claims-spec <spec>`` in a subprocess on the default model: the file lies outside
    the repository, so the suite's plugins and ini file are named (``run_claims`` runs from the repository)."""
    from test_claims_falsifiable import run_claims

    root = README.parent
    tmp_path.mkdir(parents=True, exist_ok=True)
    result, evidence = run_claims(tmp_path, "-p", "fixtures.plugin", "-p", "fixtures.claims_plugin", "-p", "no:html",
                                  "--rootdir", str(root), "-c", str(root / "pyproject.toml"), "--claims-spec",
                                  str(spec), str(claim_file))
    return result.returncode, result.stdout + result.stderr, evidence


def test_the_adding_a_claim_example_is_one_file_and_one_table_and_can_fail(tmp_path):
    """README's "Adding a claim": the file and the table, as written, make a claim that passes on the default
    model; the same claim with a threshold the model cannot reach fails with its statistic."""
    from fixtures.claims_session import DEFAULT_MODELS, SPEC_DIR

    code, table = _adding_a_claim()
    folder = tmp_path / "claims"
    folder.mkdir()
    claim_file = folder / "test_clean_margin.py"
    claim_file.write_text(code)
    default_spec = (SPEC_DIR / f"{DEFAULT_MODELS[0]}.toml").read_text()
    assert f"claims/specs/{DEFAULT_MODELS[0]}.toml" in README.read_text()
    spec = tmp_path / "spec.toml"
    spec.write_text(default_spec + "\n" + table)
    status, output, evidence = _run_claim_file(tmp_path / "holds", claim_file, spec)
    assert status == 0, output[-3000:]
    (record,) = [c for c in evidence[DEFAULT_MODELS[0]]["claims"] if c["claim_id"] == "clean-margin"]
    assert record["outcome"] == "passed" and record["statistic"] == "mean clean logit difference"

    spec.write_text(default_spec + "\n" + table.replace("min_logit_diff = 2.0", "min_logit_diff = 1000.0"))
    status, output, evidence = _run_claim_file(tmp_path / "fails", claim_file, spec)
    assert status == 1, output[-3000:]
    (record,) = [c for c in evidence[DEFAULT_MODELS[0]]["claims"] if c["claim_id"] == "clean-margin"]
    assert record["outcome"] == "failed" and record["high"] < 1000.0
    assert "CI low >= min_logit_diff = 1000: REFUTED" in output


def _claim_table() -> tuple[list[str], dict[str, list[str]]]:
    """README's table of which bundled model supports which claim: (model columns, claim id -> row cells)."""
    text = README.read_text()
    section = text[text.index("**Which bundled model supports which claim.**"):]
    lines = [line for line in section.split("\n\n", 2)[1].splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        rows[cells[0].strip("`")] = cells[1:]
    return header[1:-1], rows


def test_the_claim_table_accounts_for_every_claim_id_as_the_specs_state_it():
    """Every registered claim id has one row; a model's cell says "supported" exactly where its spec states the
    claim (each bundled spec's stated claims are all supported: its header says so, `pytest claims/ --model M`
    checks it); a claim no bundled model supports gives a measured reason (a number)."""
    import importlib
    import tomllib

    from circuit.spec import KNOWN_CLAIMS
    from fixtures.claims_session import BUNDLED_MODELS

    for path in sorted((README.parent / "claims").glob("test_*.py")):
        importlib.import_module(f"claims.{path.stem}")
    models, rows = _claim_table()
    bundled = sorted(p.parent.name for p in BUNDLED_MODELS.glob("*/config.json"))
    assert sorted(models) == bundled, f"README's claim table has columns {models}, the bundled models are {bundled}"
    assert sorted(rows) == sorted(KNOWN_CLAIMS), f"README's claim table differs from the claim ids: " \
        f"missing {sorted(set(KNOWN_CLAIMS) - set(rows))}, extra {sorted(set(rows) - set(KNOWN_CLAIMS))}"
    stated = {m: tomllib.loads((README.parent / "claims" / "specs" / f"{m}.toml").read_text()).get("claims", {})
              for m in models}
    for claim_id, cells in rows.items():
        for model, cell in zip(models, cells):
            expected = "supported" if claim_id in stated[model] else "—"
            assert cell == expected, f"{claim_id} on {model}: README says {cell!r}, the spec gives {expected!r}"
        why = cells[len(models)]
        if all(cell == "—" for cell in cells[:len(models)]):
            assert re.search(r"\d", why), f"{claim_id} is supported on no bundled model and README gives no measured reason"
        else:
            assert not why, f"{claim_id} is supported on a bundled model, but README gives a reason why not: {why}"
