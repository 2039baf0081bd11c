"""Direct logit attribution and the logit lens add up: the identities of circuit/attribution.py.

Every test runs the GQA test models on random prompt sets and compares a decomposition with the value the
metric computes from the model's own logits, so an identity that fails names a real bug, not a rounding.
"""

import einops
import pytest
import torch
from hypothesis import HealthCheck, given, reject, settings

from circuit.attribution import (
    head_attribution,
    head_results,
    layer_attribution,
    logit_lens,
    parse_head,
    residual_directions,
)
from circuit.metrics import (
    AnswerMetric,
    LogProbDiffMetric,
    first_token_logit_diff,
    seed_logit_diff,
    teacher_forced_logprob_diff,
)
from circuit.prompts import tokenize_prompts
from circuit.strategies import prompt_sets
from circuit.task import Problem
from fixtures.test_models import QWEN_FOLDER, TEST_MODELS

MODELS = sorted(TEST_MODELS)
METRICS = ("seed", "first_token", "teacher_forced")
ATOL = 1e-4
"""Completeness tolerance: float32 sums of a few dozen terms of size ~1 differ from the logits by ~1e-6."""

SETTINGS = settings(max_examples=4, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN_FOLDER, local_files_only=True)


PROMPTS = prompt_sets(_tokenizer(), min_size=1, max_size=3, max_digits=4)


def _run(model, kind, prompt_set):
    """Tokens, metric, logits and cache of one metric on one prompt set (rejects sets it cannot score)."""
    tokenizer, clean, wrong = model.tokenizer, list(prompt_set.clean), list(prompt_set.incorrect)
    if kind == "seed":
        batch = tokenize_prompts(tokenizer, [p.prompt for p in clean])
        tokens, metric = batch.tokens, seed_logit_diff(tokenizer, batch, clean, wrong)
    else:
        make = first_token_logit_diff if kind == "first_token" else teacher_forced_logprob_diff
        try:
            inputs = make(tokenizer, clean, wrong)
        except ValueError:  # answers that differ only in length have no first differing token
            reject()
        tokens, metric = inputs.tokens, inputs.metric
    with torch.no_grad():
        logits, cache = model.bridge.run_with_cache(tokens)
    return tokens, metric, logits, cache


def _expected(metric, logits):
    """The value DLA must add up to, from the logits: the metric itself, or the logit part of a log-prob.

    For the teacher-forced metric, ``log p = logit - logsumexp``: the logit part is the metric plus the
    difference of the summed logsumexp normalizers, computed here independently of circuit.attribution
    and in float64 (in float32, log-softmax over 151,936 tokens alone is off by ~4e-5 on these sums).
    """
    if not isinstance(metric, LogProbDiffMetric):
        return metric(logits)
    logits = logits.double()
    rows = torch.arange(metric.positions.shape[0])[:, None]
    lse = (logits[rows, metric.positions].logsumexp(-1) * metric.mask).sum(-1)
    half = lse.shape[0] // 2
    return (metric(logits) + (lse[:half] - lse[half:])).float()


