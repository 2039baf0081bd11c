"""Mutation testing of the claims (circuit.mutants): the builders, the scoring, and one run end to end."""

from pathlib import Path

import pytest
import torch

from circuit.mutants.build import merge_spec_mutants, should_kill, spec_should_kill
from circuit.mutants.reads import claim_tests
from circuit.mutants.scoring import Mutant, is_killed, render_table, score
from circuit.mutants.specs import Component, named_components, spec_mutants
from circuit.mutants.weights import (MutantError, ablate, group_permutation, load_hf, max_logit_difference,
                                     permute_heads, random_weights, save_mutant)

ROOT = Path(__file__).resolve().parents[1]
QWEN = ROOT / "fixtures" / "models" / "qwen2-mult-2d"
SPEC = ROOT / "claims" / "specs" / "qwen2-mult-2d.toml"
FROZEN_QWEN_SPEC = ROOT / "tests" / "data" / "mutants-qwen2.toml"
"""The builders' unit tests read a frozen spec, so that what they expect does not move with the shipped one."""

VERDICTS_MERGED = True
"""Whether the supported / refuted / inconclusive verdicts of issue 20 are in. Until then a claim passes for lack
of evidence and most mutants survive; set True after the merge, and the end-to-end test asserts that every
mutant is killed by exactly the tests that should kill it."""


# --- model mutants ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_heads, n_kv", [(4, 2), (8, 2), (4, 4), (6, 3)])
def test_group_permutation_trades_two_heads_and_maps_groups_to_groups(n_heads, n_kv):
    group = n_heads // n_kv
    for head in range(n_heads):
        for other in range(n_heads):
            order, kv = group_permutation(head, other, n_heads, n_kv)
            assert sorted(order) == list(range(n_heads)) and sorted(kv) == list(range(n_kv))
            assert order[head] == other and order[other] == head
            for slot in range(n_heads):  # slot s reads kv slot s // group, which holds old kv kv[s // group]
                assert order[slot] // group == kv[slot // group]


def test_group_permutation_refuses_a_head_out_of_range():
    with pytest.raises(MutantError, match="other 4 is out of range: a layer has heads 0 to 3"):
        group_permutation(1, 4, 4, 2)


@pytest.fixture(scope="module")
def qwen_lab():
    """A lab on the bundled model with a prompt set, and the HF model in float32. Read-only."""
    from circuit.discover import draw_prompt_sets
    from circuit.lab import Lab
    from circuit.models import load_model
    from circuit.spec import import_claims, load_spec

    import_claims(ROOT / "claims")
    lab = Lab(load_model(QWEN, device="cpu", with_hf_reference=False), load_spec(SPEC))
    return lab, draw_prompt_sets(lab, 1)[0]


@pytest.mark.parametrize("other", [0, 3])  # same kv group as head 1, and the other group
def test_permuting_heads_preserves_the_function(other):
    tokens = torch.randint(0, 256, (4, 12), generator=torch.Generator().manual_seed(0))
    original, mutant = load_hf(QWEN, "float64"), load_hf(QWEN, "float64")
    permute_heads(mutant, 0, 1, other)
    assert max_logit_difference(original, mutant, tokens) < 1e-9  # exact up to float64 rounding
    original, mutant = load_hf(QWEN), load_hf(QWEN)
    permute_heads(mutant, 0, 1, other)
    assert max_logit_difference(original, mutant, tokens) < 1e-4  # what the CLI requires in float32


def _z(folder, lab, ps):
    from circuit.lab import Lab
    from circuit.measures import head_values
    from circuit.models import load_model

    other = Lab(load_model(folder, device="cpu", with_hf_reference=False), lab.spec)
    return head_values(other, ps, "z_patching").mean(-1)


def test_permuting_heads_moves_each_head_to_its_new_slot(qwen_lab, tmp_path):
    from circuit.measures import head_values

    lab, ps = qwen_lab
    model = load_hf(QWEN)
    order, _ = permute_heads(model, 0, 1, 3)
    before = head_values(lab, ps, "z_patching").mean(-1)
    after = _z(save_mutant(model, QWEN, tmp_path / "permuted"), lab, ps)
    torch.testing.assert_close(after[0], before[0, order], atol=1e-3, rtol=1e-3)  # slot s holds old head order[s]
    torch.testing.assert_close(after[1:], before[1:], atol=1e-3, rtol=1e-3)
    assert (after[0, 1] - before[0, 1]).abs() > 1.0  # slot L0H1 now holds another head


