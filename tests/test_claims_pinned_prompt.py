"""The pinned-prompt claim (claims/test_pinned_prompt.py): its readings and slacks on hand-made probabilities, its
spec checks, its readings on the default model against ``answer_predictions``, and the dtype noise its drafted
tolerance must cover. (Its falsifiability, a false and a true spec on the trained model, is in
``tests/test_claims_sizes.py``, sharing that run.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from circuit.spec import SpecError, load_spec
from fixtures.claims_session import DEFAULT_MODELS
from claim_helpers import claims_module

ROOT = Path(__file__).resolve().parent.parent
CLAIMS = ROOT / "claims" / "test_pinned_prompt.py"
TEST_SPEC = ROOT / "claims" / "specs" / "test-models.toml"


pinned = claims_module(CLAIMS)
Observation = pinned.Observation


def _reading(probabilities, token_id, atol, **bounds):
    return pinned.reading(Observation("p", " 1", **bounds), torch.tensor(probabilities), token_id, atol)


def test_a_reading_ranks_its_token_and_widens_the_rank_by_the_tolerance():
    probabilities = [0.50, 0.30, 0.15, 0.05]
    exact = _reading(probabilities, 1, 0.0)
    assert (exact.probability, exact.rank, exact.best_rank, exact.worst_rank) == (pytest.approx(0.3), 2, 2, 2)
    assert exact.top[0] == ("0", pytest.approx(0.5))
    # within atol every probability may move by atol, so a gap of at most 2 atol may close
    loose = _reading(probabilities, 1, 0.11)  # 0.5 may fall below 0.3 (gap 0.2), 0.15 may rise above it (gap 0.15)
    assert (loose.rank, loose.best_rank, loose.worst_rank) == (2, 1, 3)
    looser = _reading(probabilities, 1, 0.08)  # only the gap of 0.15 closes
    assert (looser.best_rank, looser.worst_rank) == (2, 3)
    assert (_reading(probabilities, 1, 0.07).best_rank, _reading(probabilities, 1, 0.07).worst_rank) == (2, 2)
    tied = _reading([0.4, 0.4, 0.2], 0, 0.0)
    assert tied.rank == 2  # ties count against the token


def test_probability_slack_is_the_smallest_distance_inside_the_stated_ranges_within_atol():
    readings = [_reading([0.84, 0.16], 0, 0.001, min_probability=0.8, max_probability=0.9),
                _reading([0.26, 0.74], 1, 0.001, min_probability=0.7),
                _reading([0.26, 0.74], 0, 0.001, max_rank=2)]  # no probability stated: left out
    interval = pinned.probability_slack(readings, 0.001)
    assert float(interval.estimate) == pytest.approx(0.04)  # 0.84 - 0.8 and 0.74 - 0.7
    assert (float(interval.low), float(interval.high)) == (pytest.approx(0.039), pytest.approx(0.041))
    outside = pinned.probability_slack([_reading([0.84, 0.16], 0, 0.0, max_probability=0.5)], 0.0)
    assert float(outside.high) == pytest.approx(-0.34)
    with pytest.raises(ValueError, match="no observation states a probability"):
        pinned.probability_slack(readings[2:], 0.001)


@pytest.mark.parametrize(("probabilities", "bounds", "verdict"), [
    ([0.6, 0.3, 0.1], {"max_rank": 1}, "supported"),
    ([0.3, 0.6, 0.1], {"max_rank": 1}, "refuted"),
    ([0.3, 0.6, 0.1], {"min_rank": 2, "max_rank": 2}, "supported"),
    ([0.51, 0.49, 0.0], {"max_rank": 1}, "inconclusive"),  # within 0.02 the two may swap
    ([0.6, 0.3, 0.1], {"min_probability": 0.595}, "inconclusive"),  # 0.6 is within atol of its bound
])
def test_a_pinned_reading_is_supported_refuted_or_inconclusive_by_its_tolerance(probabilities, bounds, verdict):
    from circuit.decision import Rule

    r = _reading(probabilities, 0, 0.01, **bounds)
    slack = pinned.probability_slack([r], 0.01) if "min_probability" in bounds else pinned.rank_slack([r])
    assert str(Rule(">=", 0).verdict(slack)) == verdict, slack


SPEC_TABLE = """
[claims.pinned-prompt]
tolerance = 0.05
atol = {{float32 = 1e-4, bfloat16 = 0.01, float16 = 0.001}}
observations = [{{ prompt = "68 x 44 =", answer = " 2992"{rest} }}]
"""


@pytest.mark.parametrize(("rest", "message"), [
    ("", r"observations\[0\]: states no probability or rank"),
    (", min_probability = 0.9, max_probability = 0.8", r"min_probability = 0\.9 is above max_probability = 0\.8"),
    (", max_probability = 1.2", r"max_probability\] is 1\.2, but a fraction lies in \[0, 1\]"),
    (", max_rank = 0", r"max_rank\] is 0, but a rank lies in \[1, inf\]"),
    (", answer_token = -1, max_rank = 1", r"answer_token: is -1"),
])
def test_a_pinned_prompt_spec_that_cannot_hold_is_refused_at_load(tmp_path, rest, message):
    path = tmp_path / "spec.toml"
    path.write_text(TEST_SPEC.read_text() + SPEC_TABLE.format(rest=rest))
    with pytest.raises(SpecError, match=message):
        load_spec(path)


@pytest.fixture(scope="module")
def default_model():
    from circuit.models import load_model

    return load_model(ROOT / "fixtures" / "models" / DEFAULT_MODELS[0], device="cpu", with_hf_reference=False)


def test_readings_on_the_default_model_agree_with_the_task_s_teacher_forced_ranks(default_model):
    from circuit.evaluation import answer_predictions
    from circuit.task import Problem

    problem = Problem(68, 44)
    (prediction,) = answer_predictions(default_model.bridge, default_model.tokenizer, [problem], require_stop=False)
    for index, rank in enumerate(prediction.rank):
        r = pinned.read(default_model, Observation(problem.prompt, problem.answer, index, max_rank=1), 0.0)
        assert r.rank == rank and r.token == default_model.tokenizer.decode([prediction.expected[index]])
    other = pinned.read(default_model, Observation(problem.prompt, problem.answer, 2, token="8", min_rank=2), 0.0)
    assert other.token == "8" and other.rank > 1


def test_a_bad_observation_is_refused_in_one_line_naming_it(default_model):
    with pytest.raises(ValueError, match=r"'68 x 44 =' \+ ' 2992', answer token 9 .*: the answer has 5 tokens .*; "
                                         r"use answer_token 0\.\.4\."):
        pinned.read(default_model, Observation("68 x 44 =", " 2992", 9, max_rank=1), 0.0)
    with pytest.raises(ValueError, match=r"token '12' is 2 tokens \['1', '2'\]; name exactly one token\."):
        pinned.read(default_model, Observation("68 x 44 =", " 2992", 0, token="12", max_rank=1), 0.0)


def test_the_drafted_tolerance_covers_the_default_model_s_low_precision_noise(default_model):
    """The probabilities of every answer token of 40 problems, in bfloat16 and float16, move from float32 by less
    than the drafted ``atol`` of that dtype (measured: about 7e-4 and 6e-5)."""
    from circuit.evaluation import teacher_forced_probabilities
    from circuit.models import load_model

    problems = [(a, b) for a in range(12, 99, 17) for b in range(10, 99, 13)][:40]
    for dtype in ("bfloat16", "float16"):
        low = load_model(ROOT / "fixtures" / "models" / DEFAULT_MODELS[0], device="cpu", dtype=dtype,
                         with_hf_reference=False)
        worst = 0.0
        for a, b in problems:
            args = (f"{a} x {b} =", f" {a * b}")
            _, reference = teacher_forced_probabilities(default_model.bridge, default_model.tokenizer, *args)
            _, rounded = teacher_forced_probabilities(low.bridge, low.tokenizer, *args)
            worst = max(worst, float((rounded - reference).abs().max()))
        assert 0 < worst < pinned.DRAFT_ATOL.at(dtype), (dtype, worst)


def test_a_judgement_on_an_interval_not_over_prompts_says_how_it_was_made():
    from circuit.decision import Judgement, Look, Rule, Scheme

    rule = Rule(">=", 0)
    value = pinned._interval(-0.5, -0.6, -0.4)
    judged = Judgement(rule, Scheme(0.05, n_sets=3), (Look(1, value, rule.verdict(value)),), bound="the value +- 0.1")
    text = judged.explain("slack")
    assert "REFUTED" in text and "Judged on an interval that is not over prompts: the value +- 0.1." in text
    assert "prompt set(s)" not in text