@pytest.mark.parametrize("kind", METRICS)
@pytest.mark.parametrize("name", MODELS)
@SETTINGS
@given(prompt_set=PROMPTS)
def test_layer_components_sum_to_the_metric(test_models, name, kind, prompt_set):
    model = test_models[name]
    _, metric, logits, cache = _run(model, kind, prompt_set)
    directions = residual_directions(model, metric)
    attribution = layer_attribution(model, cache, directions)
    n_layers = model.bridge.cfg.n_layers
    assert attribution.labels == ("embed", *[f"{l}_{s}_out" for l in range(n_layers) for s in ("attn", "mlp")])
    torch.testing.assert_close(attribution.values.sum(0) + attribution.constant, _expected(metric, logits),
                               atol=ATOL, rtol=0)
    torch.testing.assert_close(directions.read_logits(logits), _expected(metric, logits), atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", METRICS)
@pytest.mark.parametrize("name", MODELS)
@SETTINGS
@given(prompt_set=PROMPTS)
def test_heads_biases_and_the_rest_sum_to_the_metric(test_models, name, kind, prompt_set):
    model = test_models[name]
    _, metric, logits, cache = _run(model, kind, prompt_set)
    attribution = head_attribution(model, cache, residual_directions(model, metric))
    cfg = model.bridge.cfg
    assert attribution.values.shape == (cfg.n_layers, cfg.n_heads, len(prompt_set.clean))
    total = attribution.values.sum((0, 1)) + attribution.attn_bias.sum(0) + attribution.rest
    torch.testing.assert_close(total, _expected(metric, logits), atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", MODELS)
@SETTINGS
@given(prompt_set=PROMPTS)
def test_head_results_sum_to_the_attention_output_minus_bias(test_models, name, prompt_set):
    model = test_models[name]
    _, _, _, cache = _run(model, "seed", prompt_set)
    for layer in range(model.bridge.cfg.n_layers):
        heads = head_results(model, cache, layer)
        attn = model.bridge.blocks[layer].attn
        torch.testing.assert_close(heads.sum(-2), cache["attn_out", layer] - attn.b_O.detach(), atol=1e-5, rtol=0)
        # TransformerLens' own per-head results (computed from hook_z and W_O on the bridge) agree.
        torch.testing.assert_close(heads, cache.stack_head_results(layer=layer + 1)[layer * attn.W_O.shape[0]:]
                                   .movedim(0, -2), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", MODELS)
@SETTINGS
@given(prompt_set=PROMPTS)
def test_head_attribution_agrees_with_transformer_lens_stack_head_results(test_models, name, prompt_set):
    # The source's route: stack_head_results + apply_ln_to_stack at the final position, per answer slot.
    model = test_models[name]
    _, metric, _, cache = _run(model, "seed", prompt_set)
    directions = residual_directions(model, metric)
    stack = cache.stack_head_results(layer=-1, pos_slice=-1)  # (layer head) batch d_model
    scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)
    seed_directions = (model.bridge.tokens_to_residual_directions(metric.correct)
                       - model.bridge.tokens_to_residual_directions(metric.incorrect)).detach()
    per_slot = einops.einsum(scaled, seed_directions.reshape(*metric.correct.shape, -1),
                             "component batch d_model, batch slot d_model -> component batch slot")
    expected = einops.rearrange((per_slot * metric.weights).sum(-1), "(layer head) batch -> layer head batch",
                                layer=model.bridge.cfg.n_layers)
    torch.testing.assert_close(head_attribution(model, cache, directions).values, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", METRICS)
@pytest.mark.parametrize("name", MODELS)
@SETTINGS
@given(prompt_set=PROMPTS)
def test_logit_lens_ends_at_the_metric_and_steps_by_the_layers(test_models, name, kind, prompt_set):
    model = test_models[name]
    _, metric, logits, cache = _run(model, kind, prompt_set)
    directions = residual_directions(model, metric)
    expected = _expected(metric, logits)
    frozen = logit_lens(model, cache, directions)
    recomputed = logit_lens(model, cache, directions, ln="recompute")
    n_layers = model.bridge.cfg.n_layers
    assert frozen.labels == (*[f"{l}_{s}" for l in range(n_layers) for s in ("pre", "mid")], "final_post")
    # The last entry is the metric: the frozen scale is the final residual's own scale.
    torch.testing.assert_close(frozen.values[-1], expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(recomputed.values[-1], expected, atol=ATOL, rtol=0)
    # The frozen lens is linear: it starts at the embedding and each step is one sub-layer's DLA.
    layers = layer_attribution(model, cache, directions)
    steps = torch.cat([frozen.values[:1] - layers.constant, frozen.values.diff(dim=0)])
    torch.testing.assert_close(steps, layers.values, atol=ATOL, rtol=0)


def test_the_frozen_scale_is_the_final_residuals_rms(test_models):
    # The documented approximation: DLA divides every component by this one number per position.
    model = test_models["test-qwen2-2l"]
    batch = tokenize_prompts(model.tokenizer, ["12 x 34 =", "56 x 78 ="])
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(batch.tokens)
    final = cache["resid_post", -1]
    rms = (final.pow(2).mean(-1, keepdim=True) + model.bridge.cfg.eps).sqrt()
    torch.testing.assert_close(cache["ln_final.hook_scale"], rms, atol=1e-6, rtol=1e-5)


def test_recomputed_logit_lens_matches_transformer_lens(test_models):
    model = test_models["test-qwen2-3l"]
    problems = [Problem(123, 456), Problem(654, 321)]
    batch = tokenize_prompts(model.tokenizer, [p.prompt for p in problems])
    metric = seed_logit_diff(model.tokenizer, batch, problems, [p.product + 1 for p in problems])
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(batch.tokens)
    directions = residual_directions(model, metric)
    stack = cache.accumulated_resid(layer=-1, incl_mid=True, apply_ln=True, pos_slice=-1)  # recomputed norm
    per_slot = einops.einsum(stack, directions.directions, "c batch d_model, batch slot d_model -> c batch slot")
    expected = (per_slot * directions.weights).sum(-1) + directions.constant
    torch.testing.assert_close(logit_lens(model, cache, directions, ln="recompute").values, expected,
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MODELS)
@SETTINGS
@given(prompt_set=PROMPTS)
def test_the_seed_einsum_sums_the_answer_slots_instead_of_averaging_them(test_models, name, prompt_set):
    """The source printed 2.746 for an actual 0.229: its einsum summed 12 answer slots (0.229 x 12)."""
    model = test_models[name]
    tokens, metric, logits, cache = _run(model, "seed", prompt_set)
    bridge, n_slots = model.bridge, metric.correct.shape[1]
    actual = metric.mean(logits)
    # The source's cells, verbatim up to names: directions [batch, slot, d_model], einsum to a scalar / batch.
    answer_tokens = torch.stack([metric.correct, metric.incorrect], dim=1)  # batch 2 slot
    answer_residual_directions = bridge.tokens_to_residual_directions(answer_tokens).detach()
    logit_diff_directions = answer_residual_directions[:, 0] - answer_residual_directions[:, 1]
    scaled_final = cache.apply_ln_to_stack(cache["resid_post", -1][:, -1, :], layer=-1, pos_slice=-1)
    seed_value = einops.einsum(scaled_final, logit_diff_directions,
                               "batch d_model, batch head d_model -> ") / tokens.shape[0]
    library = layer_attribution(model, cache, residual_directions(model, metric))
    library_value = library.total.mean()
    assert library_value == pytest.approx(float(actual), abs=ATOL)
    # b_U's share is left out by the source; it is zero in these models, and is subtracted to be safe.
    assert float(seed_value) == pytest.approx(n_slots * float(library_value - library.constant.mean()),
                                              rel=1e-4, abs=ATOL)
    if abs(float(actual)) > 1e-3:  # the bug is visible whenever the true value is not ~0
        assert abs(float(seed_value) - float(actual)) > (n_slots - 1) * abs(float(actual)) / 2


def test_top_k_heads_are_signed_labelled_and_ordered(test_models):
    model = test_models["test-qwen2-3l"]
    problems = [Problem(12, 34), Problem(43, 21), Problem(99, 11)]
    batch = tokenize_prompts(model.tokenizer, [p.prompt for p in problems])
    metric = seed_logit_diff(model.tokenizer, batch, problems, [p.product * 2 for p in problems])
    attribution = head_attribution(model, batch.tokens, residual_directions(model, metric))
    mean = attribution.mean
    cfg = model.bridge.cfg
    for by in ("abs", "positive", "negative"):
        top = attribution.top_k(5, by=by)
        assert len(top) == 5
        for label, value in top:
            layer, head = parse_head(label, cfg.n_layers, cfg.n_heads)
            assert value == pytest.approx(float(mean[layer, head]))  # signed, the head's own value
        key = {"abs": abs, "positive": lambda v: v, "negative": lambda v: -v}[by]
        keys = [key(v) for _, v in top]
        assert keys == sorted(keys, reverse=True)
        assert keys[0] == pytest.approx(float(key(mean.flatten()).max() if by != "abs" else mean.abs().max()))
    assert len(attribution.top_k(10_000)) == cfg.n_layers * cfg.n_heads
    assert attribution.top_k(1, by="negative")[0][1] == pytest.approx(float(mean.min()))


def test_a_metric_read_on_the_wrong_tokens_is_refused(test_models):
    model = test_models["test-qwen2-2l"]
    problems = [Problem(12, 34)]
    inputs = teacher_forced_logprob_diff(model.tokenizer, problems, [409])
    prompt_only = tokenize_prompts(model.tokenizer, [problems[0].prompt]).tokens
    with pytest.raises(ValueError, match="Run the model on the metric's own tokens"):
        layer_attribution(model, prompt_only, residual_directions(model, inputs.metric))


def test_unknown_metrics_and_head_labels_are_refused(test_models):
    model = test_models["test-qwen2-2l"]
    with pytest.raises(TypeError, match="use a LogitDiffMetric"):
        residual_directions(model, AnswerMetric())
    with pytest.raises(ValueError, match="is not a head label"):
        parse_head("layer0head1", 2, 4)
    with pytest.raises(ValueError, match="does not exist"):
        parse_head("L2H0", 2, 4)
    with pytest.raises(ValueError, match="by='top'"):
        head_attribution(model, tokenize_prompts(model.tokenizer, ["1 x 2 ="]).tokens,
                         residual_directions(model, seed_logit_diff(
                             model.tokenizer, tokenize_prompts(model.tokenizer, ["1 x 2 ="]),
                             [Problem(1, 2)], [3]))).top_k(3, by="top")
