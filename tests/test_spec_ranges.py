"""Spec values that can never decide are spec errors (issue 21, case 5): non-finite numbers, thresholds outside
their statistic's range (``circuit.spec.Range``: ``Correlation``, ``Fraction``, ``Rank``), a head listed twice
with different signs, ``match`` given as a string, and sizes whose memory no machine has."""

from __future__ import annotations

from pathlib import Path

import pytest

from circuit.spec import KNOWN_CLAIMS, SpecError, find_spec, import_claims, load_spec

MINIMAL = """
[model]
match = ["tiny"]
[statistics]
level = 0.95
n_resamples = 200
[prompts]
min_size = 6
max_size = 8
min_digits = 2
max_digits = 3
corruptions = ["same_length"]
"""

RANGED_CLAIM = '''
from dataclasses import dataclass

from circuit.spec import ClaimSpec, Correlation, Fraction, Rank, register_claim


@register_claim("user-ranged-claim")
@dataclass(frozen=True)
class UserRanged(ClaimSpec):
    min_correlation: Correlation
    """A correlation threshold."""
    min_share: Fraction
    """A fraction threshold."""
    top_k: Rank
    """A rank threshold."""
    min_exact: Fraction | None = None
    """An optional fraction threshold."""
'''
TABLE = "[claims.user-ranged-claim]\ntolerance = 0.1\nmin_correlation = 0.5\nmin_share = 0.5\ntop_k = 3\n"


def line_of(field: str) -> str | None:
    return next((line for line in TABLE.splitlines() if line.startswith(f"{field} =")), None)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


@pytest.fixture
def ranged_claim(tmp_path):
    """A claim module declaring 'user-ranged-claim', whose fields carry the ranges of their statistics."""
    folder = tmp_path / "userclaims"
    folder.mkdir()
    (folder / "test_user_ranged.py").write_text(RANGED_CLAIM)
    import_claims(folder)
    yield
    KNOWN_CLAIMS.pop("user-ranged-claim", None)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_tolerance_or_threshold_is_a_spec_error(tmp_path, ranged_claim, value):
    assert load_spec(write(tmp_path, MINIMAL + TABLE)).claims["user-ranged-claim"].top_k == 3
    with pytest.raises(SpecError, match=rf"\[claims\.user-ranged-claim\.tolerance\] must be a finite number, got "
                                        rf"{value.replace('+', '')}"):
        load_spec(write(tmp_path, MINIMAL + TABLE.replace("tolerance = 0.1", f"tolerance = {value}")))
    table = "[claims.value-plus-pattern]\ntolerance = 0.1\nmin_correlation = 0.5\nmax_residual = 0.4\n"
    with pytest.raises(SpecError, match=r"\[claims\.value-plus-pattern\.max_residual\] must be a finite number"):
        load_spec(write(tmp_path, MINIMAL + table.replace("max_residual = 0.4", f"max_residual = {value}")))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("min_correlation", "1.2", r"min_correlation\] is 1\.2, but a correlation lies in \[-1, 1\]"),
    ("min_correlation", "-1.5", r"min_correlation\] is -1\.5, but a correlation lies in \[-1, 1\]"),
    ("min_share", "1.01", r"min_share\] is 1\.01, but a fraction lies in \[0, 1\]"),
    ("top_k", "0", r"top_k\] is 0, but a rank lies in \[1, inf\]"),
    ("min_exact", "2.0", r"min_exact\] is 2, but a fraction lies in \[0, 1\]"),
], ids=["correlation-above-1", "correlation-below-minus-1", "fraction-above-1", "rank-below-1", "optional-fraction"])
def test_a_threshold_outside_its_statistics_range_is_a_spec_error_naming_the_range(tmp_path, ranged_claim, field,
                                                                                   value, message):
    old = line_of(field)
    table = TABLE.replace(old, f"{field} = {value}") if old else TABLE + f"{field} = {value}\n"
    with pytest.raises(SpecError, match=r"\[claims\.user-ranged-claim\." + message):
        load_spec(write(tmp_path, MINIMAL + table))


def test_the_library_claims_carry_their_ranges(tmp_path):
    table = "[claims.value-plus-pattern]\ntolerance = 0.1\nmin_correlation = 1.2\nmax_residual = 0.4\n"
    with pytest.raises(SpecError, match=r"min_correlation\] is 1\.2, but a correlation lies in \[-1, 1\]"):
        load_spec(write(tmp_path, MINIMAL + table))
    table = ("[claims.top-head-attention]\ntolerance = 0.1\ntop_k = 4\nlate_from_layer = 1\nearly_until_layer = 1\n"
             "min_bos_attention = 1.5\nmin_normalized_entropy = 0.5\n")
    with pytest.raises(SpecError, match=r"min_bos_attention\] is 1\.5, but a fraction lies in \[0, 1\]"):
        load_spec(write(tmp_path, MINIMAL + table))


def test_a_head_listed_twice_with_opposite_signs_is_a_spec_error(tmp_path):
    table = ('[claims.named-heads]\ntolerance = 1\ntop_k = 4\nheads = [{ head = "L1H0", sign = "positive", by = '
             '["z_patching"] }, { head = "L0H1", sign = "any", by = ["z_patching"] }, { head = "L1H0", sign = '
             '"negative", by = ["attribution"] }]\n')
    with pytest.raises(SpecError, match=r"\[claims\.named-heads\.heads\[2\]\] L1H0 is listed twice with different "
                                        r"signs \(heads\[0\]: 'positive', heads\[2\]: 'negative'\)"):
        load_spec(write(tmp_path, MINIMAL + table))


def test_match_given_as_a_string_is_a_spec_error(tmp_path):
    text = MINIMAL.replace('match = ["tiny"]', 'match = "tiny"')
    with pytest.raises(SpecError, match=r"\[model\.match\] must be a list"):
        load_spec(write(tmp_path, text))
    with pytest.raises(SpecError, match=r"spec\.toml: \[model\.match\] must be a list of names, e\.g\. match = "
                                        r"\[\"tiny\"\], got the string 'tiny'"):
        find_spec("t", tmp_path)  # by its characters, 't' would have matched


@pytest.mark.parametrize(("old", "new", "message"), [
    ("n_resamples = 200", "n_resamples = 10000000", r"\[statistics\.n_resamples\] is 10000000, more than 100000: .* "
                                                    r"int64 \(610 MiB\).* resamples 100\.1 GiB of float32"),
    ("max_size = 8", "max_size = 100000", r"\[prompts\.max_size\] is 100000, more than 4096: .*vocabulary in "
                                          r"float32 \(566\.0 GiB\)"),
], ids=["n_resamples", "max_size"])
def test_sizes_beyond_any_memory_are_spec_errors_naming_the_memory(tmp_path, old, new, message):
    with pytest.raises(SpecError, match=message):
        load_spec(write(tmp_path, MINIMAL.replace(old, new)))
