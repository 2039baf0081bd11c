import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from circuit.metrics import (
    answer_token_ids,
    first_token_logit_diff,
    seed_logit_diff,
    teacher_forced_logprob_diff,
)
from circuit.prompts import tokenize_prompts
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


def test_nan_logits_are_refused(qwen_tokenizer):
    batch = tokenize_prompts(qwen_tokenizer, ["3 x 4 ="])
    metric = seed_logit_diff(qwen_tokenizer, batch, [Problem(3, 4)], [13])
    logits = torch.zeros(1, batch.tokens.shape[1], V)
    logits[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        metric(logits)
