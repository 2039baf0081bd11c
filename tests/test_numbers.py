"""circuit/numbers.py: never so few digits that an interval seems to contain its own bound."""

from __future__ import annotations

from circuit.numbers import digits_apart, interval_text, number


def test_the_issues_example_prints_the_bound_apart_from_the_threshold():
    # the true upper bound was 0.9999935 against "CI high >= 1": four digits print it as 1
    assert f"{0.9999935:.4g}" == "1"
    text = interval_text(0.9999912, 0.9999874, 0.9999935, level=0.97, against=[1.0])
    assert text == "0.999991 [97% CI 0.999987, 0.999993]"  # six digits tell them apart
    assert "1]" not in text and ", 1" not in text


def test_four_digits_when_they_tell_the_numbers_apart():
    assert interval_text(0.1971, 0.15623, 0.22104, level=0.98, against=[0.99]) == "0.1971 [98% CI 0.1562, 0.221]"
    assert interval_text(3.0) == "3"
    assert number(None) == "—" and number(float("nan")) == "nan"


def test_equal_numbers_may_print_alike_and_different_ones_never_do():
    assert interval_text(1.0, 1.0, 1.0, against=[1.0]) == "1 [1, 1]"  # really equal: nothing to tell apart
    assert digits_apart([0.123456789, 0.123456788]) == 9
    assert digits_apart([1.0], against=[1.0 + 2**-52]) == 17  # the last float before 2 digits differ
    assert digits_apart([float("inf"), float("nan"), None, "x"], against=[1]) == 4  # nothing finite to compare


def test_the_estimate_is_told_apart_from_its_interval_ends():
    assert interval_text(0.50001, 0.5, 0.6) == "0.50001 [0.5, 0.6]"