def test_ablating_a_head_zeroes_its_patching_effect(qwen_lab, tmp_path):
    from circuit.measures import head_values

    lab, ps = qwen_lab
    model = load_hf(QWEN)
    ablate(model, "head", 0, 1)
    before = head_values(lab, ps, "z_patching").mean(-1)
    after = _z(save_mutant(model, QWEN, tmp_path / "ablated"), lab, ps)
    assert after[0, 1].abs() < 1e-4 and before[0, 1].abs() > 1.0


def test_random_weights_are_seeded_and_differ_from_the_trained_model(tmp_path):
    a, b, c = random_weights(QWEN, 0).state_dict(), random_weights(QWEN, 0).state_dict(), random_weights(QWEN, 1).state_dict()
    trained = load_hf(QWEN).state_dict()
    key = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key]) and not torch.equal(a[key], trained[key])
    folder = save_mutant(random_weights(QWEN, 0), QWEN, tmp_path / "random")
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}


@pytest.mark.parametrize("kind, layer, head, message", [
    ("neuron", 0, None, "kind='neuron': ablate a 'head', an 'attn' layer or an 'mlp' layer"),
    ("head", 0, 4, "head 4 is out of range: a layer has heads 0 to 3"),
    ("mlp", 3, None, "layer 3 is out of range: the model has layers 0 to 2"),
])
def test_ablate_refuses_what_it_cannot_zero(kind, layer, head, message):
    with pytest.raises(MutantError, match=message):
        ablate(load_hf(QWEN), kind, layer, head)


def test_a_relabeling_that_moves_the_logits_is_refused(qwen_spec, tmp_path):
    from circuit.mutants.build import build_mutants

    with pytest.raises(MutantError, match=r"permuting layer 0's heads \[.*\] changed the logits by .* \(> 0\)"):
        build_mutants(QWEN, qwen_spec, claim_tests(ROOT / "claims"), tmp_path, kinds=("relabel",), n_prompt_sets=1,
                      tolerance=0.0)


# --- which tests read what -------------------------------------------------------------------------------


def test_claim_tests_read_the_fields_their_verdict_uses():
    found = {t.name: t for t in claim_tests(ROOT / "claims")}
    assert found["test_named_heads_rank_in_top_k_by_z_patching"].reads == {"heads", "top_k"}
    assert "layers" in found["test_named_attention_layers_are_positive_at_the_final_position"].reads  # via _signed
    assert "layers" not in found["test_early_attention_on_the_operands_matters_at_all"].reads  # figures only
    assert found["test_named_attention_layers_have_their_sign"].reads == {"attention_layers"}


def test_claim_tests_follow_helpers_and_leave_out_figures(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "import pytest\n"
        "def _pick(c, which):\n    return c.heads if which else c.cells\n"
        "def _fig(c):\n    return c.layers\n"
        "@pytest.mark.claim(id='x', statement='.')\n"
        "def test_x(claim, evidence):\n    evidence.record(_pick(claim, 1), claim.top_k, figures=_fig(claim))\n"
        "def test_not_a_claim(claim):\n    claim.heads\n")
    (found,) = claim_tests(tmp_path)
    assert (found.file, found.name, found.claim_id) == ("test_x.py", "test_x", "x")
    assert found.reads == {"heads", "cells", "top_k"} and "layers" not in found.attributes


# --- spec mutants ----------------------------------------------------------------------------------------


class FakeImportance:
    """Hand-made importance: head L2H3, attention layer 2 and cell (1, 'a') matter least."""

    heads = {"z_patching": torch.arange(12.0, 0, -1).reshape(3, 4), "attribution": torch.ones(3, 4)}
    attention = torch.tensor([3.0, 2.0, 1.0])
    mlp_cells = {(layer, p): 5.0 - layer for layer in range(3) for p in ("a", "b", "final")} | {(1, "a"): 0.1}

    def least_head(self, by, *, layer=None, exclude=()):
        from circuit.mutants.importance import Importance

        return Importance.least_head(self, by, layer=layer, exclude=exclude)

    def least_attention(self, exclude=()):
        from circuit.mutants.importance import Importance

        return Importance.least_attention(self, exclude)

    def least_cell(self, exclude=()):
        from circuit.mutants.importance import Importance

        return Importance.least_cell(self, exclude)


@pytest.fixture(scope="module")
def qwen_spec():
    from circuit.spec import import_claims, load_spec

    import_claims(ROOT / "claims")
    return load_spec(FROZEN_QWEN_SPEC)


