"""Benchmark: circuit.patching.activation_patch against transformer_lens.patching, same sweeps, same numbers.

Runs every sweep of ``circuit.patching.SITES`` on (1) a bundled test model and (2) a model of Qwen2.5-0.5B's
exact shape (its config.json, seeded random weights, float32), on 5-digit multiplication prompts with
the source's logit-difference metric, and prints per site and in total: seconds for our engine, seconds
for TransformerLens, their ratio, and the max abs difference of the per-cell means.

TransformerLens runs one full forward per cell (~2,000 forwards of the Qwen-shaped model, ~30 min on two
CPU cores). ``--tl-sample K`` times it on K random cells per site instead (through TL's own
``generic_activation_patch`` with an ``index_df`` of those cells), and extrapolates its time per cell
to the whole sweep; such rows are marked ``extrapolated``. The difference is then over the sampled
cells. The ``v`` site (per-query-head value patch under GQA) has no TransformerLens sweep; its
reference is our naive loop, one ``run_with_hooks`` per cell, timed the same way.

Usage::

    python benchmarks/patching.py                             # test model, then Qwen-shaped; TL on 12 cells/site
    python benchmarks/patching.py --models qwen --tl-sample 0  # every cell through TL (slow)
    python benchmarks/patching.py --models test --sites z pattern
    python benchmarks/patching.py --models test --test-model test-gpt-neox   # another architecture

The ``path`` column says which exact path of ``activation_patch`` ran (``activation``: the fast engine;
``hooks``: the generic batched hook sweep).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from circuit.metrics import seed_logit_diff  # noqa: E402
from circuit.models import load_model  # noqa: E402
from circuit.patching import (  # noqa: E402
    SITES,
    TRANSFORMER_LENS_SWEEPS as TL_SWEEPS,
    activation_patch,
    reference_activation_patch,
)
from circuit.prompts import corrupt_same_length, tokenize_prompts  # noqa: E402
from circuit.task import make_problems, perturb  # noqa: E402
from fixtures.test_models import QWEN_FOLDER, TEST_MODELS, TOKENIZER_FILES, build_test_model  # noqa: E402


def build_qwen_shaped(folder: Path, seed: int = 0, layers: int | None = None) -> Path:
    """A model with Qwen2.5-0.5B's exact config (``layers`` of its 24 layers, if given) and seeded random
    float32 weights (built once)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    stamp = folder / "qwen_shaped_seed.txt"
    if stamp.exists() and stamp.read_text() == f"{seed} {layers}":
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    extra = {} if layers is None else dict(num_hidden_layers=layers, max_window_layers=layers,
                                           layer_types=["full_attention"] * layers)
    config = AutoConfig.from_pretrained(QWEN_FOLDER, dtype="float32", **extra)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder, safe_serialization=True)
    for name in (*TOKENIZER_FILES, "generation_config.json"):
        shutil.copy(QWEN_FOLDER / name, folder / name)
    stamp.write_text(f"{seed} {layers}")
    return folder


def plain_last_token_metric(seed_metric):
    """The source analysis' kind of metric as a plain function: ``logits[:, -1]`` gathered at the first answer
    token and at a wrong one (the engine must detect what it reads)."""
    answer = seed_metric.correct[:, 0]
    wrong = seed_metric.incorrect[:, 0]
    wrong = torch.where(wrong == answer, answer + 1, wrong)  # any other token where the first digits agree
    rows = torch.arange(answer.shape[0])

    def metric(logits):
        last = logits[:, -1]
        return last[rows, answer] - last[rows, wrong]

    return metric


def tl_sweep(bridge, clean_tokens, corrupted_tokens, metric, site, cells):
    """TransformerLens (or, for ``v``, our naive loop) on ``cells`` ([(layer, index)]; None = all).

    Returns the per-cell means and the seconds spent on the clean cache (not extrapolated) and on cells.
    """
    import pandas as pd
    import transformer_lens.patching as tlp

    if site == "v":
        t0 = time.perf_counter()
        result = reference_activation_patch(bridge, clean_tokens, corrupted_tokens, metric, site, cells=cells)
        mean = result.mean
        return (mean if cells is None else torch.stack([mean[c] for c in cells])), 0.0, time.perf_counter() - t0
    t0 = time.perf_counter()
    _, clean_cache = bridge.run_with_cache(clean_tokens)
    t_cache = time.perf_counter() - t0
    sweep = getattr(tlp, TL_SWEEPS[site])
    t0 = time.perf_counter()
    if cells is None:
        means = sweep(bridge, corrupted_tokens, clean_cache, metric, reduce="mean")
    else:
        names = list(sweep.keywords["index_axis_names"])
        index_df = pd.DataFrame(cells, columns=names)
        means = tlp.generic_activation_patch(
            bridge, corrupted_tokens, clean_cache, metric, sweep.keywords["patch_setter"],
            sweep.keywords["activation_name"], index_df=index_df, reduce="mean",
        )
    return means, t_cache, time.perf_counter() - t0


