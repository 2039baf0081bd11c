"""Attention summaries: patterns are distributions, and heads built by hand are reported as built.

The hand-built heads live in layer 0 of a fresh copy of ``test-qwen2-2l``, edited through the HF modules
the bridge runs (the bridge's ``W_Q``/``W_K`` read the same parameters):

- L0H0 attends to BOS: its query is a constant on rotary dimension 7 (the slowest-turning pair, so the
  rotation over a short prompt is negligible) and its key (kv head 0) is the projection of the normalized
  residual on the BOS embedding made orthogonal to every task token's embedding: non-zero on BOS only;
- L0H2 attends uniformly: its query is zero, so every visible key scores 0.
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from circuit.attention import head_patterns, operand_positions, summarize_attention
from circuit.models import load_model
from circuit.prompts import tokenize_prompts
from circuit.strategies import prompt_sets
from circuit.task import Problem
from fixtures.test_models import ARCHITECTURES, QWEN_FOLDER

SETTINGS = settings(max_examples=4, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
BOS_HEAD, UNIFORM_HEAD = (0, 0), (0, 2)


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN_FOLDER, local_files_only=True)


PROMPTS = prompt_sets(_tokenizer(), min_size=1, max_size=3, max_digits=4)


@pytest.fixture(scope="module")
def built_heads(test_model_folder):
    """A fresh test-qwen2-2l whose L0H0 attends to BOS and L0H2 uniformly (module-scoped, read-only)."""
    model = load_model(test_model_folder("test-qwen2-2l"), device="cpu", with_hf_reference=False)
    bridge, tokenizer = model.bridge, model.tokenizer
    d_head = bridge.cfg.d_head
    task_tokens = tokenize_prompts(tokenizer, ["1234567890 x 1234567890 ="]).tokens[0, 1:].unique()
    bos = tokenize_prompts(tokenizer, ["1 x 2 ="]).tokens[0, 0]
    with torch.no_grad():
        embeddings = bridge.W_E.detach()
        basis, _ = torch.linalg.qr(embeddings[task_tokens].T)  # d_model x n_task_tokens
        u = embeddings[bos] - basis @ (basis.T @ embeddings[bos])
        u = u / u.norm()
        attn = bridge.blocks[0].attn
        q, k = attn.q.original_component, attn.k.original_component
        slow = d_head // 2 - 1  # rotary pair (slow, slow + d_head/2) turns slowest
        for head in (BOS_HEAD[1], UNIFORM_HEAD[1]):
            q.weight[head * d_head:(head + 1) * d_head] = 0.0
            q.bias[head * d_head:(head + 1) * d_head] = 0.0
        q.bias[BOS_HEAD[1] * d_head + slow] = 5.0
        kv_head = BOS_HEAD[1] // (bridge.cfg.n_heads // bridge.cfg.n_key_value_heads)
        k.weight[kv_head * d_head:(kv_head + 1) * d_head] = 0.0
        k.bias[kv_head * d_head:(kv_head + 1) * d_head] = 0.0
        k.weight[kv_head * d_head + slow] = 5.0 * u
    # The edit is what the bridge reads back as W_Q / b_Q / W_K.
    assert attn.W_Q[BOS_HEAD[1]].abs().max() == 0 and attn.b_Q[BOS_HEAD[1], slow] == 5.0
    assert torch.allclose(attn.W_K[kv_head, :, slow], 5.0 * u)
    return model


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@SETTINGS
@given(prompt_set=PROMPTS)
def test_every_pattern_row_is_a_distribution(test_models, arch, prompt_set):
    model = test_models[ARCHITECTURES[arch]]
    batch = tokenize_prompts(model.tokenizer, [p.prompt for p in prompt_set.clean])
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(batch.tokens)
    cfg = model.bridge.cfg
    for layer in range(cfg.n_layers):
        pattern = cache["pattern", layer]
        torch.testing.assert_close(pattern.sum(-1), torch.ones(pattern.shape[:-1]), atol=1e-5, rtol=0)
        assert (pattern >= 0).all() and (pattern.triu(diagonal=1) == 0).all()  # causal
    patterns = head_patterns(model, batch, ["L0H0", (cfg.n_layers - 1, cfg.n_heads - 1)], cache=cache)
    torch.testing.assert_close(patterns.patterns.sum(-1), torch.ones(patterns.patterns.shape[:-1]), atol=1e-5,
                               rtol=0)
    assert patterns.labels == ("L0H0", f"L{cfg.n_layers - 1}H{cfg.n_heads - 1}")
    for query in ("final", "all"):
        summary = summarize_attention(model, batch, cache=cache, query=query)
        parts = summary.to_bos + summary.to_operand_a + summary.to_operand_b
        assert ((parts >= 0) & (parts <= 1 + 1e-5)).all()
        assert ((summary.normalized_entropy >= -1e-6) & (summary.normalized_entropy <= 1 + 1e-5)).all()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_entropy_is_normalized_by_the_keys_each_query_sees(test_models, arch):
    """Causal everywhere; Gemma-2's local layers see only the last ``sliding_window`` positions (here 4)."""
    model = test_models[ARCHITECTURES[arch]]
    batch = tokenize_prompts(model.tokenizer, [Problem(1234, 5678).prompt, Problem(8765, 4321).prompt])
    with torch.no_grad():
        _, cache = model.bridge.run_with_cache(batch.tokens)
    summary = summarize_attention(model, batch, cache=cache)  # the final query, which sees the most keys
    n_keys = batch.tokens.shape[1]
    window = model.hf_model.config.sliding_window if arch == "gemma2" else None
    for layer in range(model.bridge.cfg.n_layers):
        final = cache["pattern", layer][:, :, -1]  # batch head src
        seen = (final > 0).sum(-1)  # keys with weight: every key a query may see, in float32
        local = window is not None and model.hf_model.config.layer_types[layer] == "sliding_attention"
        assert (seen == (window if local else n_keys)).all(), (layer, seen)
        entropy = -(final * final.clamp(min=1e-30).log()).sum(-1)
        torch.testing.assert_close(summary.normalized_entropy[layer], (entropy / seen.log()).T, atol=1e-5, rtol=0)
    if arch == "gemma2":
        assert window == 4 and "sliding_attention" in model.hf_model.config.layer_types


