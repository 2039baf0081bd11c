"""Which claim tests read which fields of their claim's spec, found in the claim modules' source.

A mutant knows what it changed (a head of layer 0, the ``layers`` of ``attn-out-by-position``); to know
which claim tests must notice, it needs which tests read that part of the spec. Claim tests are plain
functions decorated with ``@pytest.mark.claim(id=...)`` whose ``claim`` argument is the claim's spec entry, so
the fields a test reads are the ``claim.<field>`` in its body, and in the module's own functions it passes
``claim`` to (followed through). Arguments given as ``figures=`` are left out: a figure may box the named
components without the test's verdict depending on them. The source is parsed, not imported.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ClaimTest", "claim_tests"]


@dataclass(frozen=True)
class ClaimTest:
    """A claim test function and the spec fields of its claim that its verdict reads."""

    file: str
    """The module's file name (``test_named_heads.py``)."""
    name: str
    """The function's name (the ``test`` of its evidence records)."""
    claim_id: str
    reads: frozenset[str]
    """Fields of the claim's spec entry it reads (``heads``, ``top_k``)."""
    attributes: frozenset[str] = frozenset()
    """Every attribute name it reads on the way to its verdict (``sign``: it reads a stated sign)."""


def _claim_id(node: ast.FunctionDef) -> str | None:
    for decorator in node.decorator_list:
        if isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute) \
                and decorator.func.attr == "claim":
            for keyword in decorator.keywords:
                if keyword.arg == "id" and isinstance(keyword.value, ast.Constant):
                    return str(keyword.value.value)
    return None


def _reads(function: ast.FunctionDef, parameter: str, functions: dict[str, ast.FunctionDef],
           seen: set[tuple[str, str]]) -> tuple[set[str], set[str]]:
    """Fields of ``parameter`` that ``function`` reads, directly or through the module's functions; and every
    attribute name it reads on the way (``sign`` of an entry, say)."""
    if (function.name, parameter) in seen:
        return set(), set()
    seen.add((function.name, parameter))
    found: set[str] = set()
    attributes: set[str] = set()
    skipped: set[int] = set()
    for node in ast.walk(function):
        if isinstance(node, ast.keyword) and node.arg == "figures":
            skipped.update(id(n) for n in ast.walk(node.value))
    for node in ast.walk(function):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Attribute):
            attributes.add(node.attr)
            if isinstance(node.value, ast.Name) and node.value.id == parameter:
                found.add(node.attr)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in functions:
            callee = functions[node.func.id]
            names = [a.arg for a in callee.args.args]
            passed = [(names[i], a) for i, a in enumerate(node.args) if i < len(names)]
            passed += [(k.arg, k.value) for k in node.keywords if k.arg in names]
            for name, value in passed:
                if isinstance(value, ast.Name) and value.id == parameter:
                    fields, more = _reads(callee, name, functions, seen)
                    found |= fields
                    attributes |= more
    return found, attributes


def claim_tests(folder: str | Path) -> list[ClaimTest]:
    """Every claim test in ``folder``'s ``test_*.py`` modules (or in one such file), with the fields it reads."""
    folder = Path(folder)
    found = []
    for path in [folder] if folder.is_file() else sorted(folder.glob("test_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        for node in functions.values():
            claim_id = _claim_id(node)
            if claim_id is not None and node.name.startswith("test"):
                reads, attributes = _reads(node, "claim", functions, set())
                found.append(ClaimTest(path.name, node.name, claim_id, frozenset(reads), frozenset(attributes)))
    return found
