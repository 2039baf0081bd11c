"""Claim discovery reproduces the spec shipped for the bundled default model, and renders valid specs."""

from dataclasses import replace
from pathlib import Path

import pytest

from circuit.discover import DiscoveryOptions, discover, render_spec
from circuit.models import load_model
from circuit.spec import import_claims, load_spec
from fixtures.claims_session import BUNDLED_MODELS, CLAIMS_DIR, DEFAULT_MODELS

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = BUNDLED_MODELS / DEFAULT_MODELS[0]
SHIPPED_SPEC = ROOT / "claims" / "specs" / f"{DEFAULT_MODELS[0]}.toml"


@pytest.fixture(scope="module", autouse=True)
def claims_declared():
    """Every claim of claims/ (their parameters and drafters) is known, as when discovery runs on claims/."""
    import_claims(CLAIMS_DIR)


@pytest.fixture(scope="module")
def default_model():
    return load_model(DEFAULT_MODEL, device="cpu", with_hf_reference=False)


@pytest.fixture(scope="module")
def rediscovered(default_model, tmp_path_factory):
    """The draft that discovery writes today for the default model, with the shipped spec's prompt settings."""
    shipped = load_spec(SHIPPED_SPEC)
    options = DiscoveryOptions(prompts=shipped.prompts, statistics=shipped.statistics)
    draft = discover(default_model, options, match=shipped.model.match)
    path = tmp_path_factory.mktemp("discovery") / "draft.toml"
    path.write_text(render_spec(draft))
    return shipped, load_spec(path, n_layers=default_model.bridge.cfg.n_layers,
                              n_heads=default_model.bridge.cfg.n_heads)


def test_discovery_reproduces_the_shipped_spec(rediscovered):
    """What the shipped spec marks ``origin = "discovery"`` is exactly what discovery drafts today; claims
    stated by hand (``origin = "hand"``) are the researcher's and are not compared."""
    shipped, draft = rediscovered
    discovered = {claim_id: claim for claim_id, claim in shipped.claims.items() if claim.origin == "discovery"}
    assert sorted(draft.claims) == sorted(discovered)
    for claim_id, claim in discovered.items():
        assert draft.claims[claim_id] == claim, f"{claim_id}: discovery gives {draft.claims[claim_id]}, shipped {claim}"
    assert replace(draft, path=shipped.path, claims=discovered) == replace(shipped, claims=discovered)
    assert all(claim.origin == "discovery" for claim in draft.claims.values())


def test_discovery_states_only_what_holds_on_a_random_model(test_models):
    """A random-weight model does not separate clean from corrupted answers: no circuit claim is drafted."""
    shipped = load_spec(SHIPPED_SPEC)
    prompts = replace(shipped.prompts, metric="seed", min_size=8, max_size=8)
    draft = discover(test_models["test-qwen2-2l"], DiscoveryOptions(prompts=prompts, n_prompt_sets=2),
                     match=["test-qwen2-2l"])
    assert sorted(draft.spec.claims) == ["attribution-completeness", "hf-equivalence"]
    assert "task-solved" in draft.notes and "not stated" in draft.notes["task-solved"]
    assert "# task-solved: not stated" in render_spec(draft)


@pytest.mark.parametrize(("arguments", "message"), [
    (["--max-digits", "0"], "--max-digits 0 is out of range: operands have 1 to 9 digits."),
    (["--min-digits", "10"], "--min-digits 10 is out of range: operands have 1 to 9 digits."),
    (["--min-digits", "3", "--max-digits", "2"], "--min-digits 3 is larger than --max-digits 2."),
    (["--min-size", "1", "--max-size", "1"], "--min-size 1 is too small: the claims' intervals need at least 5 "
                                             "distinct prompts"),
    (["--min-size", "20", "--max-size", "16"], "--min-size 20 is larger than --max-size 16."),
    (["--prompt-sets", "0"], "--prompt-sets 0: measure at least 1 prompt set"),
    (["--device", "nosuchdev"], "--device: Unknown device 'nosuchdev': use 'auto'"),
])
def test_bad_arguments_are_one_line_usage_errors(capsys, arguments, message):
    from circuit.discover import main

    with pytest.raises(SystemExit) as caught:
        main(["--model", str(DEFAULT_MODEL), *arguments])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert f"python -m circuit.discover: error: {message}" in err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("python -m circuit.discover: error:")


@pytest.mark.parametrize(("name", "message"), [
    ("/no/such/model", "--model: Model '/no/such/model' looks like a local path, but no such folder exists."),
    ("no-org/no-model", "--model: Model 'no-org/no-model' is not available: HF_HUB_OFFLINE is set"),
])
def test_a_missing_model_is_a_one_line_usage_error(capsys, monkeypatch, name, message):
    from circuit.discover import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SystemExit) as caught:
        main(["--model", name])
    assert caught.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"python -m circuit.discover: error: {message}")


def test_a_broken_model_folder_is_a_one_line_usage_error(capsys, tmp_path):
    from circuit.discover import main

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as caught:
        main(["--model", str(tmp_path)])
    assert caught.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        f"python -m circuit.discover: error: --model: Model folder '{tmp_path}' has no tokenizer files and no "
        f"*.safetensors weights")
