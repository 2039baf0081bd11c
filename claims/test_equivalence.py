"""Claim: TransformerLens computes the same function as the Hugging Face model.

Everything the other claims read (hooks, caches, folded weights) comes from the TransformerLens bridge;
this claim checks that the bridge's next-token probabilities equal those of a separate HF copy of the
model, on multiplication prompts and on arbitrary text. The statistic is the largest absolute
difference of probabilities over every position and token of the prompts: a maximum, not a mean, so it
has no interval; the bound comes from the spec, per dtype. In bfloat16 the HF model's own rounding moves
probabilities by tenths on a small model, so the bound is that wide and the claim catches only gross
errors there; the evidence names the dtype and its bound.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from circuit.decision import Rule
from circuit.equivalence import compare_models
from circuit.prompts import bos_token_id, tokenize_prompts
from circuit.strategies import problem_sets

STATEMENT = "TransformerLens (bridge, compatibility mode) and Hugging Face give the same next-token probabilities."


def _judge(model, claim, verdict, tokens, shown):
    atol = claim.atol.at(model.dtype)  # the bound for the dtype the model runs in
    result = compare_models(model.bridge, model.hf_model, tokens, tokenizer=model.tokenizer, atol=atol)
    dtype = str(model.dtype).removeprefix("torch.")
    rule = Rule("<=", atol, f"atol[{dtype}]", interval=False)  # an identity: no interval, no family of errors
    verdict.value("max |softmax(bridge) - softmax(HF)| over positions and tokens", result.max_abs_diff, rule,
                  shown=shown, detail=result.describe())


@pytest.mark.claim(id="hf-equivalence", statement=STATEMENT)
@given(problems=problem_sets(min_size=1, max_size=4, max_digits=9))
def test_bridge_matches_hf_on_multiplication_prompts(model, claim, verdict, problems):
    batch = tokenize_prompts(model.tokenizer, [p.prompt for p in problems])
    _judge(model, claim, verdict, batch.tokens, [p.prompt for p in problems])


@pytest.mark.claim(id="hf-equivalence", statement=STATEMENT)
@given(text=st.text(min_size=1, max_size=40))
def test_bridge_matches_hf_on_arbitrary_text(model, claim, verdict, text):
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    _judge(model, claim, verdict, torch.tensor([[bos_token_id(model.tokenizer), *ids]]), text)
