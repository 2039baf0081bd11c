"""The bundled models (fixtures/models/): their files, their tokenizer, and exact answers on their whole domain.

Each is checked on every problem of its domain (a x b for 0 <= a, b <= 99: 10,000 problems), through the
TransformerBridge the claims use and through plain transformers; the numbers on the model cards
(``training_summary.json``) and in README's table of bundled models are re-measured here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fixtures.claims_session import BUNDLED_MODELS, DEFAULT_MODELS
from fixtures.train_default_model import (ARCHS, DIRECT, DOMAIN_MAX, PLANTED, READOUT, domain, info_problems,
                                          residual_masks, residual_split)

README = Path(__file__).resolve().parents[1] / "README.md"
NAMES = (*ARCHS.values(), PLANTED, READOUT, DIRECT)
"""The bundled models: by ``--arch`` qwen2-mult-2d (the default), llama-mult-2d and neox-mult-2d; and the
planted ones, qwen2-planted-mult-2d (``--planted``), qwen2-readout-mult-2d and qwen2-direct-mult-2d
(``--planted NAME``)."""
MODEL_TYPES = {"qwen2-mult-2d": "qwen2", "llama-mult-2d": "llama", "neox-mult-2d": "gpt_neox",
               PLANTED: "qwen2", READOUT: "qwen2", DIRECT: "qwen2"}
RIGHT = {DIRECT: 9_998}
"""Problems of the domain a bundled model answers exactly, where not all 10,000: qwen2-direct-mult-2d's extra
loss (``direct_loss``) left two wrong after its 7,500 steps (``fixtures.train_default_model.DIRECT_CONFIG``)."""


def folder(name: str) -> Path:
    return BUNDLED_MODELS / name


def summary_of(name: str) -> dict:
    return json.loads((folder(name) / "training_summary.json").read_text())


@pytest.fixture(scope="module", params=NAMES)
def loaded(request):
    """A bundled model loaded exactly as the claims load any model (bridge + separate HF copy). Read-only."""
    from circuit.models import load_model

    return load_model(folder(request.param), device="cpu")


@pytest.fixture(scope="module")
def qwen_tokenizer():
    """The real Qwen2.5 tokenizer (vendored, no weights). Read-only."""
    from transformers import AutoTokenizer

    from fixtures.test_models import QWEN_FOLDER

    return AutoTokenizer.from_pretrained(QWEN_FOLDER)


def problems_of_the_domain():
    from circuit.task import Problem

    return [Problem(a, b) for a, b in domain()]


def test_the_default_model_is_the_first_bundled_model():
    assert DEFAULT_MODELS == (NAMES[0],)


@pytest.mark.parametrize("name", NAMES)
def test_folder_holds_a_small_hf_model_in_safetensors(name):
    expected = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                "tokenizer_config.json", "README.md", "training_summary.json"}
    present = {p.name for p in folder(name).iterdir()}
    assert expected <= present, f"missing from {folder(name)}: {sorted(expected - present)}"
    assert not [p for p in present if p.endswith((".bin", ".pt", ".pkl"))], "weights load from safetensors only"
    size = sum(p.stat().st_size for p in folder(name).iterdir())
    assert size <= 10 * 2**20, f"{name} holds {size / 2**20:.1f} MiB; a bundled model must stay under 10 MiB."


def test_the_bundled_models_are_three_architectures():
    """Qwen2 (q/k/v biases, tied embeddings) and Llama (no biases, untied embeddings), 3 layers with
    grouped-query attention; GPT-NeoX (LayerNorm, parallel attention and MLP, biases), 6 layers, so that
    early, middle and late bands of layers exist; the planted models are 6-layer Qwen2s."""
    configs = {name: json.loads((folder(name) / "config.json").read_text()) for name in NAMES}
    assert {name: c["model_type"] for name, c in configs.items()} == MODEL_TYPES
    assert configs["qwen2-mult-2d"]["tie_word_embeddings"] is True
    llama = configs["llama-mult-2d"]
    assert llama["tie_word_embeddings"] is False and llama["attention_bias"] is False and llama["mlp_bias"] is False
    for name in ("qwen2-mult-2d", "llama-mult-2d", PLANTED, READOUT, DIRECT):
        assert configs[name]["num_key_value_heads"] < configs[name]["num_attention_heads"], "grouped-query expected"
    neox = configs["neox-mult-2d"]
    assert neox["use_parallel_residual"] is True and neox["attention_bias"] is True
    assert neox["tie_word_embeddings"] is False and neox["num_hidden_layers"] >= 6
    assert all(configs[name]["num_hidden_layers"] >= 6 for name in (PLANTED, READOUT, DIRECT))


def _patterns_by_length(loaded, prompts):
    """The caches of every layer's hook_pattern and hook_attn_out for ``prompts`` (texts), one batch per token
    length."""
    from itertools import groupby

    import torch

    from circuit.prompts import tokenize_prompts

    for _, group in groupby(sorted(prompts, key=len), key=len):
        tokens = tokenize_prompts(loaded.tokenizer, list(group)).tokens
        with torch.no_grad():
            _, cache = loaded.bridge.run_with_cache(
                tokens, names_filter=lambda n: n.endswith(("hook_pattern", "hook_attn_out")))
        yield cache


def test_the_planted_model_holds_what_its_recipe_plants():
    """What ``--planted`` makes true, through the bridge on a sample of every operand length: the first
    ``uniform_layers`` layers attend uniformly (their query weights are zero), the next ``silent_layers`` write
    no attention output, and every later layer's heads rest on BOS at the prompt's positions before " ="
    (mean weight above 0.9)."""
    import torch

    from circuit.models import load_model

    config = summary_of(PLANTED)["config"]
    uniform, later = config["uniform_layers"], config["uniform_layers"] + config["silent_layers"]
    loaded = load_model(folder(PLANTED), device="cpu")
    on_bos = []
    for cache in _patterns_by_length(loaded, [f"{a} x {b} =" for a, b in domain()[::37]]):  # 271 problems
        for layer in range(loaded.bridge.cfg.n_layers):
            pattern = cache[f"blocks.{layer}.attn.hook_pattern"]  # [batch, head, query, key]
            if uniform <= layer < later:
                assert cache[f"blocks.{layer}.hook_attn_out"].abs().max() == 0, f"layer {layer} writes attention"
            elif layer < uniform:
                visible = torch.tril(torch.ones(pattern.shape[-2:]))
                gap = (pattern - visible / visible.sum(-1, keepdim=True)).abs().max().item()
                assert gap < 1e-5, f"layer {layer} is not uniform: off by up to {gap:.2e}"
            else:
                on_bos.append(pattern[:, :, 1:-1, 0].mean().item())  # queries after BOS, before " ="
    assert min(on_bos) > 0.9, f"mean attention on BOS before ' =' in layers {later}+: {on_bos}"


@pytest.mark.parametrize("name", [READOUT, DIRECT])
def test_the_readout_models_hold_what_their_recipe_plants(name):
    """What ``--planted qwen2-readout-mult-2d`` (and ``qwen2-direct-mult-2d``, the same plus a loss) makes true.
    In its weights: every writer of the residual stream writes only its own dimensions (layer 0's attention the
    direct ones, the last layer's attention the readout ones, everything else the main ones), no layer reads the
    direct or readout dimensions, and the final norm reads the main ones at ``main_readout``. Through the bridge,
    on a sample of every operand length: the last layer's heads attend to their own position (mean weight above 0.9
    at the queries after BOS, answer included), every other head rests on BOS at the prompt's positions before
    " =" (above 0.9)."""
    import torch
    from safetensors.torch import load_file

    from circuit.models import load_model
    from fixtures.train_default_model import TrainConfig

    config = TrainConfig(**summary_of(name)["config"])
    weights = load_file(folder(name) / "model.safetensors")
    main, _, _ = residual_split(config)
    for weight, mask in residual_masks(config).items():
        outside = weights[weight][mask.expand_as(weights[weight]) == 0]
        assert outside.numel() and outside.abs().max() == 0, f"{weight} is nonzero where the recipe plants zero"
    assert torch.all(weights["model.norm.weight"][main.bool()] == config.main_readout)
    loaded = load_model(folder(name), device="cpu")
    last = config.n_layers - 1
    on_self, on_bos = [], []
    for cache in _patterns_by_length(loaded, [f"{a} x {b} = {a * b}" for a, b in domain()[::37]]):
        on_self.append(cache[f"blocks.{last}.attn.hook_pattern"].diagonal(dim1=-2, dim2=-1)[..., 1:].mean().item())
    for cache in _patterns_by_length(loaded, [f"{a} x {b} =" for a, b in domain()[::37]]):
        on_bos += [cache[f"blocks.{layer}.attn.hook_pattern"][:, :, 1:-1, 0].mean().item() for layer in range(last)]
    assert min(on_self) > 0.9, f"mean attention of layer {last}'s heads on their own position: {on_self}"
    assert min(on_bos) > 0.9, f"mean attention on BOS before ' =' in layers 0..{last - 1}: {on_bos}"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("text", ["70620 x 99460 =", "123 x 456 =", " 56088", "0 x 7 =", "70620 x 99460 = 7023865200"])
def test_tokenizer_splits_the_task_as_qwen25_does(name, qwen_tokenizer, text):
    from transformers import AutoTokenizer

    ours_tok = AutoTokenizer.from_pretrained(folder(name))
    ours = [ours_tok.decode([i]) for i in ours_tok(text, add_special_tokens=False)["input_ids"]]
    theirs = [qwen_tokenizer.decode([i]) for i in qwen_tokenizer(text, add_special_tokens=False)["input_ids"]]
    assert ours == theirs


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("text", ["Hello, wörld!", "日本語 🙂\n\tx  = 12\r\n", "  spaces   and\ttabs ", ""])
def test_tokenizer_round_trips_any_text(name, text):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder(name))
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert tokenizer.bos_token is None and tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"


def _misses(result) -> str:
    wrong = [(p.prompt, p.answer.strip(), e) for p, ok, e in zip(result.problems, result.correct, result.first_error)
             if not ok]
    return f"{len(wrong)} wrong, e.g. (prompt, product, first wrong answer token): {wrong[:8]}"


@pytest.mark.parametrize("through", ["bridge", "transformers"])
def test_every_problem_of_the_domain_is_answered_exactly(loaded, through):
    """10,000 / 10,000 greedy exact matches (the product's digits, then EOS) on a x b, 0 <= a, b <= 99 (``RIGHT``'s
    count where not)."""
    from circuit.evaluation import exact_match_accuracy

    model = loaded.bridge if through == "bridge" else loaded.hf_model
    result = exact_match_accuracy(model, loaded.tokenizer, problems_of_the_domain(), batch_size=2500)
    assert len(result.correct) == (DOMAIN_MAX + 1) ** 2 == 10_000
    assert result.n_correct == RIGHT.get(loaded.label, 10_000), f"{loaded.label} through {through}: {_misses(result)}"


def test_the_card_reports_what_is_measured(loaded):
    """The summary the card is written from: 10,000 right (``RIGHT``'s count where not), and the 3-digit line
    re-measured."""
    from circuit.evaluation import exact_match_accuracy
    from circuit.task import Problem

    summary = summary_of(loaded.label)
    assert (summary["domain_correct"], summary["domain_problems"]) == (RIGHT.get(loaded.label, 10_000), 10_000)
    info = exact_match_accuracy(loaded.bridge, loaded.tokenizer,
                                [Problem(a, b) for a, b in info_problems(summary["config"]["seed"])], batch_size=1000)
    assert (info.n_correct, len(info.correct)) == (summary["info_3x3_correct"], summary["info_3x3_problems"])
    card = (folder(loaded.label) / "README.md").read_text()
    assert f"**{summary['domain_correct']:,} / 10,000**" in card and f"{summary['wall_time_s'] / 60:.1f} min" in card


def test_readme_table_of_bundled_models_is_measured(loaded):
    """README's table row for the model: parameters, size, domain exact match and 3 x 3 (information)."""
    summary = summary_of(loaded.label)
    row = next((line for line in README.read_text().splitlines() if line.startswith(f"| `{loaded.label}` |")), None)
    assert row is not None, f"README has no row for {loaded.label} in its table of bundled models"
    cells = [c.strip() for c in row.strip("|").split("|")]
    size = sum(p.stat().st_size for p in folder(loaded.label).iterdir() if p.name != "README.md") / 2**20
    assert cells[2] == f"{summary['n_parameters']:,}" and cells[3] == f"{size:.1f} MiB", cells
    assert cells[4] == f"{summary['domain_correct']:,} / {summary['domain_problems']:,}", cells
    assert cells[5] == f"{summary['info_3x3_correct']} / {summary['info_3x3_problems']}", cells
    assert re.fullmatch(rf"{summary['wall_time_s'] / 60:.1f} min \(\d threads?\)", cells[6]), cells


def test_bridge_matches_hf_copy(loaded):
    import torch

    from circuit.prompts import tokenize_prompts
    from circuit.task import make_problems

    batch = tokenize_prompts(loaded.tokenizer, [p.prompt for p in make_problems(16, 2, seed=3)])
    with torch.no_grad():
        bridge = loaded.bridge(batch.tokens).softmax(-1)
        hf = loaded.hf_model(batch.tokens).logits.softmax(-1)
    diff = (bridge - hf).abs().max().item()
    assert diff <= 1e-5, f"bridge and HF softmax differ by up to {diff:.2e} (expected <= 1e-5)"


def test_exact_match_agrees_with_greedy_generation(loaded):
    """The one-pass exact match (teacher-forced argmax) gives the same verdicts as ``generate``, here on a
    sample of the domain and of 3-digit problems (where the model is mostly wrong)."""
    import torch

    from circuit.evaluation import exact_match_accuracy
    from circuit.task import Problem

    problems = [Problem(a, b) for a, b in domain()[::797]] + [Problem(a, b) for a, b in info_problems(0)[:12]]
    result = exact_match_accuracy(loaded.hf_model, loaded.tokenizer, problems)
    tok = loaded.tokenizer
    verdicts = []
    for problem in problems:
        prompt = torch.tensor([[tok.eos_token_id, *tok(problem.prompt, add_special_tokens=False)["input_ids"]]])
        with torch.no_grad():
            out = loaded.hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                           max_new_tokens=9, pad_token_id=tok.eos_token_id)
        verdicts.append(tok.decode(out[0, prompt.shape[1]:]) == problem.answer + tok.eos_token)
    assert list(result.correct) == verdicts
    assert any(verdicts) and not all(verdicts)


@pytest.mark.parametrize("args, named", [
    (["--planted", "--arch", "gpt_neox"], "--planted qwen2-planted-mult-2d"),
    (["--arch", "gpt_neox", "--bos-prior", "0.2"], "--bos-prior"),
    (["--direct-dims", "100", "--readout-dims", "50"], "--direct-dims 100 and --readout-dims 50"),
    (["--self-prior", "0.2"], "--self-prior 0.2"),
    (["--self-layers", "9"], "--self-layers 9"),
    (["--direct-loss", "0.2"], "--direct-loss 0.2"),
    (["--main-readout", "0.01"], "--main-readout 0.01"),
])
def test_a_planted_term_that_cannot_work_is_refused_in_one_line_before_training(args, named, tmp_path, capsys):
    """The training script refuses, naming the flags and the fix, and writes nothing."""
    from fixtures.train_default_model import main

    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path / "model")])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert named in message and message.count(".") >= 1, message
    assert not (tmp_path / "model").exists()
