"""The bundled default model (fixtures/models/qwen2-mult-3d): its files, its tokenizer, and its accuracy.

The accuracy threshold and the held-out problems are read from the files shipped with the model
(``training_summary.json``, ``heldout.json``), written by ``fixtures/train_default_model.py``.
"""

from __future__ import annotations

import json
import math

import pytest

from fixtures.train_default_model import DEFAULT_FOLDER, TrainConfig, evaluate, is_heldout, trained_problems

FOLDER = DEFAULT_FOLDER


@pytest.fixture(scope="module")
def summary() -> dict:
    """The training summary shipped with the model. Read-only."""
    return json.loads((FOLDER / "training_summary.json").read_text())


@pytest.fixture(scope="module")
def heldout() -> dict[str, list[list[int]]]:
    """The held-out problems, per digit-count pair, shipped with the model. Read-only."""
    return json.loads((FOLDER / "heldout.json").read_text())


@pytest.fixture(scope="module")
def tokenizer():
    """The shipped tokenizer, loaded with AutoTokenizer. Read-only."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(FOLDER)


@pytest.fixture(scope="module")
def qwen_tokenizer():
    """The real Qwen2.5 tokenizer (vendored, no weights). Read-only."""
    from transformers import AutoTokenizer

    from fixtures.test_models import QWEN_FOLDER

    return AutoTokenizer.from_pretrained(QWEN_FOLDER)


@pytest.fixture(scope="module")
def loaded():
    """The model loaded exactly as the claims load any model (bridge + separate HF copy). Read-only."""
    from circuit.models import load_model

    return load_model(FOLDER, device="cpu")


def test_folder_holds_a_small_hf_qwen2_model():
    expected = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "README.md", "training_summary.json", "heldout.json"}
    present = {p.name for p in FOLDER.iterdir()}
    assert expected <= present, f"missing from {FOLDER}: {sorted(expected - present)}"
    size = sum(p.stat().st_size for p in FOLDER.iterdir())
    assert size <= 10 * 2**20, f"{FOLDER} holds {size / 2**20:.1f} MiB; the bundled model must stay under 10 MiB."
    config = json.loads((FOLDER / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert config["num_key_value_heads"] < config["num_attention_heads"], "grouped-query attention expected"
    assert len(config["layer_types"]) == config["num_hidden_layers"]


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("70620 x 99460 =", ["7", "0", "6", "2", "0", " x", " ", "9", "9", "4", "6", "0", " ="]),
        (" 7023865200", [" ", "7", "0", "2", "3", "8", "6", "5", "2", "0", "0"]),
    ],
)
def test_tokenizer_splits_the_task_one_token_per_digit(tokenizer, text, tokens):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert [tokenizer.decode([i]) for i in ids] == tokens


@pytest.mark.parametrize("text", ["123 x 456 =", " 56088", "9 x 10 =", "70620 x 99460 = 7023865200"])
def test_tokenizer_splits_the_task_as_qwen25_does(tokenizer, qwen_tokenizer, text):
    qwen = qwen_tokenizer
    ours = [tokenizer.decode([i]) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]
    theirs = [qwen.decode([i]) for i in qwen(text, add_special_tokens=False)["input_ids"]]
    assert ours == theirs


@pytest.mark.parametrize("text", ["Hello, wörld!", "日本語 🙂\n\tx  = 12\r\n", "  spaces   and\ttabs ", ""])
def test_tokenizer_round_trips_any_text(tokenizer, text):
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_tokenizer_special_tokens_are_qwen25s(tokenizer):
    assert tokenizer.bos_token is None
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer("1 x 2 =")["input_ids"] == tokenizer("1 x 2 =", add_special_tokens=False)["input_ids"]


def test_heldout_problems_follow_the_rule(heldout):
    outside = [(a, b) for problems in heldout.values() for a, b in problems if not is_heldout(a, b)]
    assert not outside, f"{len(outside)} problems in heldout.json are not held out of training: {outside[:5]}"


def test_bridge_matches_hf_copy(loaded):
    import torch

    from circuit.prompts import tokenize_prompts
    from circuit.task import make_problems

    batch = tokenize_prompts(loaded.tokenizer, [p.prompt for p in make_problems(16, 3, seed=3)])
    with torch.no_grad():
        bridge = loaded.bridge(batch.tokens).softmax(-1)
        hf = loaded.hf_model(batch.tokens).logits.softmax(-1)
    diff = (bridge - hf).abs().max().item()
    assert diff <= 1e-5, f"bridge and HF softmax differ by up to {diff:.2e} (expected <= 1e-5)"


def _below_the_card(loaded, problems: dict[str, list[list[int]]], card: dict[str, float],
                    thresholds: dict[str, float], what: str) -> dict[str, str]:
    """Measure exact match per digit count through the bridge, print it beside the card, return the misses."""
    measured = evaluate(loaded.bridge, loaded.tokenizer, problems)
    print(f"\n{loaded.label}: {what} exact match (card, threshold): " + ", ".join(
        f"{k} {r.accuracy:.3f} ({card[k]:.3f}, {thresholds[k]:.2f}) on {len(r.correct)}" for k, r in measured.items()))
    return {k: f"{r.n_correct}/{len(r.correct)} = {r.accuracy:.3f} < {thresholds[k]:.2f}"
            for k, r in measured.items() if r.accuracy < thresholds[k]}


def _floor_percent(card: dict[str, float]) -> dict[str, float]:
    return {kind: math.floor(value * 100) / 100 for kind, value in card.items()}


def test_heldout_exact_match_meets_the_card(loaded, summary, heldout):
    """Exact match through the bridge, per digit count, is at least the card's (rounded down to a percent)."""
    card = summary["heldout_accuracy"]
    thresholds = _floor_percent(card) | summary["accuracy_threshold"]
    below = _below_the_card(loaded, heldout, card, thresholds, "held-out")
    assert not below, (
        f"held-out exact match below the card's thresholds: {below}. Retrain with "
        f"`python fixtures/train_default_model.py`, or find what changed in loading or evaluation."
    )