def test_named_components_of_a_spec(qwen_spec):
    named = {(n.claim_id, n.label) for n in named_components(qwen_spec)}
    assert named == {("named-heads", "L0H1"), ("attn-out-by-position", "attn L0"),
                     ("mlp-out-by-position", "mlp L0 at final"), ("mlp-out-by-position", "mlp L1 at final"),
                     ("mlp-out-by-position", "mlp L2 at final")}


def test_spec_mutants_name_the_least_important_alternative_or_flip_the_sign(qwen_spec, tmp_path):
    from circuit.discover import Draft, render_spec
    from circuit.spec import load_spec

    mutants, notes = spec_mutants(qwen_spec, FakeImportance())
    by_id = {m.id: m for m in mutants}
    heads = by_id["spec-named-heads-heads-0-swap"].spec.claims["named-heads"].heads
    assert [h.head for h in heads] == ["L2H3"]
    assert by_id["spec-attn-out-by-position-layers-0-swap"].spec.claims["attn-out-by-position"].layers[0].layer == 2
    assert by_id["spec-attn-out-by-position-layers-0-flip"].spec.claims["attn-out-by-position"].layers[0].sign == "not_positive"
    cell = by_id["spec-mlp-out-by-position-cells-1-swap"].spec.claims["mlp-out-by-position"].cells[1]
    assert (cell.layer, cell.position) == (1, "a")
    assert "spec-named-heads-heads-0-flip" not in by_id  # sign 'any' states nothing to flip
    assert notes == []
    for mutant in mutants:  # every mutant is a valid spec that differs from the original in one claim only
        path = tmp_path / f"{mutant.id}.toml"
        path.write_text(render_spec(Draft(mutant.spec, {})))
        loaded = load_spec(path, n_layers=3, n_heads=4)
        assert [c for c in loaded.claims if loaded.claims[c] != qwen_spec.claims[c]] == [mutant.claim_id]


def test_a_flipped_sign_is_left_alone_in_its_field_and_only_sign_tests_must_fail():
    from circuit.spec import import_claims, load_spec

    import_claims(ROOT / "claims")
    llama = load_spec(ROOT / "tests" / "data" / "mutants-llama.toml")  # layers 1 and 2 named positive
    mutants, _ = spec_mutants(llama, FakeImportance())
    flip = {m.id: m for m in mutants}["spec-attn-out-by-position-layers-1-flip"]
    assert [(n.layer, n.sign) for n in flip.spec.claims["attn-out-by-position"].layers] == [(2, "not_positive")]
    assert spec_should_kill(claim_tests(ROOT / "claims"), flip) == {
        "test_named_attention_layers_are_positive_at_the_final_position",  # skips: no layer is named positive
        "test_named_attention_layers_are_not_positive_at_the_final_position"}


def test_spec_mutants_of_one_claim_go_to_different_rounds(qwen_spec):
    mutants, _ = spec_mutants(qwen_spec, FakeImportance())
    rounds = merge_spec_mutants(qwen_spec, mutants)
    assert len(rounds) == 3  # three cells of mlp-out-by-position
    assert sorted(m.id for _, group in rounds for m in group) == sorted(m.id for m in mutants)
    for merged, group in rounds:
        assert len({m.claim_id for m in group}) == len(group)
        for m in group:
            assert merged.claims[m.claim_id] == m.spec.claims[m.claim_id]


def test_should_kill_follows_the_components_a_test_reads(qwen_spec):
    tests = claim_tests(ROOT / "claims")
    layer0_heads = should_kill(tests, qwen_spec, lambda c: c.kind == "head" and c.layer == 0)
    assert layer0_heads == {"test_named_heads_rank_in_top_k_by_z_patching", "test_named_heads_rank_in_top_k_by_attribution",
                            "test_named_heads_have_their_stated_sign"}
    attention0 = should_kill(tests, qwen_spec, Component("attn", 0).contains)
    assert attention0 == layer0_heads | {"test_named_attention_layers_are_positive_at_the_final_position",
                                         "test_named_attention_layers_are_not_positive_at_the_final_position"}
    assert should_kill(tests, qwen_spec, Component("mlp", 2).__eq__) == {"test_named_mlp_cells_rank_in_top_k"}
    assert should_kill(tests, qwen_spec, lambda c: c.kind == "head" and c.layer == 2) == frozenset()


# --- scoring ---------------------------------------------------------------------------------------------

