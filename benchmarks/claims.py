"""Benchmark: everything one prompt set of ``pytest claims/`` computes, on a Qwen2.5-0.5B-shaped model.

Builds a model with the real Qwen2.5-0.5B config (``fixtures/qwen2.5-0.5b/config.json``; ``--layers N`` keeps
its first N layers for a quicker run) and seeded random weights, loads it as the claims do, draws one prompt
set of the Qwen2.5-0.5B spec's shape (``claims/specs/qwen2.5-0.5b.toml``: 5-digit operands, the source's
metric) and times each stage the claims compute on it: the clean and corrupted runs, every activation
patching sweep, attribution patching, direct logit attribution (per layer, per head), the logit lens and
the attention summaries. It prints, per stage, the seconds and which exact path ran, the peak memory, and
for each sweep the time ``transformer_lens.patching`` takes for the same cells, measured on a few random
cells and extrapolated to the sweep (labelled ``extrapolated``; ``v`` has no TL sweep and is timed with
the naive loop, one ``run_with_hooks`` per cell). On CUDA the same table is printed for the GPU, with its
peak memory.

What a claim that stays inconclusive costs when its set grows to the budget is ``benchmarks/adaptive.py``'s figure.

Usage::

    python benchmarks/claims.py --layers 4            # a few minutes on a 2-core CPU
    python benchmarks/claims.py --device cuda         # all 24 layers on a GPU
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from circuit.discover import draw_prompt_sets  # noqa: E402
from circuit.lab import Lab  # noqa: E402
from circuit.models import load_model  # noqa: E402
from circuit.patching import SITES  # noqa: E402
from circuit.spec import load_spec  # noqa: E402
from patching import build_qwen_shaped, tl_sweep  # noqa: E402

SPEC = ROOT / "claims" / "specs" / "qwen2.5-0.5b.toml"


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: the GPU's allocator on CUDA, the process' resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(label: str, rows: list, fn, path: str = "") -> object:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    value = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    rows.append((label, seconds, path or getattr(value, "method", "")))
    print(f"{label:<34}{seconds:>9.1f}  {rows[-1][2]}", flush=True)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=None, help="keep the first N of the 24 layers")
    parser.add_argument("--device", default=None, help="cpu, cuda (default: cuda when present)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--tl-sample", type=int, default=3,
                        help="TL (or naive-loop) cells timed per site and extrapolated; 0 skips TL")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, help="where the benchmark model is built",
                        default=Path(os.environ.get("TMPDIR", "/tmp")) / "circuit-claims-bench")
    args = parser.parse_args()

    from importlib.metadata import version

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "none"
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, GPU {gpu}")
    print(f"python {platform.python_version()}, torch {torch.__version__}, transformer-lens "
          f"{version('transformer-lens')}, transformers {version('transformers')}")

    suffix = "" if args.layers is None else f"-{args.layers}l"
    folder = build_qwen_shaped(args.cache_dir / f"qwen2.5-0.5b-shaped{suffix}", seed=args.seed, layers=args.layers)
    rows: list[tuple[str, float, str]] = []
    model = timed("load (bridge + HF reference)", rows,
                  lambda: load_model(folder, device=device, dtype=args.dtype), "")
    spec = load_spec(SPEC)
    lab = Lab(model, spec)
    (prompt_set,) = draw_prompt_sets(lab, 1, seed=args.seed)
    clean, corrupted, metric = lab.inputs(prompt_set)
    cfg = model.bridge.cfg
    print(f"model: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads, {cfg.n_key_value_heads} kv "
          f"heads, vocab {cfg.d_vocab}, {args.dtype}; prompt set: {len(prompt_set.clean)} prompts x "
          f"{clean.tokens.shape[1]} tokens ({prompt_set.clean[0].prompt!r} ...)")
    print(f"{'stage':<34}{'seconds':>9}  path")

    timed("clean and corrupted runs", rows, lambda: (lab.run(prompt_set, "clean"), lab.run(prompt_set, "corrupted")),
          "bridge")
    results = {}
    for site in SITES:
        results[site] = timed(f"activation patching {site}", rows, lambda site=site: lab.patch(prompt_set, site))
    for site in ("attn_out", "mlp_out"):
        timed(f"attribution patching {site}", rows, lambda site=site: lab.patch(prompt_set, site, "attribution"))
    timed("DLA per layer", rows, lambda: lab.layer_attribution(prompt_set), "cache")
    timed("DLA per head", rows, lambda: lab.head_attribution(prompt_set), "cache")
    timed("logit lens", rows, lambda: lab.logit_lens(prompt_set), "cache")
    timed("attention summaries", rows, lambda: lab.attention(prompt_set), "cache")
    ours = sum(seconds for label, seconds, _ in rows if not label.startswith("load"))
    print(f"{'TOTAL (without load)':<34}{ours:>9.1f}")
    print(f"peak memory: {peak_memory_mb(device):.0f} MiB ({'GPU allocator' if device.type == 'cuda' else 'RSS'})")

    if args.tl_sample <= 0:
        return
    print(f"\ntransformer_lens.patching on the same sweeps ({args.tl_sample} random cells per site, extrapolated)")
    print(f"{'site':<10}{'cells':>7}{'ours s':>9}{'TL s':>10}{'ratio':>8}{'max|diff|':>11}")
    gen = random.Random(args.seed)
    total_ours = total_tl = 0.0
    for site, result in results.items():
        t_ours = next(seconds for label, seconds, _ in rows if label == f"activation patching {site}")
        shape = tuple(result.mean.shape)
        cells = sorted(gen.sample([(l, i) for l in range(shape[0]) for i in range(shape[1])],
                                  min(args.tl_sample, shape[0] * shape[1])))
        tokens = clean.tokens.to(device), corrupted.tokens.to(device)
        means, t_cache, t_cells = tl_sweep(model.bridge, *tokens, metric, site, cells)
        diff = (means.cpu().float() - torch.stack([result.mean[c] for c in cells]).float()).abs().max().item()
        t_tl = t_cache + t_cells / len(cells) * shape[0] * shape[1]
        total_ours, total_tl = total_ours + t_ours, total_tl + t_tl
        print(f"{site:<10}{shape[0] * shape[1]:>7}{t_ours:>9.1f}{t_tl:>10.1f}{t_tl / t_ours:>8.1f}{diff:>11.2e}"
              f"  extrapolated{' (naive loop)' if site == 'v' else ''}", flush=True)
    print(f"{'TOTAL':<17}{total_ours:>9.1f}{total_tl:>10.1f}{total_tl / total_ours:>8.1f}")


if __name__ == "__main__":
    main()
