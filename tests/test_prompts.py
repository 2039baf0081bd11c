import pytest
from hypothesis import given

from circuit.prompts import (
    CorruptionError,
    UnequalLengthError,
    check_corruption,
    corrupt_reversed,
    corrupt_same_length,
    tokenize_prompts,
)
from circuit.strategies import problem_sets, prompt_sets
from circuit.task import Problem

QWEN_PROMPT_IDS = [22, 15, 21, 17, 15, 856, 220, 24, 24, 19, 21, 15, 284]


def test_the_source_prompt_is_13_qwen_tokens(qwen_tokenizer):
    batch = tokenize_prompts(qwen_tokenizer, ["70620 x 99460 ="], prepend_bos=False)
    assert batch.tokens.tolist() == [QWEN_PROMPT_IDS]
    with_bos = tokenize_prompts(qwen_tokenizer, ["70620 x 99460 ="])
    assert with_bos.tokens.tolist() == [[151643, *QWEN_PROMPT_IDS]]
    assert with_bos.final_position.tolist() == [13]


@given(problems=problem_sets(max_digits=9))
def test_a_batch_has_equal_token_lengths_or_raises(qwen_tokenizer, problems):
    prompts = [p.prompt for p in problems] + ["1 x 1 ="]
    lengths = {len(qwen_tokenizer(p)["input_ids"]) for p in prompts}
    if len(lengths) == 1:
        batch = tokenize_prompts(qwen_tokenizer, prompts)
        assert batch.tokens.shape == (len(prompts), lengths.pop() + 1)
        assert not batch.padded
    else:
        with pytest.raises(UnequalLengthError):
            tokenize_prompts(qwen_tokenizer, prompts)


def test_unequal_lengths_name_the_prompts_and_show_their_tokens(qwen_tokenizer):
    with pytest.raises(UnequalLengthError, match=r"(?s)unequal token lengths.*'12 x 3 ='.*'Ġx'.*padding='left'"):
        tokenize_prompts(qwen_tokenizer, ["12 x 3 =", "123 x 456 ="])


def test_left_padding_puts_every_final_token_last(qwen_tokenizer):
    batch = tokenize_prompts(qwen_tokenizer, ["12 x 3 =", "123 x 456 ="], padding="left")
    final = batch.tokens[:, batch.final_position[0]]
    assert final.tolist() == [284, 284]
    assert batch.attention_mask.sum(1).tolist() == [7, 10]
    assert batch.attention_mask[0, :3].tolist() == [0, 0, 0]


@given(prompt_set=prompt_sets(corruptions=("same_length",)))
def test_same_length_corruption_keeps_digit_counts_and_changes_the_product(prompt_set):
    for clean, corrupted in zip(prompt_set.clean, prompt_set.corrupted):
        assert (len(str(clean.a)), len(str(clean.b))) == (len(str(corrupted.a)), len(str(corrupted.b)))
        assert clean.product != corrupted.product


def test_reversed_pairing_is_the_source_pairing_and_can_be_degenerate():
    clean = [Problem(12, 34), Problem(34, 12)]
    assert corrupt_reversed(clean) == [Problem(34, 12), Problem(12, 34)]
    with pytest.raises(CorruptionError, match="same product"):
        check_corruption(clean, corrupt_reversed(clean))
    assert corrupt_same_length(clean, seed=1) == corrupt_same_length(clean, seed=1)


def test_left_padded_prompts_give_the_unpadded_final_prediction(test_models):
    import torch

    model = test_models["test-qwen2-2l"]
    padded = tokenize_prompts(model.tokenizer, ["12 x 3 =", "123 x 456 ="], padding="left")
    with torch.no_grad():
        batched = model.bridge(padded.tokens, attention_mask=padded.attention_mask)
        for row, prompt in enumerate(padded.prompts):
            alone = model.bridge(tokenize_prompts(model.tokenizer, [prompt]).tokens)
            torch.testing.assert_close(batched[row, padded.final_position[row]].softmax(-1),
                                       alone[0, -1].softmax(-1), atol=1e-6, rtol=0)
