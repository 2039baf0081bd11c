import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from circuit.metrics import (
    LogitDiffMetric,
    MetricShapeError,
    answer_token_ids,
    check_per_prompt,
    first_token_logit_diff,
    seed_logit_diff,
    teacher_forced_logprob_diff,
)
from circuit.prompts import tokenize_prompts
from circuit.stats import NonFiniteError
from circuit.strategies import prompt_sets
from circuit.task import Problem

V = 151936


def test_the_source_answer_tokens(qwen_tokenizer):
    assert answer_token_ids(qwen_tokenizer, " 7023865200") == [220, 22, 15, 17, 18, 23, 21, 20, 17, 15, 15]
    assert answer_token_ids(qwen_tokenizer, 7023865200) == [220, 22, 15, 17, 18, 23, 21, 20, 17, 15, 15]


@pytest.mark.parametrize("bad", [" 12a", "12", " -5", " ", " 1 2", 3.5])
def test_an_answer_that_is_not_a_number_is_refused(qwen_tokenizer, bad):
    with pytest.raises(ValueError, match="is not a number"):
        answer_token_ids(qwen_tokenizer, bad)


def test_seed_metric_on_hand_built_logits(qwen_tokenizer):
    # Correct ' 12' -> [BOS, 220, 16, 17]; incorrect ' 3' -> [BOS, 220, 18] padded with token 0.
    problems, incorrect = [Problem(3, 4)], [3]
    batch = tokenize_prompts(qwen_tokenizer, [problems[0].prompt])
    metric = seed_logit_diff(qwen_tokenizer, batch, problems, incorrect)
    assert metric.correct.tolist() == [[151643, 220, 16, 17]]
    assert metric.incorrect.tolist() == [[151643, 220, 18, 0]]
    logits = torch.zeros(1, batch.tokens.shape[1], V)
    final = batch.tokens.shape[1] - 1
    logits[0, final, 16] = 2.0   # '1'
    logits[0, final, 17] = 5.0   # '2'
    logits[0, final, 18] = 1.0   # '3'
    logits[0, final, 0] = -3.0   # '!' (the padding token)
    logits[0, final - 1, 16] = 100.0  # another position: never read
    # slots: BOS-BOS 0, ' '-' ' 0, '1'-'3' = 1, '2'-'!' = 8; mean over 4 slots = 9/4
    assert metric(logits).tolist() == [pytest.approx(9 / 4)]


@given(prompt_set=prompt_sets(max_size=3, max_digits=3), seed=st.integers(0, 1000))
def test_swapping_correct_and_incorrect_negates_each_metric(qwen_tokenizer, prompt_set, seed):
    generator = torch.Generator().manual_seed(seed)
    clean, wrong = list(prompt_set.clean), list(prompt_set.incorrect)
    batch = tokenize_prompts(qwen_tokenizer, [p.prompt for p in clean])
    seed_metric = seed_logit_diff(qwen_tokenizer, batch, clean, wrong)
    logits = torch.randn(len(clean), batch.tokens.shape[1], V, generator=generator)
    torch.testing.assert_close(seed_metric.swapped()(logits), -seed_metric(logits))

    forced = teacher_forced_logprob_diff(qwen_tokenizer, clean, wrong)
    logits = torch.randn(*forced.tokens.shape, V, generator=generator)
    torch.testing.assert_close(forced.metric.swapped()(logits), -forced.metric(logits))

    try:
        first = first_token_logit_diff(qwen_tokenizer, clean, wrong)
    except ValueError:
        return  # an incorrect answer that only extends the correct one has no differing token
    logits = torch.randn(*first.tokens.shape, V, generator=generator)
    torch.testing.assert_close(first.metric.swapped()(logits), -first.metric(logits))