def bench_model(label, folder, args):
    loaded = load_model(folder, device="cpu", dtype=args.dtype, with_hf_reference=False)
    bridge, tokenizer = loaded.bridge, loaded.tokenizer
    problems = make_problems(args.n_prompts, args.digits, seed=args.seed)
    corrupted = corrupt_same_length(problems, seed=args.seed + 1)
    rng = random.Random(args.seed)
    clean_batch = tokenize_prompts(tokenizer, [p.prompt for p in problems])
    corrupted_batch = tokenize_prompts(tokenizer, [p.prompt for p in corrupted])
    metric = seed_logit_diff(tokenizer, clean_batch, problems, [perturb(p.product, rng) for p in problems])
    clean, corr = clean_batch.tokens, corrupted_batch.tokens
    if args.metric == "plain":
        metric = plain_last_token_metric(metric)
    cfg = bridge.cfg
    print(f"\n== {label}: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, "
          f"{cfg.n_key_value_heads or cfg.n_heads} kv heads, d_mlp {cfg.d_mlp}, vocab {cfg.d_vocab}; "
          f"{clean.shape[0]} prompts x {clean.shape[1]} tokens, {args.dtype}")
    t0 = time.perf_counter()
    with torch.no_grad():
        bridge(corr)
    print(f"one bridge forward: {time.perf_counter() - t0:.2f} s")
    print(f"{'site':<10}{'cells':>6}{'path':>11}{'ours s':>9}{'TL s':>10}{'ratio':>8}{'max|diff|':>11}  TL timing")
    total_ours = total_tl = 0.0
    worst = 0.0
    gen = random.Random(args.seed)
    for site in args.sites:
        t0 = time.perf_counter()
        ours = activation_patch(bridge, clean, corr, metric, site, chunk_size=args.chunk_size,
                                max_memory_mb=args.max_memory_mb)
        t_ours = time.perf_counter() - t0
        shape = tuple(ours.mean.shape)
        all_cells = [(l, i) for l in range(shape[0]) for i in range(shape[1])]
        sample = None if args.tl_sample <= 0 or args.tl_sample >= len(all_cells) else sorted(
            gen.sample(all_cells, args.tl_sample))
        theirs, t_cache, t_cells = tl_sweep(bridge, clean, corr, metric, site, sample)
        if sample is None:
            diff = (theirs.cpu() - ours.mean).abs().max().item()
            t_tl = t_cache + t_cells
            how = "measured"
        else:
            diff = (theirs.cpu() - torch.stack([ours.mean[c] for c in sample])).abs().max().item()
            t_tl = t_cache + t_cells / len(sample) * len(all_cells)
            how = f"extrapolated from {len(sample)} cells ({t_cells / len(sample):.2f} s/cell)"
        if site == "v":
            how += " (naive loop: TL has no per-head v sweep)"
        total_ours += t_ours
        total_tl += t_tl
        worst = max(worst, diff)
        print(f"{site:<10}{len(all_cells):>6}{ours.method:>11}{t_ours:>9.1f}{t_tl:>10.1f}{t_tl / t_ours:>8.1f}{diff:>11.2e}  {how}",
              flush=True)
    print(f"{'TOTAL':<27}{total_ours:>9.1f}{total_tl:>10.1f}{total_tl / total_ours:>8.1f}{worst:>11.2e}")
    return total_ours, total_tl, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["test", "qwen"], choices=["test", "qwen"])
    parser.add_argument("--test-model", default="test-qwen2-3l", choices=list(TEST_MODELS))
    parser.add_argument("--sites", nargs="+", default=list(SITES), choices=list(SITES))
    parser.add_argument("--tl-sample", type=int, default=12,
                        help="time TL on this many random cells per site and extrapolate (0: every cell)")
    parser.add_argument("--n-prompts", type=int, default=8)
    parser.add_argument("--digits", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--dtype", default="float32", help="model dtype (float32, bfloat16, float16)")
    parser.add_argument("--metric", default="seed", choices=["seed", "plain"],
                        help="seed: the project's AnswerMetric (declares its reads); plain: a plain function of "
                             "logits[:, -1] (the engine detects what it reads)")
    parser.add_argument("--layers", type=int, default=None, help="layers of the Qwen-shaped model (default 24)")
    parser.add_argument("--max-memory-mb", type=float, default=1024.0)
    parser.add_argument("--cache-dir", type=Path, help="where the benchmark models are built",
                        default=Path(os.environ.get("TMPDIR", "/tmp")) / "circuit-claims-bench")
    args = parser.parse_args()

    from importlib.metadata import version

    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}, cuda {torch.cuda.is_available()}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, transformer-lens "
          f"{version('transformer-lens')}, transformers {version('transformers')}")
    sampled = f"{args.tl_sample} random cells per site, time extrapolated to all cells"
    print(f"TL timing: {'every cell' if args.tl_sample <= 0 else sampled}")
    for which in args.models:
        if which == "test":
            folder = build_test_model(TEST_MODELS[args.test_model], args.cache_dir / args.test_model)
            bench_model(args.test_model, folder, args)
        else:
            suffix = "" if args.layers is None else f"-{args.layers}l"
            folder = build_qwen_shaped(args.cache_dir / f"qwen2.5-0.5b-shaped{suffix}", layers=args.layers)
            bench_model(f"Qwen2.5-0.5B-shaped{suffix} (random weights), {args.metric} metric", folder, args)


if __name__ == "__main__":
    main()
