"""Every dtype: the library runs on bfloat16 and float16 models, reads in float32, and agrees with float32.

The tiny test model ``test-qwen2-2l`` is loaded three times (float32, bfloat16, float16). Direct logit
attribution, the logit lens, attention summaries and the Lab's metric reads must come back in float32
whatever the model's dtype, and agree with the float32 model's within :data:`AGREE` (largest differences
measured on this model over 20 prompt sets: bfloat16 6.3e-3, float16 1.3e-3; the bounds sit about 3x
above). The spec's per-dtype values (``circuit.spec.PerDtype``) parse, validate and resolve.
"""

from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings

from circuit import measures
from circuit.attention import summarize_attention
from circuit.attribution import head_attribution, layer_attribution, logit_lens, residual_directions
from circuit.lab import Lab
from circuit.metrics import seed_logit_diff
from circuit.prompts import tokenize_prompts
from circuit.spec import DTYPES, KNOWN_CLAIMS, PerDtype, SpecError, load_spec
from circuit.strategies import prompt_sets
from fixtures.test_models import QWEN_FOLDER

SPECS = Path(__file__).resolve().parent.parent / "claims" / "specs"
LOW = ("bfloat16", "float16")
AGREE = PerDtype(float32=1e-5, bfloat16=2e-2, float16=4e-3)
"""How far a low-precision model's reads may be from the float32 model's (and from its own logits)."""
AGREE_SWEEP = PerDtype(float32=1e-5, bfloat16=4e-2, float16=6e-3)
"""The same for patching effects, differences of two runs (largest measured: bfloat16 1.4e-2, float16 1.9e-3)."""

SETTINGS = settings(max_examples=3, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN_FOLDER, local_files_only=True)


PROMPTS = prompt_sets(_tokenizer(), min_size=8, max_size=8, max_digits=3)


@pytest.fixture(scope="module")
def models(test_model_folder):
    """``test-qwen2-2l`` in every dtype, by name (module-scoped, read-only)."""
    from circuit.models import load_model

    folder = test_model_folder("test-qwen2-2l")
    return {d: load_model(folder, dtype=d, device="cpu", with_hf_reference=False) for d in DTYPES}


def _reads(model, prompt_set):
    """Attributions, logit lens, attention summaries and the metric on one prompt set."""
    tokenizer = model.tokenizer
    batch = tokenize_prompts(tokenizer, [p.prompt for p in prompt_set.clean])
    metric = seed_logit_diff(tokenizer, batch, list(prompt_set.clean), list(prompt_set.incorrect))
    with torch.no_grad():
        logits, cache = model.bridge.run_with_cache(batch.tokens)
    directions = residual_directions(model, metric)
    heads = head_attribution(model, cache, directions)
    attention = summarize_attention(model, batch, cache=cache, query="all")
    return {
        "metric": metric(logits.float()),
        "heads": heads.values,
        "heads total": heads.total,
        "layers": layer_attribution(model, cache, directions).values,
        "logit lens": logit_lens(model, cache, directions).values,
        "logit lens (recomputed norm)": logit_lens(model, cache, directions, ln="recompute").values,
        "attention to BOS": attention.to_bos,
        "normalized entropy": attention.normalized_entropy,
    }


@pytest.mark.parametrize("dtype", LOW)
@SETTINGS
@given(prompt_set=PROMPTS)
def test_attribution_and_attention_read_in_float32_and_agree_with_float32(models, dtype, prompt_set):
    model = models[dtype]
    assert model.bridge.cfg.dtype == getattr(torch, dtype)
    low, reference = _reads(model, prompt_set), _reads(models["float32"], prompt_set)
    atol = AGREE.at(dtype)
    for name, values in low.items():
        assert values.dtype == torch.float32, f"{name} is {values.dtype} on a {dtype} model; expected float32"
        error = (values - reference[name]).abs().max().item()
        assert error <= atol, f"{name}: max |{dtype} - float32| = {error:.3g} > {atol:g}"
    gap = (low["heads total"] - low["metric"]).abs().max().item()
    assert gap <= atol, f"{dtype}: attributions sum to the model's own logit difference within {gap:.3g} > {atol:g}"


@pytest.mark.parametrize("dtype", DTYPES)
@SETTINGS
@given(prompt_set=PROMPTS)
def test_the_lab_reads_every_dtype_in_float32(models, dtype, prompt_set):
    """The Lab's metric reads and attribution statistics run, in float32, and agree with the float32 Lab."""
    spec = load_spec(SPECS / "test-models.toml")
    labs = {d: Lab(models[d], spec) for d in (dtype, "float32")}
    atol = AGREE.at(dtype)
    reads = {}
    for d, lab in labs.items():
        clean, corrupted = lab.logit_diffs(prompt_set)
        reads[d] = {"clean": clean, "corrupted": corrupted,
                    "attribution": measures.head_values(lab, prompt_set, "attribution"),
                    "to BOS": lab.attention(prompt_set).to_bos,
                    "separation": lab.task_separation(prompt_set).estimate}
    for name, values in reads[dtype].items():
        assert values.dtype in (torch.float32, torch.float64), f"lab {name} is {values.dtype} on a {dtype} model"
        error = (values.double() - reads["float32"][name].double()).abs().max().item()
        assert error <= atol, f"lab {name}: max |{dtype} - float32| = {error:.3g} > {atol:g}"


