"""A model update: the claims of one model judged against the baseline of the model it replaces.

``--baseline-model`` is the one way to compare with another model's baseline (without it, such a baseline
is refused at session start: a baseline belongs to its model). Runs the fast claim (attribution
completeness) on two tiny test models of different architectures, in pytest subprocesses as a user would.
"""

from __future__ import annotations

from test_claims_falsifiable import ROOT, run_claims

CLAIM = str(ROOT / "claims" / "test_attribution_completeness.py")
SPEC = str(ROOT / "claims" / "specs" / "test-models.toml")


def test_a_baseline_of_one_model_judges_another_with_baseline_model(tmp_path):
    baselines = tmp_path / "baselines"
    first, _ = run_claims(tmp_path / "first", CLAIM, "--claims-spec", SPEC, "--model", "test-qwen2-2l",
                          "--update-baseline", "--baseline", str(baselines), "-p", "no:html")
    assert first.returncode == 0, first.stdout[-3000:]
    assert (baselines / "test-qwen2-2l.json").exists()

    refused, _ = run_claims(tmp_path / "refused", CLAIM, "--claims-spec", SPEC, "--model", "test-llama",
                            "--baseline", str(baselines / "test-qwen2-2l.json"), "-p", "no:html")
    assert refused.returncode == 4, refused.stdout[-3000:]  # a usage error: the baseline of another model
    assert "is the baseline of model 'test-qwen2-2l', not of 'test-llama'" in refused.stdout + refused.stderr

    update, evidence = run_claims(tmp_path / "update", CLAIM, "--claims-spec", SPEC, "--model", "test-llama",
                                  "--baseline", str(baselines), "--baseline-model", "test-qwen2-2l", "-p", "no:html")
    out = update.stdout + update.stderr
    assert "model update: test-llama compared with the baseline of test-qwen2-2l" in out, out[-3000:]
    assert evidence["test-llama"]["claims"], out[-3000:]
    assert "compared, 0 without a baseline" in out, out[-3000:]  # every claim test met its baseline record


def test_baseline_model_is_refused_where_it_means_nothing(tmp_path):
    for args, message in ((["--baseline-model", "test-qwen2-2l"], "needs --baseline PATH"),
                          (["--baseline-model", "test-qwen2-2l", "--update-baseline"], "cannot be combined with "
                                                                                      "--update-baseline")):
        result, _ = run_claims(tmp_path, CLAIM, "--claims-spec", SPEC, "--model", "test-llama", *args)
        assert result.returncode == 4 and message in result.stdout + result.stderr, result.stdout[-2000:]
