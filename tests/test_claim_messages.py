"""A failing claim's message is short, for every claim file in claims/: at most ``MAX_LINES`` lines.

The claims run as a user runs them (a pytest subprocess) on two models where each claim file has a claim test
that fails: the trained default model under a spec whose thresholds it cannot meet (refuted and inconclusive
verdicts; identities with an ``atol`` of 1e-30), and that model made blind (every attention output zeroed:
the task gate fails, and ``task-solved`` and ``task-accuracy`` are refuted). Each message must state the
statistic, its interval, the rule, the level, a one-line prompt-set summary, how to reproduce and the command
that reruns it, and nothing of hypothesis' own repr, the whole prompt set or the reproduce blob (those go to
the report). The rerun command, run, fails the same way.
"""

from __future__ import annotations

import math
import re
import shlex
import subprocess
import sys

import pytest
import test_claims_sizes as sizes
import test_claims_source_readings as readings
from test_claims_falsifiable import ROOT

from fixtures.claims_messages import MAX_LINES

COLUMNS = 200
"""A terminal line: a longer line counts as several."""
SPEC = """
[model]
match = ["qwen2-mult-2d", "no-information"]
[statistics]
level = 0.95
n_resamples = 200
[prompts]
min_size = 16
max_size = 16
min_digits = 2
max_digits = 2
corruptions = ["same_length"]
metric = "first_differing_token"
budget = 16
[claims.hf-equivalence]
atol = 1e-30
tolerance = 1
[claims.attribution-completeness]
atol = 1e-30
tolerance = 1
[claims.task-solved]
tolerance = 1
[claims.final-token-localization]
late_from_layer = 1
min_recovery = 2.0
max_other_recovery = -1.0
tolerance = 0.2
[claims.mlp-over-attention]
from_layer = 0
min_ratio = 1000.0
tolerance = 1
[claims.named-heads]
top_k = 1
tolerance = 1
heads = [
    { head = "L0H0", sign = "negative", by = ["z_patching", "attribution"] },
    { head = "L0H1", sign = "positive", by = ["z_patching", "attribution"] },
    { head = "L0H2", sign = "negative", by = ["z_patching", "attribution"] },
]
[claims.value-plus-pattern]
min_correlation = 1.0
max_residual = 0.0
tolerance = 0.1
[claims.top-head-attention]
top_k = 8
late_from_layer = 1
early_until_layer = 1
min_bos_attention = 0.99
min_normalized_entropy = 0.99
tolerance = 0.1
[claims.logit-lens-linear]
from_layer = 0
min_r2 = 1.0
min_step = 0.9
tolerance = 0.1
[claims.late-mlp-attribution]
from_layer = 1
min_mlp_share = 1.0
attention_layers = [{layer = 2, sign = "negative"}, {layer = 1, sign = "positive"}]
tolerance = 0.1
[claims.late-value-heads]
late_from_layer = 2
min_ratio = 1000.0
tolerance = 0.5
[claims.pattern-bands]
early_until_layer = 1
late_from_layer = 2
min_ratio = 1000.0
tolerance = 0.5
[claims.pattern-explains-late-heads]
late_from_layer = 1
top_k = 3
min_fraction = 1000.0
tolerance = 0.1
[claims.attn-out-by-position]
layers = [{ layer = 1, sign = "not_positive" }, { layer = 2, sign = "positive" }]
early_until_layer = 1
max_operand_fraction = 0.0
tolerance = 0.2
[claims.mlp-out-by-position]
top_k = 1
cells = [{ layer = 0, position = "a" }, { layer = 0, position = "b" }]
tolerance = 3
[claims.task-accuracy]
min_exact_match = 1.0
leading_tokens = 2
stop = true
tolerance = 0.1
"""
SPEC += sizes.FALSE.removeprefix(sizes.HEADER) + readings.FALSE.removeprefix(readings.HEADER)
"""Thresholds the default model cannot meet (or, on 16 prompts with one look, cannot be shown to meet); the nine
claim files of tests/test_claims_sizes.py and tests/test_claims_source_readings.py under those modules' false
specs."""


def failure_messages(stdout: str) -> dict[str, str]:
    """Test id (``test_x[model]``) -> the text pytest printed under its header in the FAILURES section."""
    body = stdout[stdout.index("= FAILURES ="):stdout.index("short test summary info")]
    body = "\n".join(line for line in body.splitlines() if not line.startswith("claims: "))  # the run's summary
    parts = re.split(r"^_+ (\S+) _+$", body, flags=re.M)
    return {parts[i]: parts[i + 1].strip("\n") for i in range(1, len(parts), 2)}


def screen_lines(message: str) -> int:
    """Lines the message takes on a terminal :data:`COLUMNS` wide."""
    return sum(max(1, math.ceil(len(line) / COLUMNS)) for line in message.splitlines())


@pytest.fixture(scope="module")
def failing_run(failing_claims_run):
    """``(folder, result, evidence)``: claims/ under :data:`SPEC` on the default model and its blind copy
    (tests/conftest.py, shared with tests/test_claims_head_bands.py)."""
    return failing_claims_run


def test_every_claim_file_has_a_failing_test_here(failing_run):
    _, result, _ = failing_run
    failed = {line.split("::")[0].removeprefix("FAILED claims/")
              for line in result.stdout.splitlines() if line.startswith("FAILED claims/")}
    files = {path.name for path in (ROOT / "claims").glob("test_*.py")}
    assert files and files <= failed, f"no failing test in {sorted(files - failed)}:\n{result.stdout[-3000:]}"


def test_every_failing_claims_message_is_short_and_says_what_a_person_needs(failing_run):
    _, result, _ = failing_run
    messages = failure_messages(result.stdout)
    assert len(messages) >= 40, result.stdout[-3000:]
    for test, message in messages.items():
        assert screen_lines(message) <= MAX_LINES, f"{test}: {screen_lines(message)} lines:\n{message}"
        first = message.splitlines()[0]
        assert re.search(r": .+ = \S+.* rule .+: (REFUTED|INCONCLUSIVE)\.$", first), f"{test}: {first}"
        assert re.search(r"\[\d+% CI ", first) or "Judged on the number itself" in message, message  # the level
        for part in ("\nPrompts: ", "\nJudged ", "\nReproduce: hypothesis profile 'ci' is derandomized",
                     "\nRerun: pytest 'claims/"):
            assert part in message, f"{test}: no {part.strip()!r} in\n{message}"
        for noise in ("Failing test case", "reproduce_failure", "PromptSet(", "Problem(a=", "Draw 1"):
            assert noise not in message, f"{test}: hypothesis' {noise!r} is in the message:\n{message}"


def test_the_rerun_command_fails_the_same_way(failing_run):
    tmp, result, _ = failing_run
    message = failure_messages(result.stdout)["test_clean_exceeds_corrupted_logit_difference[no-information]"]
    command = shlex.split(re.search(r"^Rerun: (.*)$", message, re.M)[1])
    assert command[0] == "pytest" and "--model" in command, command
    rerun = subprocess.run([sys.executable, "-m", *command, "-p", "no:cacheprovider", "-p", "no:html",
                            "--basetemp", str(tmp / "rerun")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert "1 failed" in rerun.stdout, rerun.stdout[-3000:]
    again = failure_messages(rerun.stdout)["test_clean_exceeds_corrupted_logit_difference[no-information]"]
    assert again.splitlines()[:2] == message.splitlines()[:2], (again, message)
