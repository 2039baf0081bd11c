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
