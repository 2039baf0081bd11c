import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from circuit.strategies import problems
from circuit.task import PERTURBATIONS, Problem, make_problems, perturb, perturbations


@given(answer=st.integers(0, 10**18))
def test_a_perturbation_is_never_the_answer_nor_negative(answer):
    for name, value in perturbations(answer).items():
        assert value != answer, name
        assert value >= 0, name


@given(problem=problems())
def test_perturb_draws_a_wrong_answer(problem):
    assert perturb(problem.product, random.Random(0)) != problem.product


def test_the_twelve_perturbations_of_the_source():
    assert len(PERTURBATIONS) == 12
    assert perturbations(7023865200) == {
        "plus_1": 7023865201, "minus_1": 7023865199, "plus_10": 7023865210, "minus_10": 7023865190,
        "double": 14047730400, "halve": 3511932600, "reverse_digits": 25683207, "sort_digits": 2235678,
        "rotate_left": 238652007, "rotate_right": 702386520, "digits_plus_1": 8134976311,
        "digits_minus_1": 6912754199,
    }


def test_degenerate_perturbations_are_dropped():
    assert "reverse_digits" not in perturbations(12321)  # palindrome
    assert "sort_digits" not in perturbations(1234)  # already sorted
    assert "rotate_left" not in perturbations(777)
    assert "minus_10" not in perturbations(5)  # negative


@pytest.mark.parametrize("n_digits", range(1, 10))
def test_problems_have_the_asked_digit_counts_and_both_orders(n_digits):
    drawn = make_problems(6, n_digits, seed=3)
    assert all(len(str(p.a)) == n_digits and len(str(p.b)) == n_digits for p in drawn)
    assert drawn[1] == drawn[0].swapped()
    assert drawn == make_problems(6, n_digits, seed=3)


def test_the_source_prompt_format():
    p = Problem(70620, 99460)
    assert (p.prompt, p.answer) == ("70620 x 99460 =", " 7023865200")


@pytest.mark.parametrize("bad", [0, 10, -1, 2.5, "5", True])
def test_digits_out_of_range_are_refused(bad):
    with pytest.raises(ValueError, match=r"out of range: operands have 1 to 9 digits"):
        make_problems(2, bad)


def test_odd_count_with_both_orders_is_refused():
    with pytest.raises(ValueError, match="even n"):
        make_problems(3, 2)


def test_perturbations_of_a_non_number_are_refused():
    with pytest.raises(ValueError, match="not a non-negative integer"):
        perturbations("12")  # type: ignore[arg-type]