CLAIMS = {"t_head": "named-heads", "t_other": "task-solved", "t_skip": "named-heads", "t_id": "hf-equivalence"}
ORIGINAL = {"t_head": ("passed", None), "t_other": ("passed", None), "t_skip": ("skipped", None),
            "t_id": ("passed", None)}


@pytest.mark.parametrize("outcome, verdict, killed", [
    ("passed", None, False), ("failed", None, True), ("error", None, True), ("skipped", None, False),
    ("failed", "inconclusive", True), ("failed", "refuted", True), ("passed", "supported", False),
])
def test_a_test_kills_when_it_does_not_pass(outcome, verdict, killed):
    assert is_killed(outcome, verdict) is killed


def test_score_counts_kills_misses_and_false_kills():
    relabel = Mutant("permute", "relabel", "", frozenset({"t_head", "t_skip"}), preserves_function=True)
    ablation = Mutant("ablate", "ablation", "", frozenset({"t_head"}))
    random = Mutant("random", "random", "", frozenset({"t_head", "t_other", "t_skip"}))
    outcomes = {
        "permute": {"t_head": ("passed", None), "t_other": ("failed", None), "t_skip": ("skipped", None),
                    "t_id": ("passed", None)},
        "ablate": {"t_head": ("failed", "refuted"), "t_other": ("failed", None), "t_skip": ("skipped", None),
                   "t_id": ("passed", None)},
        "random": {"t_head": ("failed", "inconclusive"), "t_other": ("passed", None), "t_skip": ("skipped", None),
                   "t_id": ("error", None)},
    }
    result = score([relabel, ablation, random], ORIGINAL, outcomes, CLAIMS)
    rows = {t.test: t for t in result.tests}
    assert (rows["t_head"].should_kill, rows["t_head"].killed, rows["t_head"].missed) == (
        ["permute", "ablate", "random"], ["ablate", "random"], ["permute"])
    assert rows["t_other"].false_kills == ["permute"]  # passed on the original, failed on the same function
    assert rows["t_other"].other_kills == ["ablate"]  # an ablation scores only the tests naming it
    assert rows["t_other"].missed == ["random"]
    assert rows["t_skip"].should_kill == []  # skipped: not scored
    assert rows["t_id"].other_kills == ["random"]
    assert result.totals == {"should_kill": 4, "killed": 2, "false_kills": 1}
    table = render_table(result)
    assert "| **total** | | | 4 | 2 | 2 | 1 |" in table
    assert result.to_json()["totals"] == result.totals


def test_score_spec_mutants_count_tests_that_ran_only_under_the_mutated_spec():
    flip = Mutant("flip", "spec", "", frozenset({"t_skip"}), spec_only=True)
    kept = Mutant("kept", "relabel", "", frozenset(), preserves_function=True)
    outcomes = {"flip": {"t_skip": ("passed", None)}, "kept": {"t_skip": ("failed", None), "t_head": ("passed", None)}}
    result = score([flip, kept], ORIGINAL, outcomes, CLAIMS)
    rows = {t.test: t for t in result.tests}
    assert rows["t_skip"].missed == ["flip"]  # ran under the flipped spec: scored
    assert rows["t_skip"].false_kills == []  # skipped on the original: not scored on a model mutant
    assert result.totals == {"should_kill": 1, "killed": 0, "false_kills": 0}


def test_score_notes_a_mutant_without_outcomes():
    result = score([Mutant("lost", "random", "", frozenset({"t_head"}))], ORIGINAL, {}, CLAIMS)
    assert result.notes == ["lost: no outcomes (its run did not report it); not scored"]
    assert result.totals["should_kill"] == 0


# --- end to end ------------------------------------------------------------------------------------------

E2E_FILES = ["claims/test_named_heads.py", "claims/test_task_solved.py", "claims/test_attribution_completeness.py"]
Z_TEST = "test_named_heads_rank_in_top_k_by_z_patching"


@pytest.fixture(scope="module")
def qwen_mutants(tmp_path_factory):
    """Relabel, ablation and random mutants of the default model, judged by a few claim files (one pytest run)."""
    from circuit.mutants.cli import mutation_test

    return mutation_test("qwen2-mult-2d", spec_path=SPEC, root=ROOT, workdir=tmp_path_factory.mktemp("mutants"),
                         kinds=("relabel", "ablation", "random"), files=[ROOT / f for f in E2E_FILES], n_prompt_sets=1,
                         log=lambda *_: None)