@SETTINGS
@given(prompt_set=PROMPTS)
def test_a_head_built_to_attend_to_bos_is_reported_so(built_heads, test_models, prompt_set):
    batch = tokenize_prompts(built_heads.tokenizer, [p.prompt for p in prompt_set.clean])
    for query in ("final", "all"):
        summary = summarize_attention(built_heads, batch, query=query)
        assert (summary.to_bos[BOS_HEAD] > 0.99).all(), summary.to_bos[BOS_HEAD]
        assert (summary.normalized_entropy[BOS_HEAD] < 0.05).all(), summary.normalized_entropy[BOS_HEAD]
        assert (summary.to_self[BOS_HEAD] < 0.01).all(), summary.to_self[BOS_HEAD]  # BOS, not itself
        assert summary.top_k("to_bos", 1)[0][0] == "L0H0"
    # The unedited model's L0H0 does not (so the edit, through the bridge's forward, is what did it).
    plain = summarize_attention(test_models["test-qwen2-2l"], batch)
    assert (plain.to_bos[BOS_HEAD] < 0.9).all()


@SETTINGS
@given(prompt_set=PROMPTS)
def test_a_head_built_to_attend_uniformly_is_reported_so(built_heads, prompt_set):
    clean = prompt_set.clean
    batch = tokenize_prompts(built_heads.tokenizer, [p.prompt for p in clean])
    n_keys = batch.tokens.shape[1]  # the final query sees every position
    final = summarize_attention(built_heads, batch)
    ones = torch.ones(len(clean))
    torch.testing.assert_close(final.normalized_entropy[UNIFORM_HEAD], ones, atol=1e-5, rtol=0)
    torch.testing.assert_close(final.entropy[UNIFORM_HEAD], ones * math.log(n_keys), atol=1e-5, rtol=0)
    torch.testing.assert_close(final.to_bos[UNIFORM_HEAD], ones / n_keys, atol=1e-6, rtol=0)
    torch.testing.assert_close(final.to_self[UNIFORM_HEAD], ones / n_keys, atol=1e-6, rtol=0)  # the diagonal
    digits_a = torch.tensor([len(str(p.a)) for p in clean], dtype=torch.float32)
    digits_b = torch.tensor([len(str(p.b)) for p in clean], dtype=torch.float32)
    torch.testing.assert_close(final.to_operand_a[UNIFORM_HEAD], digits_a / n_keys, atol=1e-6, rtol=0)
    torch.testing.assert_close(final.to_operand_b[UNIFORM_HEAD], digits_b / n_keys, atol=1e-6, rtol=0)
    every = summarize_attention(built_heads, batch, query="all")
    expected_bos = sum(1 / (d + 1) for d in range(1, n_keys)) / (n_keys - 1)  # query d sees d + 1 keys
    torch.testing.assert_close(every.to_bos[UNIFORM_HEAD], ones * expected_bos, atol=1e-6, rtol=0)
    torch.testing.assert_close(every.to_self[UNIFORM_HEAD], ones * expected_bos, atol=1e-6, rtol=0)  # 1 / (d + 1) too
    torch.testing.assert_close(every.normalized_entropy[UNIFORM_HEAD], ones, atol=1e-5, rtol=0)


