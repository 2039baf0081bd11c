"""Fixtures shared by the unit tests of circuit/."""

import pytest

from fixtures.test_models import QWEN_FOLDER


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """The real Qwen2.5-0.5B tokenizer (vendored files, offline). Read-only."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(QWEN_FOLDER, local_files_only=True)


@pytest.fixture(scope="session")
def new_claim_runs(tmp_path_factory):
    """The claim files of tests/test_claims_sizes.py and tests/test_claims_source_readings.py, run as a user runs
    them (a pytest subprocess) once under both modules' false specs on the default model and once under both
    true specs on the two 3-layer bundled models: ``{"false": (result, evidence), "true": (result, evidence)}``.
    One run per spec instead of one per module and spec (the suite's time); each test reads its own records."""
    import test_claims_sizes as sizes
    import test_claims_source_readings as readings
    from test_claims_falsifiable import ROOT, run_claims

    from fixtures.claims_session import DEFAULT_MODELS

    files = [*map(str, sizes.FILES.values()), *(str(ROOT / "claims" / f"test_{stem}.py") for stem in readings.FILES)]
    runs = {}
    for name, models in (("false", [DEFAULT_MODELS[0]]), ("true", [DEFAULT_MODELS[0], readings.SECOND])):
        tables = (getattr(sizes, name.upper()).removeprefix(sizes.HEADER)
                  + getattr(readings, name.upper()).removeprefix(readings.HEADER))
        tmp = tmp_path_factory.mktemp(f"new-claims-{name}")
        (tmp / "spec.toml").write_text(readings.HEADER + tables)
        runs[name] = run_claims(tmp, *files, "--claims-spec", str(tmp / "spec.toml"),
                                *(f"--model={m}" for m in models), "-p", "no:html")
    return runs


@pytest.fixture(scope="session")
def failing_claims_run(tmp_path_factory):
    """``(folder, result, evidence)`` of claims/ run as a user runs it under tests/test_claim_messages.py's
    ``SPEC`` (thresholds the default model cannot meet) on the default model and a blind copy of it. Read by
    tests/test_claim_messages.py (every message short) and tests/test_claims_head_bands.py (the band claims
    refuted): one run for both."""
    from test_claim_messages import SPEC
    from test_claims_falsifiable import ROOT, no_information_model, run_claims

    tmp = tmp_path_factory.mktemp("messages")
    (tmp / "spec.toml").write_text(SPEC)
    blind = no_information_model(str(ROOT / "fixtures" / "models" / "qwen2-mult-2d"), tmp / "no-information")
    result, evidence = run_claims(tmp, str(ROOT / "claims"), "--claims-spec", str(tmp / "spec.toml"), "--model",
                                  "qwen2-mult-2d", "--model", str(blind), "-p", "no:html")
    return tmp, result, evidence