# --- the spec's per-dtype values ----------------------------------------------------------------------

SPEC = """
[model]
match = ["tiny"]
[statistics]
level = 0.95
n_resamples = 200
[prompts]
min_size = 8
max_size = 8
min_digits = 2
max_digits = 3
corruptions = ["same_length"]
[claims.attribution-completeness]
tolerance = 1e-4
"""


def _load(tmp_path, atol_line):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC + atol_line + "\n")
    return load_spec(path).claims["attribution-completeness"]


def test_a_per_dtype_table_gives_each_dtype_its_value(tmp_path):
    claim = _load(tmp_path, "atol = {float32 = 1e-4, bfloat16 = 0.25, float16 = 3e-2}")
    assert claim.atol == PerDtype(float32=1e-4, bfloat16=0.25, float16=0.03)
    assert claim.atol.at(torch.bfloat16) == 0.25 and claim.atol.at("float16") == 0.03
    assert claim.atol.at(torch.float32) == claim.atol.at(torch.float64) == 1e-4


def test_one_number_holds_at_every_dtype_and_a_missing_field_takes_the_default(tmp_path):
    assert _load(tmp_path, "atol = 0.5").atol == PerDtype(0.5, 0.5, 0.5)
    default = _load(tmp_path, "").atol
    assert default.at(torch.float32) < default.at(torch.float16) < default.at(torch.bfloat16)


@pytest.mark.parametrize("line, error", [
    ("atol = {float32 = 1e-4, bfloat16 = 0.25}",
     r"\[claims\.attribution-completeness\.atol\] a per-dtype table needs exactly the keys "
     r"\['float32', 'bfloat16', 'float16'\]; unknown \[\], missing \['float16'\]"),
    ("atol = {float32 = 1e-4, bfloat16 = 0.25, float16 = 0.03, fp8 = 1}", r"unknown \['fp8'\], missing \[\]"),
    ("atol = {float32 = 1e-4, bfloat16 = \"big\", float16 = 0.03}",
     r"\[claims\.attribution-completeness\.atol\.bfloat16\] must be a number"),
    ("atol = \"small\"", r"\[claims\.attribution-completeness\.atol\] must be a number or a table of one number per "
                         r"dtype"),
    ("atol = {float32 = 1e-4, bfloat16 = -0.25, float16 = 0.03}",
     r"\[claims\.attribution-completeness\.atol\] must be >= 0 at every dtype"),
])
def test_a_bad_per_dtype_value_names_the_key(tmp_path, line, error):
    with pytest.raises(SpecError, match=error):
        _load(tmp_path, line)


def test_a_dtype_without_a_value_is_refused():
    with pytest.raises(ValueError, match=r"No value for dtype torch\.int8"):
        PerDtype(1e-4, 0.25, 0.03).at(torch.int8)


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_specs_state_precision_dependent_bounds_per_dtype(path):
    """Low precision never gets a tighter bound than float32 in a shipped spec."""
    spec = load_spec(path)
    for claim_id, claim in spec.claims.items():
        assert isinstance(claim, KNOWN_CLAIMS[claim_id])
        for name, value in vars(claim).items():
            if isinstance(value, PerDtype):
                assert min(value.at(d) for d in LOW) >= value.at("float32"), f"{path.name}: {claim_id}.{name} = {value}"


def test_the_lab_subtracts_patching_effects_in_float64():
    """Effects of a low-precision sweep are differences of float64 values, not rounded bfloat16 differences."""
    from types import SimpleNamespace

    per_prompt = torch.tensor([[256.0, 3.0]], dtype=torch.bfloat16)
    corrupted = torch.tensor([1.0078125, 1.0], dtype=torch.bfloat16)  # both exact in bfloat16
    assert (per_prompt - corrupted).tolist() == [[255.0, 2.0]]  # the bfloat16 difference rounds
    effects = Lab.effects(None, SimpleNamespace(per_prompt=per_prompt, corrupted=corrupted))
    assert effects.dtype == torch.float64
    assert effects.tolist() == [[254.9921875, 2.0]]


@pytest.mark.parametrize("dtype", LOW)
@settings(SETTINGS, max_examples=1)
@given(prompt_set=PROMPTS)
def test_the_labs_patching_sweeps_run_in_every_dtype_and_agree_with_float32(models, dtype, prompt_set):
    """Activation and attribution patching through the Lab: float effects that agree with the float32 model's."""
    spec = load_spec(SPECS / "test-models.toml")
    labs = {d: Lab(models[d], spec) for d in (dtype, "float32")}
    atol = AGREE_SWEEP.at(dtype)
    for site, method in (("resid_pre", "activation"), ("z", "activation"), ("v", "activation"),
                         ("pattern", "activation"), ("mlp_out", "attribution")):
        low, reference = (labs[d].effects(labs[d].patch(prompt_set, site, method)) for d in (dtype, "float32"))
        error = (low - reference).abs().max().item()
        assert error <= atol, f"{site} {method} patching effects: max |{dtype} - float32| = {error:.3g} > {atol:g}"