def test_teacher_forced_metric_scores_each_answer_token_after_its_prefix(qwen_tokenizer):
    problems, incorrect = [Problem(3, 4)], [13]
    inputs = teacher_forced_logprob_diff(qwen_tokenizer, problems, incorrect)
    prompt = tokenize_prompts(qwen_tokenizer, ["3 x 4 ="]).tokens[0].tolist()
    assert inputs.tokens[0].tolist() == prompt + [220, 16, 17]
    assert inputs.tokens[1].tolist() == prompt + [220, 16, 18]
    logits = torch.zeros(*inputs.tokens.shape, V, dtype=torch.float64)
    n = len(prompt)
    logits[0, n + 1, 17] = 3.0  # after ' 1' the correct row predicts '2' more strongly
    logp_row0 = 3.0 - torch.logsumexp(logits[0, n + 1], -1)
    logp_other = -torch.log(torch.tensor(float(V), dtype=torch.float64))
    expected = (2 * logp_other + logp_row0) - 3 * logp_other
    assert inputs.metric(logits).item() == pytest.approx(expected.item(), abs=1e-5)


def test_first_token_metric_reads_after_the_common_prefix(qwen_tokenizer):
    inputs = first_token_logit_diff(qwen_tokenizer, [Problem(3, 4)], [13])  # ' 12' vs ' 13'
    assert inputs.tokens[0].tolist()[-2:] == [220, 16]
    assert inputs.metric.correct.tolist() == [[17]] and inputs.metric.incorrect.tolist() == [[18]]


def test_incorrect_equal_to_correct_is_refused(qwen_tokenizer):
    batch = tokenize_prompts(qwen_tokenizer, ["3 x 4 ="])
    with pytest.raises(ValueError, match="equals the correct product"):
        seed_logit_diff(qwen_tokenizer, batch, [Problem(3, 4)], [12])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_logits_that_are_not_finite_are_refused(qwen_tokenizer, bad):
    batch = tokenize_prompts(qwen_tokenizer, ["3 x 4 ="])
    metric = seed_logit_diff(qwen_tokenizer, batch, [Problem(3, 4)], [13])
    logits = torch.zeros(1, batch.tokens.shape[1], V)
    logits[0, 0, 7] = bad
    with pytest.raises(NonFiniteError, match=r"^The logits are not finite: \d NaN and \d infinite of \d+ \(shape "
                                             r"\(1, \d+, \d+\), first at index \(0, 0, 7\)\): the model diverged"):
        metric(logits)


class ThreeValues(LogitDiffMetric):
    """A broken metric: three values, whatever the batch."""

    def score(self, selected):
        return super().score(selected)[:3]


def test_a_metric_must_return_one_value_per_prompt(qwen_tokenizer):
    problems = [Problem(10 + i, 23) for i in range(8)]
    batch = tokenize_prompts(qwen_tokenizer, [p.prompt for p in problems])
    good = seed_logit_diff(qwen_tokenizer, batch, problems, [p.product + 1 for p in problems])
    logits = torch.randn(8, batch.tokens.shape[1], V)
    assert good(logits).shape == (8,) and good.n_prompts == 8
    broken = ThreeValues(good.positions, good.correct, good.incorrect, good.weights)
    with pytest.raises(MetricShapeError, match=r"^The metric ThreeValues returned shape \(3,\) for a batch of 8 "
                                               r"prompts: a metric returns one value per prompt, shape \(8,\)"):
        broken(logits)
    with pytest.raises(MetricShapeError, match=r"The lab's metric returned shape \(8, 1\) for a batch of 8"):
        check_per_prompt(torch.zeros(8, 1), 8, "The lab's metric")


def test_the_teacher_forced_metric_counts_two_rows_per_prompt(qwen_tokenizer):
    problems = [Problem(12, 34), Problem(56, 78), Problem(90, 12)]
    inputs = teacher_forced_logprob_diff(qwen_tokenizer, problems, [p.product + 1 for p in problems])
    assert inputs.tokens.shape[0] == 6 and inputs.metric.n_prompts == 3
    assert inputs.metric(torch.randn(6, inputs.tokens.shape[1], V)).shape == (3,)
