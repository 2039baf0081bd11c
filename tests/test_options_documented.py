"""Every option of the plugin sits in a named group of ``pytest --help`` and is in README's options table, with
every value it accepts.

``pytest --help`` is run as a user runs it (a subprocess in the root folder); its circuit-claims groups are
read from the text, and README's table (``### Options``) from the Markdown.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ("model", "spec", "verdicts", "baselines", "report")


@pytest.fixture(scope="module")
def help_groups() -> dict[str, dict[str, list[str]]]:
    """Group -> option -> accepted values (argparse's ``{a,b}``; [] for a free value or a flag), from --help."""
    text = subprocess.run([sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "200"}).stdout
    groups: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in text.splitlines():
        heading = re.match(r"circuit-claims, (\w+): .*:$", line)
        if heading:
            current = groups.setdefault(heading[1], {})
        elif line and not line.startswith(" "):
            current = None
        elif current is not None and (option := re.match(r"  (--[\w-]+)(?:=\{([^}]*)\})?", line)):
            current[option[1]] = option[2].split(",") if option[2] else []
    return groups


def readme_options() -> dict[str, tuple[str, str]]:
    """Option -> (group, accepted values) from README's ``### Options`` table."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Options"):]
    section = section[:section.index("\n### ", 5)]
    rows = re.findall(r"^\| (\w+) \| `(--[\w-]+)[^`]*` \| (.*) \|$", section, re.M)
    return {option: (group, values) for group, option, values in rows}


def test_the_plugins_options_sit_in_five_named_groups(help_groups):
    assert tuple(help_groups) == GROUPS, f"--help shows the groups {list(help_groups)}"
    assert {"--model", "--dtype", "--device", "--revision"} <= set(help_groups["model"])
    assert set(help_groups["baselines"]) == {"--baseline", "--baseline-missing", "--baseline-model",
                                             "--update-baseline"}
    assert set(help_groups["report"]) == {"--claims-reports", "--claims-progress"}
    every = [option for options in help_groups.values() for option in options]
    assert all(o.startswith(("--claims", "--model", "--baseline", "--update-baseline", "--device", "--dtype",
                             "--revision", "--trust-remote-code")) for o in every), every


def undocumented(help_groups: dict[str, dict[str, list[str]]], documented: dict[str, tuple[str, str]]) -> list[str]:
    """What README's table gets wrong about the options --help shows (empty when it documents them all)."""
    problems = []
    for group, options in help_groups.items():
        for option, choices in options.items():
            if option not in documented:
                problems.append(f"README's options table lacks {option}")
                continue
            if documented[option][0] != group:
                problems.append(f"README puts {option} in {documented[option][0]}, --help in {group}")
            missing = [c for c in choices if f"`{c}`" not in documented[option][1]]
            if missing:
                problems.append(f"README does not name the values {missing} of {option}")
    shown = {o for options in help_groups.values() for o in options}
    problems += [f"README documents {o}, which --help does not have" for o in sorted(set(documented) - shown)]
    return problems


def test_every_option_is_in_readme_with_its_group_and_every_value_it_accepts(help_groups):
    assert undocumented(help_groups, readme_options()) == []


def test_every_dtype_the_loader_accepts_is_in_the_help_and_in_readme():
    from circuit.models import _DTYPES
    from fixtures.plugin import DTYPE_NAMES

    assert sorted(DTYPE_NAMES) == sorted(_DTYPES), "--dtype's help and the loader accept different names"
    row = readme_options()["--dtype"][1]
    assert [name for name in DTYPE_NAMES if f"`{name}`" not in row] == []


def test_the_check_fails_on_a_readme_that_leaves_out_an_option_or_a_value(help_groups):
    documented = readme_options()
    without_value = {**documented, "--claims-progress": ("report", documented["--claims-progress"][1].replace("`off`", ""))}
    assert undocumented(help_groups, without_value) == ["README does not name the values ['off'] of --claims-progress"]
    without_option = {k: v for k, v in documented.items() if k != "--claims-progress"}
    assert undocumented(help_groups, without_option) == ["README's options table lacks --claims-progress"]
    misplaced = {**documented, "--dtype": ("spec", documented["--dtype"][1])}
    assert undocumented(help_groups, misplaced) == ["README puts --dtype in spec, --help in model"]