def test_mutation_test_end_to_end_truth_by_construction(qwen_mutants):
    result = qwen_mutants
    ids = [m.id for m in result.mutants]
    permute = [i for i in ids if i.startswith("permute-L0H1-L0H")]
    # the shipped spec names L0H0 and L0H1 (named-heads); no attention layer (attn-out-by-position is not stated)
    assert len(permute) == 1 and sorted(ids) == sorted([*permute, "ablate-L0H0", "ablate-L0H1", "random-0"])
    assert sorted(result.notes) == [f"ablate mlp L{layer}: no claim test run here names it; not built" for layer in range(3)]
    should = {m: sorted(t.test for t in result.tests if m in t.should_kill) for m in ids}
    assert should == {permute[0]: [Z_TEST], "ablate-L0H0": [Z_TEST], "ablate-L0H1": [Z_TEST],
                      "random-0": sorted([Z_TEST, "test_clean_exceeds_corrupted_logit_difference"])}
    assert result.totals["false_kills"] == 0
    originals = {t.test: t.original for t in result.tests}
    assert originals[Z_TEST] in ("passed", "supported")
    document = result.to_json()
    assert set(document) == {"totals", "tests", "mutants", "notes"}
    assert "| **total** |" in render_table(result)


@pytest.mark.xfail(not VERDICTS_MERGED, strict=True, reason="verdicts issue 20 not merged: claims pass for lack of "
                   "evidence, so the permuted and random mutants survive")
def test_mutation_test_end_to_end_every_mutant_is_killed(qwen_mutants):
    missed = {t.test: t.missed for t in qwen_mutants.tests if t.missed}
    assert missed == {}, f"claim tests that passed on mutants they should kill: {missed}"


def test_the_command_line_refuses_a_model_it_cannot_find(capsys, monkeypatch):
    from circuit.mutants.cli import main

    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit):
        main(["--model", "no-such-model"])
    assert "--model no-such-model: no such folder or bundled model; pass a local model folder" in capsys.readouterr().err


LLAMA_FILES = ["claims/test_position_claims.py", "claims/test_task_solved.py", "claims/test_equivalence.py"]


@pytest.fixture(scope="module")
def llama_mutants(tmp_path_factory):
    """Ablation and random mutants of the second bundled model, judged by its position claims (one pytest run)."""
    from circuit.mutants.cli import mutation_test

    return mutation_test("llama-mult-2d", spec_path=ROOT / "claims" / "specs" / "llama-mult-2d.toml", root=ROOT,
                         workdir=tmp_path_factory.mktemp("llama-mutants"), kinds=("ablation", "random"),
                         files=[ROOT / f for f in LLAMA_FILES], n_prompt_sets=1, log=lambda *_: None)


def test_mutation_test_end_to_end_on_the_second_bundled_model(llama_mutants):
    """On llama-mult-2d every ablation of a component its position claims name, and random weights, are killed by
    exactly the tests that should kill them; the identities survive every mutant (no false kill)."""
    assert "random-0" in [m.id for m in llama_mutants.mutants]
    assert any(m.id.startswith("ablate-") for m in llama_mutants.mutants)
    missed = {t.test: t.missed for t in llama_mutants.tests if t.missed}
    assert missed == {}, f"claim tests that passed on mutants they should kill: {missed}"
    assert llama_mutants.totals["false_kills"] == 0
    assert llama_mutants.totals["killed"] == llama_mutants.totals["should_kill"] > 0


def test_the_claim_report_shows_the_mutation_scores_of_a_model_escaped(tmp_path):
    import json

    from fixtures.claims_html import mutation_html

    (tmp_path / "m<x>.json").write_text(json.dumps({
        "totals": {"should_kill": 3, "killed": 2, "false_kills": 0},
        "tests": [{"claim_id": "named-heads", "test": "test_a", "should_kill": ["permute", "random-0"],
                   "killed": ["random-0"], "missed": ["permute<script>"], "false_kills": []},
                  {"claim_id": "hf-equivalence", "test": "test_identity", "should_kill": [], "killed": [],
                   "missed": [], "false_kills": []}]}))
    html = mutation_html(tmp_path, ["m<x>", "no-scores"])
    assert "Mutation scores of <code>m&lt;x&gt;</code>" in html and "<script>" not in html
    assert "Should kill 3, killed 2, false kills 0." in html
    assert "<td><code>test_a</code></td><td>2</td><td>1</td><td>permute&lt;script&gt;</td><td>—</td>" in html
    assert "test_identity" not in html  # nothing to kill, nothing killed: not a row
    assert mutation_html(tmp_path, ["no-scores"]) == ""
