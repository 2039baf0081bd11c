"""Tests of circuit.patching: the fast engine gives the naive loop's and TransformerLens' numbers.

Every site is compared, on random prompt sets (hypothesis) and the test models of all eight architectures
(``fixtures/test_models.py``), with ``transformer_lens.patching`` where it has the sweep and with the naive
loop (one ``run_with_hooks`` per cell) for the per-query-head value patch ``v``, which TransformerLens does
not have; the fast engine and the generic hook sweep are both compared. Canaries check the engine's
shortcuts directly; attribution patching is checked against finite differences.
"""

from __future__ import annotations

import contextlib
import random

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from circuit import _forward as fwd
from circuit.metrics import seed_logit_diff, teacher_forced_logprob_diff
from circuit.patching import (
    TRANSFORMER_LENS_SWEEPS as TL_SWEEPS,
    SITES,
    NotSignificantError,
    activation_patch,
    attribution_patch,
    reference_activation_patch,
)
from circuit.prompts import tokenize_prompts
from circuit.strategies import prompt_sets
from circuit.task import make_problems, perturb
from fixtures.test_models import ARCHITECTURES

ARCHS = sorted(ARCHITECTURES)

TOLERANCE = 1e-4
"""Max abs difference allowed between two exact computations of a patched metric (float32)."""