def test_exact_match_on_the_training_distribution_meets_the_card(loaded, summary):
    """On problems training could draw (the seeded sample the card reports), exact match meets the card.

    The claims' prompts come from this distribution; with held-out exact match it tells computing from
    memorizing.
    """
    sample = trained_problems(TrainConfig(seed=summary["config"]["seed"]))
    assert {k: len(v) for k, v in sample.items()} == summary["trained_counts"]
    assert not [(a, b) for pairs in sample.values() for a, b in pairs if is_heldout(a, b)]
    card = summary["trained_accuracy"]
    below = _below_the_card(loaded, sample, card, _floor_percent(card), "training-distribution")
    assert not below, f"exact match on the training distribution below the card: {below}"


def test_exact_match_agrees_with_greedy_generation(loaded, heldout):
    """The one-pass exact match (teacher-forced argmax) gives the same verdicts as ``generate``."""
    import torch

    from circuit.evaluation import exact_match_accuracy
    from circuit.task import Problem

    problems = [Problem(a, b) for a, b in heldout["3x3"][:24] + heldout["2x3"][:8]]
    result = exact_match_accuracy(loaded.hf_model, loaded.tokenizer, problems)
    tok = loaded.tokenizer
    verdicts = []
    for problem in problems:
        prompt = torch.tensor([[tok.eos_token_id, *tok(problem.prompt, add_special_tokens=False)["input_ids"]]])
        with torch.no_grad():
            out = loaded.hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                           max_new_tokens=9, pad_token_id=tok.eos_token_id)
        text = tok.decode(out[0, prompt.shape[1]:])
        verdicts.append(text == problem.answer + tok.eos_token)
    assert list(result.correct) == verdicts
