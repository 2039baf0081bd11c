"""The task-accuracy claim: its statistics on hand-made predictions, and a run on a model that cannot multiply.

``answer_predictions`` is checked on a fake model whose logits are set by hand (the ranks and argmaxes are
known); the claim itself runs in a pytest subprocess on the random-weight ``test-qwen2-2l``, where greedy
decoding writes no product, with a spec that says it does: both tests must fail, with the fraction measured.
"""

from __future__ import annotations

import pytest
import torch
from test_claims_falsifiable import run_claims, verdicts

from circuit.evaluation import answer_predictions
from circuit.task import Problem

SPEC = """
[model]
match = ["test-qwen2-2l"]
[statistics]
level = 0.95
n_resamples = 200
[prompts]
min_size = 6
max_size = 6
min_digits = 2
max_digits = 2
corruptions = ["same_length"]
[claims.task-accuracy]
tolerance = 0.1
min_exact_match = 0.5
min_leading_top1 = 0.5
"""


class FixedLogits(torch.nn.Module):
    """Predicts, at every position, the logits ``scores`` (one row per position, vocabulary = len(row))."""

    def __init__(self, scores: torch.Tensor) -> None:
        super().__init__()
        self.scores = scores

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.scores[: tokens.shape[1]].expand(tokens.shape[0], -1, -1)


class DigitTokenizer:
    """Token id = the character's digit (0-9), ' ' = 10, 'x' = 11, '=' = 12; EOS 13."""

    eos_token_id = pad_token_id = 13
    bos_token_id = None

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        ids = {" ": 10, "x": 11, "=": 12}
        return {"input_ids": [int(c) if c.isdigit() else ids[c] for c in text]}


def test_answer_predictions_give_the_rank_of_every_answer_token():
    # "2 x 3 =" -> BOS 2 ' ' x ' ' 3 ' ' = (8 tokens), answer " 6" + EOS read at positions 7, 8, 9.
    scores = torch.zeros(10, 14)
    scores[7, 10] = 5.0   # ' ' is the argmax: rank 1
    scores[8, 6] = 1.0    # '6' ties with nothing above it...
    scores[8, 4] = 2.0    # ...but '4' is higher: '6' has rank 2
    scores[9, 13] = 3.0   # EOS first: rank 1
    (prediction,) = answer_predictions(FixedLogits(scores), DigitTokenizer(), [Problem(2, 3)])
    assert prediction.expected == (10, 6, 13)
    assert prediction.predicted == (10, 4, 13)
    assert prediction.rank == (1, 2, 1)
    assert not prediction.correct and prediction.first_error == 1


def test_ties_count_against_the_correct_token():
    scores = torch.zeros(10, 14)  # every token tied at every position
    (prediction,) = answer_predictions(FixedLogits(scores), DigitTokenizer(), [Problem(2, 3)])
    assert prediction.rank == (14, 14, 14)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("task-accuracy")
    (tmp / "spec.toml").write_text(SPEC)
    return run_claims(tmp, "claims/test_task_accuracy.py", "--claims-spec", str(tmp / "spec.toml"),
                      "--model", "test-qwen2-2l", "-p", "no:html")


def test_a_model_that_cannot_multiply_fails_task_accuracy(run):
    result, evidence = run
    claims = verdicts(evidence["test-qwen2-2l"])
    exact = claims["test_greedy_decoding_writes_the_product"]
    assert exact["outcome"] == "failed", result.stdout[-3000:]
    assert exact["statistic"] == "fraction of prompts answered exactly by greedy decoding"
    assert exact["high"] < 0.5
    leading = claims["test_the_leading_answer_tokens_are_the_top_prediction"]
    assert leading["outcome"] == "failed", result.stdout[-3000:]
    assert leading["high"] < 0.5


def test_a_spec_stating_neither_number_is_refused(tmp_path):
    from circuit.spec import SpecError, import_claims, load_spec

    import_claims("claims")
    path = tmp_path / "spec.toml"
    path.write_text(SPEC.replace("min_exact_match = 0.5\nmin_leading_top1 = 0.5\n", ""))
    with pytest.raises(SpecError, match=r"\[claims\.task-accuracy\] states neither min_exact_match nor "
                                        r"min_leading_top1"):
        load_spec(path)
    path.write_text(SPEC.replace("min_exact_match = 0.5", "min_exact_match = 1.5"))
    with pytest.raises(SpecError, match=r"min_exact_match\] is 1.5, but a fraction lies in \[0, 1\]"):
        load_spec(path)
