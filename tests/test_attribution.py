"""Direct logit attribution and the logit lens add up: the identities of circuit/attribution.py.

Every identity runs on the test model of every architecture (``fixtures/test_models.py``: RMSNorm and
LayerNorm, folded and unfolded norm weights, norms after the sub-layers, biases and none, learned and rotary
positions, parallel attention and MLP, a soft-capped output) on random prompt sets, and compares a
decomposition with the value the model itself computes from its logits, so an identity that fails names a
real bug, not a rounding.
"""

import einops
import pytest
import torch
from hypothesis import HealthCheck, given, reject, settings

from circuit.attribution import (
    attribution_target,
    direct_patch_effects,
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
from fixtures.test_models import ARCHITECTURES, QWEN_FOLDER

ARCHS = sorted(ARCHITECTURES)
METRICS = ("seed", "first_token", "teacher_forced")
ATOL = 1e-4
"""Completeness tolerance: float32 sums of a few dozen terms of size ~1 differ from the logits by ~1e-6."""

SOFT_CAPPED = {"gemma2"}
"""Architectures whose logits go through a soft-cap after the unembedding (DLA splits the logits before it)."""

SOURCE_ROUTE_EXACT = {"gpt2", "gpt_neox", "llama", "phi3", "qwen2", "qwen3"}
"""Where TransformerLens' own route (``stack_head_results`` + ``apply_ln_to_stack`` + the raw unembedding
directions) is exact: the final norm folded into ``W_U`` and no norm after the attention. OLMo-2 keeps its
final norm's weight unfolded; Gemma-2 and OLMo-2 normalize the attention output before adding it."""

SETTINGS = settings(max_examples=3, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN_FOLDER, local_files_only=True)


PROMPTS = prompt_sets(_tokenizer(), min_size=1, max_size=3, max_digits=4)


def _model(test_models, arch):
    return test_models[ARCHITECTURES[arch]]


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


def _pre_transform(cache):
    """The logits as the unembedding computed them (before Gemma-2's soft-cap; the logits elsewhere)."""
    return cache["unembed.hook_out"]


@pytest.mark.parametrize("arch", ARCHS)
def test_the_logits_are_the_unembedding_output_or_its_soft_cap(test_models, arch):
    """What DLA splits (the unembedding's output) is the logits, or exactly their soft-capped preimage."""
    model = _model(test_models, arch)
    batch = tokenize_prompts(model.tokenizer, ["12 x 34 =", "56 x 78 ="])
    logits, cache = model.bridge.run_with_cache(batch.tokens)
    metric = seed_logit_diff(model.tokenizer, batch, [Problem(12, 34), Problem(56, 78)], [409, 4369])
    directions = residual_directions(model, metric)
    pre = _pre_transform(cache)
    if arch in SOFT_CAPPED:
        cap = model.bridge.cfg.output_logits_soft_cap
        torch.testing.assert_close(logits, cap * torch.tanh(pre / cap), atol=1e-5, rtol=0)
        assert (logits - pre).abs().max() > 1e-4  # the cap is not the identity on these logits
        assert "soft-cap 30" in directions.logits_transform and "before the model's" in directions.kind
    else:
        torch.testing.assert_close(logits, pre, atol=0, rtol=0)
        assert directions.logits_transform is None and "before" not in directions.kind
    torch.testing.assert_close(attribution_target(model, cache, directions), directions.read_logits(pre))


@pytest.mark.parametrize("kind", METRICS)
@pytest.mark.parametrize("arch", ARCHS)
@SETTINGS
@given(prompt_set=PROMPTS)
def test_layers_heads_and_the_logit_lens_add_up_to_the_metric(test_models, arch, kind, prompt_set):
    """One run per prompt set (the vocabulary is 151,936 wide): every decomposition is checked on it."""
    model = _model(test_models, arch)
    _, metric, logits, cache = _run(model, kind, prompt_set)
    directions = residual_directions(model, metric)
    expected = _expected(metric, _pre_transform(cache))
    cfg = model.bridge.cfg
    n_layers = cfg.n_layers
    torch.testing.assert_close(directions.read_logits(logits), _expected(metric, logits), atol=ATOL, rtol=0)
    torch.testing.assert_close(attribution_target(model, cache, directions), expected, atol=ATOL, rtol=0)

    # Components of the final residual stream: embeddings (and learned positions), attention and MLP layers.
    layers = layer_attribution(model, cache, directions)
    embeds = ("embed", "pos_embed") if arch == "gpt2" else ("embed",)
    assert layers.labels == (*embeds, *[f"{l}_{s}_out" for l in range(n_layers) for s in ("attn", "mlp")])
    torch.testing.assert_close(layers.total, expected, atol=ATOL, rtol=0)
    assert layers.kind == directions.kind

    # Heads, the attention layers' bias terms (zeros for a bias-free model) and the rest.
    heads = head_attribution(model, cache, directions)
    assert heads.values.shape == (n_layers, cfg.n_heads, len(prompt_set.clean))
    total = heads.values.sum((0, 1)) + heads.attn_bias.sum(0) + heads.rest
    torch.testing.assert_close(total, expected, atol=ATOL, rtol=0)
    if getattr(model.bridge.blocks[0].attn, "b_O", None) is None and "ln1_post" not in model.bridge.blocks[0]._modules:
        assert (heads.attn_bias == 0).all()

    # The logit lens ends at the metric (the frozen scale is the final residual's own scale) ...
    frozen = logit_lens(model, cache, directions)
    recomputed = logit_lens(model, cache, directions, ln="recompute")
    parallel = arch == "gpt_neox"  # attention and MLP read the same stream: no entry between them
    sublayers = ("pre",) if parallel else ("pre", "mid")
    assert frozen.labels == (*[f"{l}_{s}" for l in range(n_layers) for s in sublayers], "final_post")
    torch.testing.assert_close(frozen.values[-1], expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(recomputed.values[-1], expected, atol=ATOL, rtol=0)
    # ... and the frozen lens is linear: it starts at the embeddings and each step is one sub-layer's DLA (one
    # layer's attention and MLP together where they run in parallel).
    n_embeds = len(embeds)
    blocks = layers.values[n_embeds:]
    if parallel:
        blocks = blocks.unflatten(0, (n_layers, 2)).sum(1)
    torch.testing.assert_close(frozen.values[0] - layers.constant, layers.values[:n_embeds].sum(0), atol=ATOL, rtol=0)
    torch.testing.assert_close(frozen.values.diff(dim=0), blocks, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_head_results_sum_to_the_attention_output(test_models, arch):
    model = _model(test_models, arch)
    batch = tokenize_prompts(model.tokenizer, ["123 x 456 =", "654 x 321 ="])
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(batch.tokens)
    for layer in range(model.bridge.cfg.n_layers):
        heads = head_results(model, cache, layer)
        attn = model.bridge.blocks[layer].attn
        b_o = getattr(attn, "b_O", None)
        bias = torch.zeros(()) if b_o is None else b_o.detach()
        post_norm = "ln1_post" in model.bridge.blocks[layer]._modules
        if post_norm:  # Gemma-2, OLMo-2: resid += norm(attn(x)); bias-free, so the heads alone sum to attn_out
            assert b_o is None
            torch.testing.assert_close(heads.sum(-2), cache["attn_out", layer], atol=1e-5, rtol=0)
        else:
            torch.testing.assert_close(heads.sum(-2), cache["attn_out", layer] - bias, atol=1e-5, rtol=0)
        # TransformerLens' own per-head results (z @ W_O, before any post-attention norm).
        theirs = cache.stack_head_results(layer=layer + 1)[layer * attn.W_O.shape[0]:].movedim(0, -2)
        if post_norm:
            scale = cache[f"blocks.{layer}.ln1_post.hook_scale"][..., None, :]
            norm = model.bridge.blocks[layer].ln1_post
            weight = norm.original_component.weight + (1.0 if norm.uses_weight_offset else 0.0)
            theirs = theirs / scale * weight
        torch.testing.assert_close(heads, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
@SETTINGS
@given(prompt_set=PROMPTS)
def test_head_attribution_agrees_with_transformer_lens_where_its_route_is_exact(test_models, arch, prompt_set):
    # The source's route: stack_head_results + apply_ln_to_stack at the final position, raw W_U directions.
    model = _model(test_models, arch)
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
    ours = head_attribution(model, cache, directions).values
    if arch in SOURCE_ROUTE_EXACT:
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    else:  # an unfolded final norm weight or a post-attention norm: the source's route misses it
        assert float((ours - expected.detach()).abs().max()) > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_the_frozen_scale_is_the_final_residuals_scale(test_models, arch):
    # The documented approximation: DLA divides every component by this one number per position.
    model = _model(test_models, arch)
    batch = tokenize_prompts(model.tokenizer, ["12 x 34 =", "56 x 78 ="])
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(batch.tokens)
    final = cache["resid_post", -1]
    if model.bridge.cfg.normalization_type == "LN":  # LayerNorm centres first
        final = final - final.mean(-1, keepdim=True)
    norm = model.bridge.ln_final.original_component
    eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon")
    rms = (final.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    torch.testing.assert_close(cache["ln_final.hook_scale"], rms, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_recomputed_logit_lens_matches_transformer_lens(test_models, arch):
    # TransformerLens recomputes each entry's norm by running the final norm module (apply_ln=True), weight
    # and bias included, so the raw unembedding directions read it: independent of our folded directions.
    model = _model(test_models, arch)
    problems = [Problem(123, 456), Problem(654, 321)]
    batch = tokenize_prompts(model.tokenizer, [p.prompt for p in problems])
    metric = seed_logit_diff(model.tokenizer, batch, problems, [p.product + 1 for p in problems])
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(batch.tokens)
    directions = residual_directions(model, metric)
    incl_mid = arch != "gpt_neox"
    stack = cache.accumulated_resid(layer=-1, incl_mid=incl_mid, apply_ln=True, pos_slice=-1)  # recomputed norm
    bridge = model.bridge
    raw = (bridge.tokens_to_residual_directions(metric.correct)
           - bridge.tokens_to_residual_directions(metric.incorrect)).detach()
    per_slot = einops.einsum(stack, raw, "c batch d_model, batch slot d_model -> c batch slot")
    b_u = bridge.b_U.detach()
    expected = (per_slot * metric.weights).sum(-1) + ((b_u[metric.correct] - b_u[metric.incorrect]) * metric.weights).sum(-1)
    torch.testing.assert_close(logit_lens(model, cache, directions, ln="recompute").values, expected,
                               atol=1e-5, rtol=0)


def test_the_logit_lens_of_a_parallel_model_has_no_mid_entries(test_models):
    model = test_models[ARCHITECTURES["gpt_neox"]]
    problems = [Problem(12, 34)]
    batch = tokenize_prompts(model.tokenizer, [p.prompt for p in problems])
    directions = residual_directions(model, seed_logit_diff(model.tokenizer, batch, problems, [409]))
    with pytest.raises(ValueError, match="attention and MLP in parallel.*Use incl_mid=False"):
        logit_lens(model, batch.tokens, directions, incl_mid=True)
    assert logit_lens(model, batch.tokens, directions, incl_mid=False).labels == ("0_pre", "1_pre", "final_post")


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
@SETTINGS
@given(prompt_set=PROMPTS)
def test_the_seed_einsum_sums_the_answer_slots_instead_of_averaging_them(test_models, arch, prompt_set):
    """The source printed 2.746 for an actual 0.229: its einsum summed 12 answer slots (0.229 x 12)."""
    model = _model(test_models, arch)
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
    # The source leaves out b_U's share; it is subtracted here.
    assert float(seed_value) == pytest.approx(n_slots * float(library_value - library.constant.mean()),
                                              rel=1e-4, abs=ATOL)
    if abs(float(actual)) > 1e-3:  # the bug is visible whenever the true value is not ~0
        assert abs(float(seed_value) - float(actual)) > (n_slots - 1) * abs(float(actual)) / 2


@pytest.mark.parametrize("arch", ["qwen2", "gpt2", "gemma2"])
def test_direct_patch_effects_add_up_to_the_final_residual_moved_under_the_corrupted_scale(test_models, arch):
    """Every component moved clean into corrupted at the reads, read with the corrupted run's frozen final scale:
    summed, ``(clean - b) * s_clean / s_corrupted - (corrupted - b)`` in the models' own logits (``b``: the
    constant), since each prompt's reads share one position; a run against itself moves nothing."""
    model = _model(test_models, arch)
    clean = [Problem(12, 34), Problem(56, 78)]
    batch = tokenize_prompts(model.tokenizer, [p.prompt for p in clean])
    corrupted = tokenize_prompts(model.tokenizer, ["91 x 23 =", "45 x 67 ="])
    metric = seed_logit_diff(model.tokenizer, batch, clean, [409, 4376])
    directions = residual_directions(model, metric)
    with torch.no_grad():
        _, clean_cache = model.bridge.run_with_cache(batch.tokens)
        _, corrupted_cache = model.bridge.run_with_cache(corrupted.tokens)
    moved = direct_patch_effects(model, clean_cache, corrupted_cache, directions)
    assert moved.labels == layer_attribution(model, clean_cache, directions).labels
    scale = [c["ln_final.hook_scale"][:, -1, 0].float() for c in (clean_cache, corrupted_cache)]
    target = [attribution_target(model, c, directions) - directions.constant for c in (clean_cache, corrupted_cache)]
    expected = target[0] * scale[0] / scale[1] - target[1]
    torch.testing.assert_close(moved.values.sum(0), expected, atol=ATOL, rtol=1e-4)
    still = direct_patch_effects(model, clean_cache, clean_cache, directions)
    assert float(still.values.abs().max()) == 0.0


def _tampered(cache, name, delta):
    return type(cache)({**cache.cache_dict, name: cache[name] + delta}, cache.model)


@pytest.mark.parametrize("arch", ["qwen2", "olmo2"])
def test_a_decomposition_that_does_not_reproduce_the_model_is_refused(test_models, arch):
    """An architecture that writes to the residual stream in a way not modelled raises, naming the activation."""
    model = _model(test_models, arch)
    problems = [Problem(12, 34), Problem(56, 78)]
    batch = tokenize_prompts(model.tokenizer, [p.prompt for p in problems])
    directions = residual_directions(model, seed_logit_diff(model.tokenizer, batch, problems, [409, 4369]))
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(batch.tokens)
    head_attribution(model, cache, directions)  # the untouched cache is reproduced
    with pytest.raises(NotImplementedError, match=r"layer 1's attention output \(hook_attn_out\)"):
        head_attribution(model, _tampered(cache, "blocks.1.hook_attn_out", 0.05), directions)
    with pytest.raises(NotImplementedError, match=r"the final norm's output \(ln_final.hook_out\)"):
        layer_attribution(model, _tampered(cache, "ln_final.hook_out", 0.05), directions)
    with pytest.raises(NotImplementedError, match="final residual stream .* sum of its components"):
        layer_attribution(model, _tampered(cache, "blocks.0.hook_mlp_out", 0.05), directions)


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