FAST = settings(max_examples=1, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _inputs(loaded, prompt_set, kind: str):
    """``(clean tokens, corrupted tokens, metric)`` for a prompt set and a kind of metric."""
    tokenizer = loaded.tokenizer
    clean = tokenize_prompts(tokenizer, [p.prompt for p in prompt_set.clean])
    corrupted = tokenize_prompts(tokenizer, [p.prompt for p in prompt_set.corrupted])
    if kind == "logprob":  # 2B rows (prompt + correct, prompt + incorrect), B values, whole vocabulary
        inputs = teacher_forced_logprob_diff(tokenizer, prompt_set.clean, prompt_set.incorrect)
        corrupted_tokens = inputs.tokens.clone()
        corrupted_tokens[:, :corrupted.tokens.shape[1]] = torch.cat([corrupted.tokens, corrupted.tokens])
        return inputs.tokens, corrupted_tokens, inputs.metric
    metric = seed_logit_diff(tokenizer, clean, prompt_set.clean, prompt_set.incorrect)
    if kind == "plain":  # a plain function: the engine cannot see what it reads
        return clean.tokens, corrupted.tokens, lambda logits: metric(logits)
    return clean.tokens, corrupted.tokens, metric


def _fixed_inputs(loaded, n: int = 3, digits: int = 2, seed: int = 0, kind: str = "seed"):
    from circuit.prompts import corrupt_same_length
    from circuit.strategies import PromptSet

    problems = make_problems(n, digits, seed=seed, both_orders=False)
    rng = random.Random(seed)
    prompt_set = PromptSet(tuple(problems), tuple(perturb(p.product, rng) for p in problems),
                           tuple(corrupt_same_length(problems, seed=seed + 1)), "same_length")
    return _inputs(loaded, prompt_set, kind)


def _diff_report(ours, theirs, what: str) -> str:
    diff = (ours - theirs).abs()
    return (f"{what}: max abs difference {diff.max():.3g} > {TOLERANCE} ({int((diff > TOLERANCE).sum())} of "
            f"{diff.numel()} cells differ; mean {diff.mean():.3g}).\nours={ours}\ntheirs={theirs}")


@pytest.mark.parametrize("site", list(SITES))
@pytest.mark.parametrize("arch", ARCHS)
@FAST
@given(data=st.data())
def test_activation_patch_matches_transformer_lens_and_naive_loop(test_models, qwen_tokenizer, arch, site, data):
    """Both exact paths (the fast engine and the generic hook sweep) give TL's numbers, on every architecture."""
    import transformer_lens.patching as tlp

    loaded = test_models[ARCHITECTURES[arch]]
    prompt_set = data.draw(prompt_sets(qwen_tokenizer, min_size=1, max_size=2, min_digits=1, max_digits=2,
                                       both_orders=False), label="prompts")
    kind = data.draw(st.sampled_from(["seed", "logprob", "plain"]), label="metric")
    chunk_size = data.draw(st.sampled_from([None, 1, 3]), label="chunk_size")
    clean, corrupted, metric = _inputs(loaded, prompt_set, kind)

    ours = activation_patch(loaded.bridge, clean, corrupted, metric, site, chunk_size=chunk_size, method="activation")
    hooks = activation_patch(loaded.bridge, clean, corrupted, metric, site, chunk_size=chunk_size, method="hooks")
    assert (ours.method, hooks.method) == ("activation", "hooks")
    assert ours.per_prompt.shape[-1] == len(prompt_set.clean)
    if site in TL_SWEEPS:
        _, clean_cache = loaded.bridge.run_with_cache(clean)
        sweep = getattr(tlp, TL_SWEEPS[site])
        theirs = sweep(loaded.bridge, corrupted, clean_cache, lambda logits: metric(logits).mean()).cpu()
        what = f"transformer_lens.patching.{TL_SWEEPS[site]}"
    else:
        theirs = reference_activation_patch(loaded.bridge, clean, corrupted, metric, site).mean
        what = "the naive loop (TL has no per-query-head value sweep)"
    for result in (ours, hooks):
        assert result.mean.shape == theirs.shape, (
            f"shape {tuple(result.mean.shape)}, {what} gives {tuple(theirs.shape)}")
        assert (result.mean - theirs).abs().max() <= TOLERANCE, _diff_report(
            result.mean, theirs, f"{arch} {site} ({result.method}) vs {what}")


@pytest.mark.parametrize("site", list(TL_SWEEPS))
@pytest.mark.parametrize("name", ["test-qwen2-3l", "test-gpt-neox"])
def test_naive_loop_is_transformer_lens_definition(test_models, name, site):
    """The naive loop (used for ``v``) patches exactly what TransformerLens patches, on sampled cells."""
    import pandas as pd
    import transformer_lens.patching as tlp

    loaded = test_models[name]
    clean, corrupted, metric = _fixed_inputs(loaded, seed=3)
    sweep = getattr(tlp, TL_SWEEPS[site])
    cells = [(0, 1), (1, 1), (loaded.bridge.cfg.n_layers - 1, 0)]
    ours = reference_activation_patch(loaded.bridge, clean, corrupted, metric, site, cells=cells)
    _, clean_cache = loaded.bridge.run_with_cache(clean)
    index_df = pd.DataFrame(cells, columns=list(sweep.keywords["index_axis_names"]))
    theirs = tlp.generic_activation_patch(
        loaded.bridge, corrupted, clean_cache, lambda logits: metric(logits).mean(), sweep.keywords["patch_setter"],
        sweep.keywords["activation_name"], index_df=index_df)
    mine = torch.stack([ours.mean[c] for c in cells])
    assert (mine - theirs).abs().max() <= TOLERANCE, _diff_report(mine, theirs, f"naive {site} vs TL")


@pytest.mark.parametrize("site", list(SITES))
@pytest.mark.parametrize("method", ["activation", "hooks"])
def test_patching_own_corrupted_activation_changes_nothing(test_models, site, method):
    """Canary: with clean = corrupted, every cell (none skipped) gives the corrupted metric."""
    loaded = test_models["test-qwen2-3l"]
    _, corrupted, metric = _fixed_inputs(loaded, seed=5)
    result = activation_patch(loaded.bridge, corrupted, corrupted, metric, site, skip_unchanged=False, chunk_size=4,
                              method=method)
    expected = result.corrupted.expand_as(result.per_prompt)
    assert (result.per_prompt - expected).abs().max() <= TOLERANCE, _diff_report(result.per_prompt, expected, site)


@pytest.mark.parametrize("kind", ["seed", "logprob"])
@pytest.mark.parametrize("name", ["test-qwen2-3l", "test-gpt-neox", "test-gemma2"])
def test_patching_a_whole_layer_with_the_clean_run_recovers_the_clean_metric(test_models, name, kind):
    """Canary: the engine's continuation from a whole clean layer (every position) gives the clean metric."""
    from circuit.patching import _Reader

    loaded = test_models[name]
    clean_tokens, corrupted_tokens, metric = _fixed_inputs(loaded, seed=7, kind=kind)
    arith = fwd.arithmetic_of(loaded.bridge)
    clean = fwd.run_cache(loaded.bridge, arith, clean_tokens)
    corrupted = fwd.run_cache(loaded.bridge, arith, corrupted_tokens)
    reader = _Reader(metric, arith)
    expected, before = metric(clean.logits), metric(corrupted.logits)
    assert (expected - before).abs().max() > 10 * TOLERANCE, "clean and corrupted must differ for this canary"
    n_layers = arith.n_layers
    points = [(layer, "pre", clean.resid_pre[layer]) for layer in range(n_layers)]
    if not arith.parallel:
        points += [(layer, "mid", clean.resid_mid[layer]) for layer in range(n_layers)]
    points.append((n_layers, "pre", clean.resid_final))
    starts = [fwd.Start(cell, *point) for cell, point in enumerate(points)]
    with torch.no_grad():
        cells, final = fwd.continue_from(arith, corrupted, starts, 0, reader.read)
        for cell, resid in zip(cells, final):
            got = reader(resid)
            where = f"{starts[cell].stage} of layer {starts[cell].layer}"
            assert (got - expected).abs().max() <= TOLERANCE, _diff_report(got, expected, where)


def _scaled_hook(site, layer, index, group, clean, corrupted, eps):
    """A hook moving one cell a fraction ``eps`` of the way from its corrupted to its clean value."""
    def move(act, target):
        return act + eps * (target - act)

    if site in ("resid_pre", "attn_out", "mlp_out"):
        source = getattr(clean, site)[layer]

        def hook(act, hook):
            act = act.clone()
            act[:, index] = move(act[:, index], source[:, index])
            return act
        return f"blocks.{layer}.hook_{site}", hook
    if site in ("z", "v"):
        if site == "z":
            target = clean.z[layer][:, :, index]
        else:
            target = corrupted.z[layer][:, :, index] + torch.einsum(
                "bqk,bke->bqe", corrupted.pattern[layer][:, index],
                clean.v[layer][:, :, index // group] - corrupted.v[layer][:, :, index // group])

        def hook(act, hook):
            act = act.clone()
            act[:, :, index] = move(act[:, :, index], target)
            return act
        return f"blocks.{layer}.attn.hook_z", hook
    if site == "z_final":
        def hook(act, hook):
            act = act.clone()
            act[:, -1, index] = move(act[:, -1, index], clean.z[layer][:, -1, index])
            return act
        return f"blocks.{layer}.attn.hook_z", hook
    if site == "v_pos":
        def hook(act, hook):
            act = act.clone()
            act[:, index] = move(act[:, index], clean.v[layer][:, index])
            return act
        return f"blocks.{layer}.attn.hook_v", hook
    if site == "pattern":
        def hook(act, hook):
            act = act.clone()
            act[:, index] = move(act[:, index], clean.pattern[layer][:, index])
            return act
        return f"blocks.{layer}.attn.hook_pattern", hook

    def hook(act, hook):
        act = act.clone()
        act[:, :, index] = move(act[:, :, index], clean.v[layer][:, :, index])
        return act
    return f"blocks.{layer}.attn.hook_v", hook


@pytest.mark.parametrize("site", list(SITES))
@pytest.mark.parametrize("arch", ARCHS)
def test_attribution_patch_is_the_derivative_of_activation_patching(test_models, arch, site):
    """``attribution - corrupted`` is d/d(eps) of the metric when a cell moves eps of the way to clean."""
    loaded = test_models[ARCHITECTURES[arch]]
    clean_tokens, corrupted_tokens, metric = _fixed_inputs(loaded, seed=11, kind="logprob" if site == "v" else "seed")
    result = attribution_patch(loaded.bridge, clean_tokens, corrupted_tokens, metric, site)
    assert result.method == "attribution" and result.per_prompt.shape[:-1] == result.mean.shape
    clean = fwd.run_cache(loaded.bridge, None, clean_tokens)
    corrupted = fwd.run_cache(loaded.bridge, None, corrupted_tokens)
    group = clean.z[0].shape[2] // clean.v[0].shape[2]
    eps = 1e-2
    for cell in [(0, 1), (1, result.mean.shape[1] - 1)]:
        values = []
        for sign in (1, -1):
            name, hook = _scaled_hook(site, *cell, group, clean, corrupted, sign * eps)
            with torch.no_grad():
                values.append(metric(loaded.bridge.run_with_hooks(corrupted_tokens, fwd_hooks=[(name, hook)])))
        derivative = (values[0] - values[1]) / (2 * eps)
        linear = result.per_prompt[cell] - result.corrupted
        assert torch.allclose(linear, derivative, atol=2e-3, rtol=0.05), (
            f"{site} cell {cell}: attribution gives {linear}, finite differences {derivative}")


def test_attribution_patch_correlates_with_activation_patch(test_models, record_property):
    """Attribution patching is a screen: report how well it ranks cells, pooled over all sites."""
    loaded = test_models["test-qwen2-3l"]
    clean, corrupted, metric = _fixed_inputs(loaded, n=3, digits=2, seed=13)
    exact, approx, lines = [], [], []
    for site in SITES:
        a = activation_patch(loaded.bridge, clean, corrupted, metric, site)
        b = attribution_patch(loaded.bridge, clean, corrupted, metric, site)
        assert b.mean.shape == a.mean.shape and torch.equal(a.corrupted, b.corrupted)
        effect_a, effect_b = (a.mean - a.corrupted.mean()).flatten(), (b.mean - b.corrupted.mean()).flatten()
        exact.append(effect_a)
        approx.append(effect_b)
        lines.append(f"{site}: r={torch.corrcoef(torch.stack([effect_a, effect_b]))[0, 1]:.3f}")
    pooled = torch.corrcoef(torch.stack([torch.cat(exact), torch.cat(approx)]))[0, 1].item()
    record_property("attribution_vs_activation_correlation", f"pooled r={pooled:.3f}; " + ", ".join(lines))
    print(f"attribution vs activation patching: pooled r={pooled:.3f}; " + ", ".join(lines))
    assert pooled > 0.3, f"attribution patching correlates poorly with activation patching: r={pooled:.3f} ({lines})"


def test_result_statistics(test_models):
    loaded = test_models["test-qwen2-2l"]
    clean, corrupted, metric = _fixed_inputs(loaded, n=4, seed=17)
    result = activation_patch(loaded.bridge, clean, corrupted, metric, "resid_pre")
    gap = result.clean.mean() - result.corrupted.mean()
    expected = (result.per_prompt.mean(-1) - result.corrupted.mean()) / gap
    if bool(result.baseline_gap().excludes(0)):
        assert torch.allclose(result.normalized(), expected)
    interval = result.ci()
    assert interval.estimate.shape == result.mean.shape
    assert bool(((interval.low <= result.mean + 1e-6) & (result.mean - 1e-6 <= interval.high)).all())


def test_normalized_refuses_when_clean_and_corrupted_do_not_differ(test_models):
    loaded = test_models["test-qwen2-2l"]
    clean, _, metric = _fixed_inputs(loaded, seed=19)
    result = activation_patch(loaded.bridge, clean, clean, metric, "z")
    with pytest.raises(NotSignificantError, match="do not differ significantly"):
        result.normalized()


def test_errors_name_the_bad_input(test_models):
    loaded = test_models["test-qwen2-2l"]
    clean, corrupted, metric = _fixed_inputs(loaded, seed=23)
    with pytest.raises(ValueError, match=r"Unknown site 'resid_post'.*resid_pre.*v_kv"):
        activation_patch(loaded.bridge, clean, corrupted, metric, "resid_post")
    with pytest.raises(ValueError, match=r"differ in shape.*corrupt_same_length"):
        activation_patch(loaded.bridge, clean, corrupted[:, 1:], metric, "z")
    with pytest.raises(ValueError, match=r"one value per prompt"):
        activation_patch(loaded.bridge, clean, corrupted, lambda logits: metric(logits).mean(), "z")
    with pytest.raises(ValueError, match=r"not a TransformerBridge.*load_model"):
        activation_patch(object(), clean, corrupted, metric, "z")
    with pytest.raises(ValueError, match=r"method='fast'.*'auto'"):
        activation_patch(loaded.bridge, clean, corrupted, metric, "z", method="fast")
    with pytest.raises(ValueError, match=r"chunk_size=0"):
        activation_patch(loaded.bridge, clean, corrupted, metric, "z", chunk_size=0)


def test_an_architecture_the_engine_does_not_implement_takes_the_exact_hook_sweep(test_models, monkeypatch):
    """``auto`` says why and falls back to the generic path with the same numbers; ``activation`` refuses."""
    loaded = test_models["test-llama"]
    clean, corrupted, metric = _fixed_inputs(loaded, seed=29)
    fast = activation_patch(loaded.bridge, clean, corrupted, metric, "z")
    assert fast.method == "activation"

    def unsupported(bridge):
        raise fwd.UnsupportedArchitecture("positional_embedding_type='alibi'")

    monkeypatch.setattr(fwd, "arithmetic_of", unsupported)
    with pytest.warns(UserWarning, match=r"does not implement positional_embedding_type='alibi'.*hook sweep"):
        generic = activation_patch(loaded.bridge, clean, corrupted, metric, "z")
    assert generic.method == "hooks"
    assert (generic.per_prompt - fast.per_prompt).abs().max() <= TOLERANCE
    with pytest.raises(fwd.UnsupportedArchitecture, match=r"method='activation'.*alibi.*'hooks'"):
        activation_patch(loaded.bridge, clean, corrupted, metric, "z", method="activation")


def test_arithmetic_that_does_not_reproduce_the_model_is_never_used(test_models, monkeypatch):
    """Canary of the self-check: a wrong attention scale makes the engine fall back, not give other numbers."""
    loaded = test_models["test-qwen3"]
    clean, corrupted, metric = _fixed_inputs(loaded, seed=31)
    exact = reference_activation_patch(loaded.bridge, clean, corrupted, metric, "attn_out")
    real = fwd.arithmetic_of

    def wrong(bridge):
        arith = real(bridge)
        arith.scaling = tuple(2 * s for s in arith.scaling)
        return arith

    monkeypatch.setattr(fwd, "arithmetic_of", wrong)
    with pytest.warns(UserWarning, match=r"does not reproduce this model's forward"):
        result = activation_patch(loaded.bridge, clean, corrupted, metric, "attn_out")
    assert result.method == "hooks"
    assert (result.mean - exact.mean).abs().max() <= TOLERANCE


def _plain_metrics(loaded, clean_tokens, seed_metric):
    """Plain callables a researcher writes: what they read, and the metric."""
    answer = seed_metric.correct[:, 0]
    wrong = loaded.tokenizer.convert_tokens_to_ids(["0"] * len(answer))
    wrong = torch.tensor([w if w != a else w + 1 for w, a in zip(wrong, answer.tolist())])
    rows = torch.arange(clean_tokens.shape[0])

    def last_token_logit_diff(logits):  # the source analysis' shape: logits[:, -1] gathered at answers
        last = logits[:, -1]
        return last[rows, answer] - last[rows, wrong]

    def last_token_logprob(logits):  # reads the whole vocabulary at the last position
        return logits[:, -1].log_softmax(-1)[rows, answer]

    def argmax_is_answer(logits):  # no gradient: every position and token is computed
        return (logits[:, -1].argmax(-1) == answer).float()

    return {"logit_diff": last_token_logit_diff, "logprob": last_token_logprob, "argmax": argmax_is_answer}


def test_read_set_of_plain_metrics(test_models):
    from circuit.patching import read_set

    loaded = test_models["test-qwen2-2l"]
    clean, _, metric = _fixed_inputs(loaded, n=3, seed=37)
    logits = loaded.bridge(clean)
    metrics = _plain_metrics(loaded, clean, metric)
    positions, vocab = read_set(metrics["logit_diff"], logits)
    assert positions.tolist() == [clean.shape[1] - 1]
    assert set(metric.correct[:, 0].tolist()) < set(vocab.tolist()) and len(vocab) <= 6
    positions, vocab = read_set(metrics["logprob"], logits)
    assert positions.tolist() == [clean.shape[1] - 1] and len(vocab) == logits.shape[-1]
    assert read_set(metrics["argmax"], logits) is None


@pytest.mark.parametrize("kind", ["logit_diff", "logprob", "argmax"])
@pytest.mark.parametrize("site", ["resid_pre", "z"])
def test_plain_metrics_give_exact_numbers_whatever_they_read(test_models, kind, site):
    from circuit.patching import _Reader

    loaded = test_models["test-qwen2-3l"]
    clean, corrupted, seed_metric = _fixed_inputs(loaded, n=3, seed=41)
    metric = _plain_metrics(loaded, clean, seed_metric)[kind]
    ours = activation_patch(loaded.bridge, clean, corrupted, metric, site)
    exact = reference_activation_patch(loaded.bridge, clean, corrupted, metric, site)
    assert ours.method == "activation"
    assert (ours.per_prompt - exact.per_prompt).abs().max() <= TOLERANCE, _diff_report(
        ours.per_prompt, exact.per_prompt, f"{kind} {site}")
    arith = fwd.arithmetic_of(loaded.bridge)
    reader = _Reader(metric, arith, fwd.run_cache(loaded.bridge, arith, clean),
                     fwd.run_cache(loaded.bridge, arith, corrupted))
    assert (reader.buffer is not None) == (kind != "argmax")


def test_a_metric_whose_reads_depend_on_the_input_is_caught(test_models):
    """A metric reading the logit of whatever token is largest: the detected set is wrong, the numbers are not."""
    loaded = test_models["test-qwen2-2l"]
    clean, corrupted, _ = _fixed_inputs(loaded, n=3, seed=43)

    def top_logit(logits):
        last = logits[:, -1]
        return last.gather(-1, last.argmax(-1, keepdim=True))[:, 0]

    with pytest.warns(UserWarning, match="reads more of the logits than its gradient shows|outside its detected"):
        ours = activation_patch(loaded.bridge, clean, corrupted, top_logit, "resid_pre")
    exact = reference_activation_patch(loaded.bridge, clean, corrupted, top_logit, "resid_pre")
    assert (ours.per_prompt - exact.per_prompt).abs().max() <= TOLERANCE


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU comparison runs where there is one")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["test-qwen2-3l", "test-gemma2", "test-gpt-neox"])
def test_on_cuda_both_exact_paths_equal_the_naive_loop(test_model_folder, name, dtype):
    """The same comparisons on a GPU, with the chunk size that follows free GPU memory (many cells a forward)."""
    from circuit.models import load_model

    loaded = load_model(test_model_folder(name), device="cuda", dtype=dtype, with_hf_reference=False)
    clean, corrupted, metric = _fixed_inputs(loaded, n=4, seed=47)
    tolerance = TOLERANCE if dtype == "float32" else 5e-2
    for site in SITES:
        exact = reference_activation_patch(loaded.bridge, clean, corrupted, metric, site)
        for method in ("activation", "hooks"):
            ours = activation_patch(loaded.bridge, clean, corrupted, metric, site, method=method)
            assert ours.method == method
            scale = max(1.0, float(exact.mean.abs().max()))
            assert (ours.mean.cpu() - exact.mean.cpu()).abs().max() <= tolerance * scale, _diff_report(
                ours.mean.cpu(), exact.mean.cpu(), f"{name} {dtype} {site} {method} on cuda")


@pytest.mark.parametrize("method", ["activation", "hooks"])
def test_a_progress_bar_counts_every_cell_where_asked_and_only_then(test_models, method, monkeypatch):
    """``progress`` as tqdm options draws a bar on the given stream (even where TQDM_DISABLE is set, as the
    plugin sets it), counting every cell; ``progress=False`` draws nothing; the numbers are the same."""
    import io

    monkeypatch.setenv("TQDM_DISABLE", "1")
    loaded = test_models["test-qwen2-2l"]
    clean, corrupted, metric = _fixed_inputs(loaded, n=4, seed=17)
    stream = io.StringIO()
    shown = activation_patch(loaded.bridge, clean, corrupted, metric, "z", method=method,
                             progress={"file": stream, "delay": 0, "mininterval": 0})
    n_cells = loaded.bridge.cfg.n_layers * loaded.bridge.cfg.n_heads
    assert "patching z" in stream.getvalue() and f"{n_cells}/{n_cells}" in stream.getvalue(), stream.getvalue()
    quiet = io.StringIO()
    with contextlib.redirect_stderr(quiet):
        silent = activation_patch(loaded.bridge, clean, corrupted, metric, "z", method=method, progress=False)
    assert quiet.getvalue() == ""
    assert torch.equal(shown.per_prompt, silent.per_prompt)
