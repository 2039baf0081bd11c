"""The mutation test end to end: build the mutants, run the claims on them, score, write the table and JSON.

All model mutants and the original are judged in one pytest run under the original spec; spec mutants in
as few runs as there are mutants of one claim (``circuit.mutants.build.merge_spec_mutants``), each run on
the claim files that hold the mutated claims' tests only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from circuit.mutants.build import KINDS, build_mutants, merge_spec_mutants
from circuit.mutants.scoring import Score, render_table, score

__all__ = ["main", "mutation_test", "resolve_model"]


def resolve_model(name: str, root: Path) -> Path:
    """The folder of ``name``: a folder, or a bundled model's name (``fixtures/models/<name>``)."""
    if Path(name).is_dir():
        return Path(name).resolve()
    bundled = root / "fixtures" / "models" / name
    if (bundled / "config.json").is_file():
        return bundled.resolve()
    raise FileNotFoundError(f"--model {name}: no such folder or bundled model; pass a local model folder "
                            f"(config.json + model.safetensors) or a name in {root / 'fixtures' / 'models'}.")


def mutation_test(model: str | Path, *, spec_path: str | Path | None = None, root: str | Path = ".",
                  workdir: str | Path | None = None, kinds: Sequence[str] = KINDS,
                  files: Sequence[str | Path] | None = None, seed: int = 0, n_prompt_sets: int = 2,
                  log=print) -> Score:
    """Build the mutants of ``model`` (a folder) and its spec, run the claims on them and score them."""
    from circuit.discover import Draft, render_spec
    from circuit.mutants.reads import claim_tests
    from circuit.mutants.run import run_claims
    from circuit.spec import find_spec, import_claims, load_spec

    root = Path(root).resolve()
    folder = resolve_model(str(model), root)
    claims_dir = root / "claims"
    files = [Path(f).resolve() for f in files] if files else sorted(claims_dir.glob("test_*.py"))
    import_claims(claims_dir)
    spec_path = Path(spec_path).resolve() if spec_path else find_spec(folder.name, claims_dir / "specs")
    spec = load_spec(spec_path)
    tests = [t for f in files for t in claim_tests(f)]
    claim_ids = {t.name: t.claim_id for t in tests}
    with tempfile.TemporaryDirectory(prefix="mutants-") as scratch:
        work = Path(workdir) if workdir else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        plan = build_mutants(folder, spec, tests, work, kinds=kinds, n_prompt_sets=n_prompt_sets, seed=seed)
        log(f"built {len(plan.models)} model and {len(plan.specs)} spec mutants in {time.monotonic() - started:.0f} s")
        started = time.monotonic()
        models = [folder, *(path for _, path in plan.models)]
        ran = run_claims(models, spec_path, work / "reports-models", files=files, root=root)
        log(f"judged {len(models)} models under {spec_path.name} in {time.monotonic() - started:.0f} s")
        original = ran[folder.name]
        outcomes = {m.id: ran[path.name] for m, path in plan.models}
        by_id = {s.id: m for m, s in plan.specs}
        for i, (merged, group) in enumerate(merge_spec_mutants(spec, [s for _, s in plan.specs])):
            path = work / f"spec-round-{i}.toml"
            path.write_text(render_spec(Draft(merged, {}), header=f"Spec mutants: {[m.id for m in group]}"))
            involved = {m.claim_id for m in group}
            round_files = [f for f in files if any(t.claim_id in involved for t in claim_tests(f))]
            started = time.monotonic()
            got = run_claims([folder], path, work / f"reports-spec-{i}", files=round_files, root=root)[folder.name]
            log(f"judged spec round {i} ({len(group)} mutants) in {time.monotonic() - started:.0f} s")
            for m in group:
                outcomes[by_id[m.id].id] = {t: o for t, o in got.items() if claim_ids.get(t) == m.claim_id}
        mutants = [m for m, _ in plan.models] + [m for m, _ in plan.specs]
        return score(mutants, original, outcomes, claim_ids, plan.notes)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = argparse.ArgumentParser(prog="python -m circuit.mutants", description=(
        "Mutation testing of the claims: build model and spec mutants whose truth is known by construction, run "
        "the claims on each and report, per claim test, the mutants it should kill, those it killed, and false "
        "kills on function-preserving mutants."))
    parser.add_argument("--model", required=True, help="a local model folder or a bundled model's name")
    parser.add_argument("--spec", type=Path, help="the claim spec (default: the spec in claims/specs/ matching the model)")
    parser.add_argument("--out", type=Path, help="write the scores as JSON here (reports/mutants/<model>.json: the "
                        "claim report shows them)")
    parser.add_argument("--table", type=Path, help="write the markdown table here (it is printed too)")
    parser.add_argument("--workdir", type=Path, help="keep the mutant folders, specs and reports here (default: temporary)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS), help="which mutants to build")
    parser.add_argument("--files", nargs="+", type=Path, help="claim files to run (default: every claims/test_*.py)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random-weight mutant and the prompt sets")
    parser.add_argument("--prompt-sets", type=int, default=2, help="prompt sets that importance is measured on")
    args = parser.parse_args(argv)
    root = Path.cwd()
    if not (root / "claims").is_dir():
        parser.error(f"no claims/ folder in {root}: run python -m circuit.mutants from the repository root.")
    if args.spec is not None and not args.spec.is_file():
        parser.error(f"--spec {args.spec}: no such file; pass a spec from claims/specs/.")
    try:
        folder = resolve_model(args.model, root)
    except FileNotFoundError as error:
        parser.error(str(error))
    from circuit.mutants.run import ClaimsRunError
    from circuit.mutants.weights import MutantError
    from circuit.spec import SpecError

    try:
        result = mutation_test(folder, spec_path=args.spec, root=root, workdir=args.workdir, kinds=args.kinds,
                               files=args.files, seed=args.seed, n_prompt_sets=args.prompt_sets)
    except (SpecError, MutantError) as error:
        parser.error(str(error))
    except ClaimsRunError as error:
        print(f"python -m circuit.mutants: {error}", file=sys.stderr)
        return 1
    table = render_table(result)
    print(table, end="")
    if args.table:
        args.table.write_text(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(result.dumps() + "\n")
        print(f"wrote {args.out}")
    return 0
