"""Benchmark: what the adaptive prompts of an inconclusive claim cost, against a claim decided at its first look.

On the bundled default model with its shipped spec (``claims/specs/qwen2-mult-2d.toml``: sets of 16 prompts, a
budget of 128), one prompt set is judged by ``Lab.judge`` for a statistic that reads a patching sweep
(``final_recovery``: resid_pre patching) and one that reads three per-head sweeps (``value_pattern_correlation``: v,
pattern and z patching):

- *decided at once*: a threshold far below the estimate, supported at the first look (16 prompts);
- *inconclusive to the budget*: the threshold set at the first look's estimate, so the interval straddles it at every
  look and the set grows by 16 fresh prompts at a time to 128 (8 looks, every one a new sweep of the grown set).

Each case starts from an empty cache. It prints the seconds of each and their ratio, with the machine and versions.

Usage::

    python benchmarks/adaptive.py
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from circuit import measures  # noqa: E402
from circuit.decision import Rule  # noqa: E402
from circuit.discover import draw_prompt_sets  # noqa: E402
from circuit.lab import Lab  # noqa: E402
from circuit.models import load_model  # noqa: E402
from circuit.spec import import_claims, load_spec  # noqa: E402

MODEL = ROOT / "fixtures" / "models" / "qwen2-mult-2d"
SPEC = ROOT / "claims" / "specs" / "qwen2-mult-2d.toml"


def judged(model, spec, prompts, measure, threshold):
    lab = Lab(model, spec)  # an empty cache: every sweep is computed
    start = time.perf_counter()
    judgement = lab.judge(Rule(">=", threshold), prompts, measure, n_sets=3)
    return time.perf_counter() - start, judgement


def main() -> None:
    from importlib.metadata import version

    import_claims(ROOT / "claims")  # the spec states claims declared there
    model = load_model(MODEL, device="cpu", with_hf_reference=False)
    spec = load_spec(SPEC)
    prompts = draw_prompt_sets(Lab(model, spec), 1, seed=7)[0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; "
          f"python {platform.python_version()}, torch {torch.__version__}, transformers {version('transformers')}, "
          f"transformer-lens {version('transformer-lens')}")
    print(f"model {MODEL.name}; sets of {len(prompts.clean)} prompts, budget {spec.prompts.prompt_budget}")
    print(f"{'statistic':<16} {'decided at once':>22} {'inconclusive to budget':>30} {'ratio':>7}")
    for name, measure in (("final_recovery", lambda lab, ps: measures.final_recovery(lab, ps, 1)),
                          ("value_pattern", measures.value_pattern_correlation)):
        once, first = judged(model, spec, prompts, measure, -1e9)
        estimate = float(first.interval.estimate)
        slow, grown = judged(model, spec, prompts, measure, estimate)
        print(f"{name:<16} {once:>8.2f} s ({first.looks[-1].n_prompts:>3} prompts) "
              f"{slow:>12.2f} s ({len(grown.looks)} looks, {grown.looks[-1].n_prompts} prompts) {slow / once:>6.1f}x")


if __name__ == "__main__":
    main()
