"""A model update: the claims of one model judged against the baseline of the model it replaces.

``--baseline-model`` is the one way to compare with another model's baseline (without it, such a baseline
is refused at session start: a baseline belongs to its model; tests/test_plugin_checks.py and
tests/test_bad_input.py check that refusal). README's walk-through itself runs here on the two bundled models,
in pytest subprocesses as a user would (about 40 s).
"""

from __future__ import annotations

import json

from test_claims_falsifiable import ROOT, run_claims

CLAIM = str(ROOT / "claims" / "test_attribution_completeness.py")
SPEC = str(ROOT / "claims" / "specs" / "test-models.toml")


def test_baseline_model_is_refused_where_it_means_nothing(tmp_path):
    for args, message in ((["--baseline-model", "test-qwen2-2l"], "needs --baseline PATH"),
                          (["--baseline-model", "test-qwen2-2l", "--update-baseline"], "cannot be combined with "
                                                                                      "--update-baseline")):
        result, _ = run_claims(tmp_path, CLAIM, "--claims-spec", SPEC, "--model", "test-llama", *args)
        assert result.returncode == 4 and message in result.stdout + result.stderr, result.stdout[-2000:]


def test_readmes_model_update_holds_every_claim_that_holds_and_accounts_for_every_baseline_record(tmp_path):
    """README's walk-through on the bundled models: qwen2-mult-2d's baseline judges llama-mult-2d. Their specs
    state some claims with other parameters (late layers from 1 and from 2): those are not comparable, never
    regressions; every claim supported on llama-mult-2d passes; the counts add up to the baseline's records,
    and are those README shows."""
    from circuit.spec import import_claims, load_spec, measured_with

    baselines = tmp_path / "baselines"
    first, _ = run_claims(tmp_path / "first", str(ROOT / "claims"), "--model", "qwen2-mult-2d", "--update-baseline",
                          "--baseline", str(baselines), "-p", "no:html")
    assert first.returncode == 0, first.stdout[-3000:]
    update, evidence = run_claims(tmp_path / "update", str(ROOT / "claims"), "--model", "llama-mult-2d", "--baseline",
                                  str(baselines), "--baseline-model", "qwen2-mult-2d", "--baseline-missing=warn",
                                  "-p", "no:html")
    out = update.stdout + update.stderr
    assert update.returncode == 0, out[-3000:]
    assert "model update: llama-mult-2d compared with the baseline of qwen2-mult-2d" in out, out[-3000:]
    records = {c["test"]: c for c in evidence["llama-mult-2d"]["claims"]}
    assert all(c["outcome"] == "passed" for c in records.values() if c["verdict"] == "supported")
    baseline = {c["test"]: c for c in json.loads((baselines / "qwen2-mult-2d.json").read_text())["claims"]}

    import_claims(ROOT / "claims")
    specs = [load_spec(ROOT / "claims" / "specs" / f"{name}.toml") for name in ("qwen2-mult-2d", "llama-mult-2d")]
    differ = {t for t, c in baseline.items() if t in records and records[t]["comparison"] is not None and
              len({json.dumps(measured_with(s.claims[c["claim_id"]], s.prompts)) for s in specs}) == 2}
    assert differ  # the specs state late layers from 1 and from 2
    status = {t: c["comparison"]["status"] for t, c in records.items() if c["comparison"]}
    assert {t for t, s in status.items() if s == "not-comparable"} == differ
    assert all(records[t]["comparison"]["baseline_estimate"] is None for t in differ)  # no number borrowed
    dropped = {t for t in baseline if status.get(t) in (None, "no-baseline")}
    assert "test_named_heads_rank_in_top_k_by_z_patching" in dropped  # llama-mult-2d's spec does not state it
    counts = {s: list(status.values()).count(s) for s in ("regressed", "improved", "unchanged", "not-comparable",
                                                          "no-baseline")}
    compared = counts["regressed"] + counts["improved"] + counts["unchanged"]
    assert compared + counts["not-comparable"] + len(dropped) == len(baseline)
    summary = (f"{len(baseline)} baseline records: {compared} compared ({counts['regressed']} regressed, "
               f"{counts['improved']} improved, {counts['unchanged']} unchanged), {counts['not-comparable']} not "
               f"comparable, {len(dropped)} dropped")
    assert summary in out, out[-3000:]
    assert f"; {counts['no-baseline']} claim tests without a baseline record" in out
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"{summary} ({'; '.join(f'{t}: skipped' for t in baseline if t in dropped)}); {counts['no-baseline']} claim tests" in readme
