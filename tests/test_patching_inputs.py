"""Patching's inputs (issue 21, case 6): any plain metric of the logits works, including one that calls our
metrics or checks its input's finiteness; bad inputs are one clear ``ValueError`` each."""

from __future__ import annotations

import math
import random

import pytest
import torch

from circuit.metrics import seed_logit_diff
from circuit.patching import activation_patch, attribution_patch
from circuit.prompts import corrupt_same_length, tokenize_prompts
from circuit.task import make_problems, perturb


@pytest.fixture(scope="module")
def tiny(test_model_folder):
    """``(bridge, clean tokens, corrupted tokens, metric)`` of the tiny test model on 4 fixed problems."""
    from circuit.models import load_model

    loaded = load_model(test_model_folder("test-qwen2-2l"), device="cpu")
    problems = make_problems(4, 2, seed=0, both_orders=False)
    rng = random.Random(0)
    clean = tokenize_prompts(loaded.tokenizer, [p.prompt for p in problems])
    corrupted = tokenize_prompts(loaded.tokenizer, [p.prompt for p in corrupt_same_length(problems, seed=1)])
    metric = seed_logit_diff(loaded.tokenizer, clean, problems, [perturb(p.product, rng) for p in problems])
    return loaded.bridge, clean.tokens, corrupted.tokens, metric


@pytest.mark.parametrize("wrap", ["calls-our-metric", "checks-finiteness"])
def test_a_plain_metric_that_wraps_ours_or_checks_its_input_gives_the_structured_result(tiny, wrap):
    bridge, clean, corrupted, metric = tiny

    def plain(logits):
        if wrap == "checks-finiteness" and not bool(torch.isfinite(logits).all()):
            raise ValueError("not finite")
        return 2 * metric(logits)

    structured = activation_patch(bridge, clean, corrupted, metric, "resid_pre")
    with torch.no_grad():
        result = activation_patch(bridge, clean, corrupted, plain, "resid_pre")
    torch.testing.assert_close(result.per_prompt, 2 * structured.per_prompt, atol=1e-4, rtol=1e-4)


def test_a_metric_that_cannot_run_on_reduced_logits_falls_back_to_all_of_them_without_error(tiny):
    bridge, clean, corrupted, metric = tiny
    calls = []

    def fails_once(logits):
        """Fails on its 5th call only: the engine's check of the detected read set on the clean run (calls 1-2:
        the baselines, 3: read-set detection, 4: the clean run's full logits)."""
        calls.append(logits.shape)
        if len(calls) == 5:
            raise RuntimeError("cannot run on these logits")
        return metric(logits)

    structured = activation_patch(bridge, clean, corrupted, metric, "resid_pre")
    result = activation_patch(bridge, clean, corrupted, fails_once, "resid_pre")
    assert len(calls) > 5
    torch.testing.assert_close(result.per_prompt, structured.per_prompt, atol=1e-4, rtol=1e-4)


def test_a_metric_returning_the_wrong_number_of_values_names_the_count(tiny):
    bridge, clean, corrupted, metric = tiny
    with pytest.raises(ValueError, match=r"The metric returns 3 values for 4 token rows"):
        activation_patch(bridge, clean, corrupted, lambda logits: metric(logits)[:3], "resid_pre")


def test_a_batch_of_zero_prompts_is_a_clear_error(tiny):
    bridge, clean, _, metric = tiny
    with pytest.raises(ValueError, match=r"clean_tokens has shape \(0, \d+\): patching needs at least one prompt"):
        activation_patch(bridge, clean[:0], clean[:0], metric, "resid_pre")
    with pytest.raises(ValueError, match=r"chunk_size=0: pass a positive number of cells"):
        activation_patch(bridge, clean, clean, metric, "resid_pre", chunk_size=0)


def test_token_ids_outside_the_vocabulary_are_a_clear_error(tiny):
    bridge, clean, corrupted, metric = tiny
    bad = clean.clone()
    bad[0, 0] = bridge.cfg.d_vocab
    with pytest.raises(ValueError, match=rf"clean_tokens holds token id {bridge.cfg.d_vocab}, outside the model's "
                                         rf"vocabulary 0\.\.{bridge.cfg.d_vocab - 1}"):
        activation_patch(bridge, bad, corrupted, metric, "resid_pre")
    bad[0, 0] = -1
    with pytest.raises(ValueError, match=r"clean_tokens holds token id -1"):
        attribution_patch(bridge, bad, corrupted, metric, "resid_pre")


@pytest.mark.parametrize("budget", [math.nan, math.inf, -1.0])
def test_a_non_finite_memory_bound_is_a_clear_error(tiny, budget):
    bridge, clean, corrupted, metric = tiny
    with pytest.raises(ValueError, match=r"max_memory_mb=.*: pass a finite number of MiB > 0"):
        activation_patch(bridge, clean, corrupted, metric, "resid_pre", max_memory_mb=budget)


def test_an_attribution_metric_without_a_gradient_is_a_clear_error(tiny):
    bridge, clean, corrupted, metric = tiny
    with pytest.raises(ValueError, match=r"attribution_patch: the metric's value has no gradient"):
        attribution_patch(bridge, clean, corrupted, lambda logits: metric(logits).detach(), "resid_pre")