def test_operands_are_the_first_two_digit_runs(qwen_tokenizer):
    # BOS 1 2 3 ' x' ' ' 4 5 ' =' ' ' 5 5 3 5 : the answer's digits (teacher-forced) are not an operand.
    tokens = tokenize_prompts(qwen_tokenizer, ["123 x 45 = 5535"]).tokens
    a, b = operand_positions(qwen_tokenizer, tokens)
    assert a[0].nonzero().flatten().tolist() == [1, 2, 3]
    assert b[0].nonzero().flatten().tolist() == [6, 7]
    with pytest.raises(ValueError, match="does not hold two operands"):
        operand_positions(qwen_tokenizer, tokenize_prompts(qwen_tokenizer, ["12 x y ="]).tokens)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_left_padded_prompts_are_summarized_from_their_own_bos(test_models, arch):
    model = test_models[ARCHITECTURES[arch]]
    batch = tokenize_prompts(model.tokenizer, [Problem(12, 34).prompt, Problem(12345, 678).prompt],
                             padding="left")
    summary = summarize_attention(model, batch, query="all")
    parts = summary.to_bos + summary.to_operand_a + summary.to_operand_b
    assert ((parts >= 0) & (parts <= 1 + 1e-5)).all()
    a, _ = operand_positions(model.tokenizer, batch.tokens)
    assert a.sum(-1).tolist() == [2, 5]
    patterns = head_patterns(model, batch, ["L1H1"]).patterns[0, 0]  # the padded row
    pad = int((batch.attention_mask[0] == 0).sum())
    assert patterns[pad:, :pad].abs().max() < 1e-6  # real queries never see the padding


def test_prompts_without_bos_and_bad_arguments_are_refused(test_models):
    model = test_models["test-qwen2-2l"]
    no_bos = tokenize_prompts(model.tokenizer, ["12 x 34 ="], prepend_bos=False)
    with pytest.raises(ValueError, match="do not start with the BOS token"):
        summarize_attention(model, no_bos)
    batch = tokenize_prompts(model.tokenizer, ["12 x 34 ="])
    with pytest.raises(ValueError, match="query='last'"):
        summarize_attention(model, batch, query="last")
    with pytest.raises(ValueError, match="does not exist"):
        head_patterns(model, batch, ["L9H0"])
