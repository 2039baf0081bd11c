"""Claim discovery: measure a model and freeze what was found into a draft claim spec.

``python -m circuit.discover --model PATH`` runs the sweeps every claim reads (residual-stream, attention
and MLP patching, per-head z / value / pattern patching, direct logit attribution, attention summaries)
on a few prompt sets drawn, deterministically, from the same distribution the claims draw from, and writes a
TOML spec (``circuit.spec``) that states what holds on *every* measured set, with margins:

- thresholds are drafted with the claims' own rule (``circuit.decision``) at the level a claim test is
  judged at under the most demanding profile (``n_sets`` sets, Bonferroni at the spec's family-wise
  level): a lower bound is floored to ``grid`` below the smallest per-set CI low minus ``margin`` (an upper
  bound is ceiled likewise), so the claim's statistic lies beyond its threshold on every measured set even
  at that level, and a re-run on other prompts of the same distribution passes at the stated rate, while a
  real change of the circuit fails;
- a claim whose statistic does not hold on the measured sets is *not stated*; the draft says why, with
  the numbers, in a comment (a claim the model does not support is not a regression test);
- each claim's baseline ``tolerance`` is half the median width of its statistic's measured CIs (at the
  spec's ``level``, 95%).

The same statistics as the claims are used (``circuit.lab.Lab``), so a spec written here is judged by the
claims exactly as it was measured. Review the draft before shipping it: discovery finds, a researcher
decides what it means.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuit import measures
from circuit.decision import FamilyWise, Rule
from circuit.drafts import DRAFTERS, DraftContext, drafts
from circuit.spec import (
    AttributionCompletenessClaim,
    FinalTokenLocalizationClaim,
    HfEquivalenceClaim,
    MlpOverAttentionClaim,
    ModelSpec,
    NamedHead,
    NamedHeadsClaim,
    PromptSpec,
    Spec,
    StatisticsSpec,
    TaskSolvedClaim,
    ValuePlusPatternClaim,
)

__all__ = ["DRAFTERS", "DiscoveryOptions", "DraftContext", "discover", "draft_rule", "drafts", "draw_prompt_sets",
           "render_spec", "main"]


@dataclass(frozen=True)
class DiscoveryOptions:
    """How discovery measures and how far its thresholds stay from what it measured."""

    prompts: PromptSpec
    statistics: StatisticsSpec = StatisticsSpec(level=0.95, n_resamples=1000)
    n_prompt_sets: int = 5
    """Prompt sets measured; thresholds hold on all of them."""
    n_sets: int = 50
    """Prompt sets a claim test is judged on under the most demanding profile (hypothesis' ``thorough``:
    ``max_examples=50``): thresholds and what is stated are judged at its per-set level."""
    n_heads_named: int = 3
    """How many of the top heads (by |z patching|) the draft names."""
    margin: float = 0.15
    """Distance between a measured CI bound and the threshold written."""
    grid: float = 0.05
    """Thresholds are rounded outward to this grid (so re-running discovery gives the same numbers)."""
    min_recovery: float = 0.5
    """A layer counts as 'late' for localization when final-position recovery from it on is at least this..."""
    max_other_recovery: float = 0.5
    """...and no other position recovers more than this."""
    rank_margin: int = 1
    """``top_k`` is the worst measured rank (CI high) plus this."""
    max_rank_fraction: float = 0.25
    """A head is named only if its worst rank stays within this fraction of all heads (else naming it says
    nothing: every head is in the top-k when k is most heads)."""


@dataclass
class Draft:
    """A discovered spec: the claims stated, and why the others are not."""

    spec: Spec
    notes: dict[str, str] = field(default_factory=dict)


def _floor(x: float, grid: float) -> float:
    return round(math.floor(x / grid + 1e-9) * grid, 6)


def _ceil(x: float, grid: float) -> float:
    return round(math.ceil(x / grid - 1e-9) * grid, 6)


def draft_rule(kind: str, intervals: Sequence[Any], margin: float, grid: float, name: str = "") -> Any:
    """The claims' ``Rule(kind, threshold)`` with the threshold ``margin`` beyond the near end of every
    measured interval (below the lowest CI low for ``>=``, above the highest CI high for ``<=``), rounded
    outward to ``grid``; checked to hold on every interval."""

    if kind in (">=", ">"):
        threshold = _floor(min(float(i.low) for i in intervals) - margin, grid)
    else:
        threshold = _ceil(max(float(i.high) for i in intervals) + margin, grid)
    rule = Rule(kind, threshold, name)
    if not all(rule.holds(i) for i in intervals):  # cannot happen: the far end lies beyond the near end
        raise AssertionError(f"drafted {rule.text} does not hold on a measured set")
    return rule


def draw_prompt_sets(lab: Any, n: int, *, seed: int = 0, max_tries: int = 10_000) -> list[Any]:
    """``n`` prompt sets within the lab's spec that the claims would measure on, drawn with seeded Python
    randomness (the same on every run and in every process; hypothesis' own draws depend on what it ran
    before). Sets alternate between both operand orders and independent operands, as the claims' do."""
    import random

    from circuit.prompts import corrupt_reversed, corrupt_same_length
    from circuit.strategies import PromptSet
    from circuit.task import Problem, perturbations

    p = lab.spec.prompts
    drawn: list[Any] = []
    for attempt in range(max_tries):
        if len(drawn) == n:
            return drawn
        rng = random.Random(f"{seed}:{attempt}")
        size = rng.randint(p.min_size, p.max_size)
        both_orders = attempt % 2 == 0
        na = rng.randint(p.min_digits, p.max_digits)
        nb = na if both_orders else rng.randint(p.min_digits, p.max_digits)
        clean: list[Problem] = []
        while len(clean) < size:
            pair = Problem(rng.randrange(10 ** (na - 1), 10**na), rng.randrange(10 ** (nb - 1), 10**nb))
            clean += [pair, pair.swapped()] if both_orders else [pair]
        clean = clean[:size]
        options = [perturbations(q.product) for q in clean]
        if not all(options):
            continue
        incorrect = tuple(o[rng.choice(sorted(o))] for o in options)
        corruption = p.corruptions[attempt % len(p.corruptions)]
        if corruption == "reversed":
            corrupted = corrupt_reversed(clean)
            if any(c.product == x.product for c, x in zip(clean, corrupted)):
                continue
        else:
            corrupted = corrupt_same_length(clean, seed=rng.randrange(2**16))
        prompt_set = PromptSet(tuple(clean), incorrect, tuple(corrupted), corruption)
        if lab.accepts(prompt_set) and prompt_set not in drawn:
            drawn.append(prompt_set)
    raise RuntimeError(f"Only {len(drawn)} acceptable prompt sets in {max_tries} tries (asked {n}); widen the prompts.")


def width_of(intervals: Sequence[Any]) -> float:
    """Half the median width of some intervals (0 for none): the statistic's noise, for a baseline tolerance."""
    import statistics

    return statistics.median(float(i.high - i.low) for i in intervals) / 2 if intervals else 0.0


def discover(model: Any, options: DiscoveryOptions, *, match: Sequence[str]) -> Draft:
    """Measure ``model`` (a ``circuit.models.LoadedModel``) and return the draft spec."""
    from dataclasses import replace

    from circuit.lab import Lab
    from circuit.stats import NonFiniteError

    cfg = model.bridge.cfg
    n_layers, n_heads = cfg.n_layers, cfg.n_heads
    base = Spec(path=Path("<discovery>"), model=ModelSpec(match=tuple(match), n_layers=n_layers, n_heads=n_heads),
                statistics=options.statistics, prompts=options.prompts, claims={})
    spread = Lab(model, base)  # the spec's level: tolerances (the baselines' noise)
    scheme = FamilyWise(options.statistics.family_level, options.n_sets)
    lab = spread.at(level=scheme.level, n_resamples=scheme.n_resamples(options.statistics.n_resamples))
    sets = draw_prompt_sets(lab, options.n_prompt_sets)
    g, m = options.grid, options.margin
    claims: dict[str, Any] = {
        "hf-equivalence": HfEquivalenceClaim(tolerance=1e-5),
        "attribution-completeness": AttributionCompletenessClaim(tolerance=1e-4),
    }
    notes: dict[str, str] = {}

    separations = [lab.task_separation(ps) for ps in sets]
    if not all(Rule("excludes", 0).holds(s) for s in separations):
        notes["task-solved"] = f"not stated: clean - corrupted = {[str(s) for s in separations]}"
        for claim_id in ("final-token-localization", "mlp-over-attention", "named-heads", "value-plus-pattern",
                         *DRAFTERS):
            notes[claim_id] = "not stated: not measured, the task is not solved (see task-solved)"
        claims = {claim_id: replace(claim, origin="discovery") for claim_id, claim in claims.items()}
        return Draft(_with(base, claims), notes)
    claims["task-solved"] = TaskSolvedClaim(tolerance=_ceil(width_of([spread.task_separation(ps) for ps in sets]), g))

    late = next((layer for layer in range(n_layers)
                 if all(float(measures.final_recovery(lab, ps, layer).low) >= options.min_recovery
                        and float(measures.other_recovery(lab, ps, layer).high) <= options.max_other_recovery for ps in sets)),
                None)
    if late is None:
        notes["final-token-localization"] = (
            f"not stated: no layer from which the final position recovers >= {options.min_recovery} and no other "
            f"position more than {options.max_other_recovery}")
    else:
        finals = [measures.final_recovery(lab, ps, late) for ps in sets]
        others = [measures.other_recovery(lab, ps, late) for ps in sets]
        claims["final-token-localization"] = FinalTokenLocalizationClaim(
            tolerance=_ceil(width_of([measures.final_recovery(spread, ps, late) for ps in sets]), g), late_from_layer=late,
            min_recovery=draft_rule(">=", finals, m, g).threshold,
            max_other_recovery=draft_rule("<=", others, m, g).threshold)

    from_layer = 0 if late is None else late
    try:
        ratios = [measures.mlp_attention_ratio(lab, ps, method, from_layer) for ps in sets
                  for method in ("activation", "attribution")]
        lowest = min(float(r.low) for r in ratios)
    except NonFiniteError as error:  # a resample whose attention effects are all 0
        ratios, lowest = [], math.nan
        notes["mlp-over-attention"] = f"not stated: sum|MLP| / sum|attention| from layer {from_layer}: {error}"
    if ratios and lowest > 1.0:
        claims["mlp-over-attention"] = MlpOverAttentionClaim(
            tolerance=_ceil(width_of([measures.mlp_attention_ratio(spread, ps, method, from_layer) for ps in sets
                                      for method in ("activation", "attribution")]), g),
            from_layer=from_layer, min_ratio=1.0)
    elif ratios:
        notes["mlp-over-attention"] = (f"not stated: sum|MLP| / sum|attention| from layer {from_layer}, lowest CI "
                                       f"low {lowest:.3g} <= 1 (activation and attribution patching)")

    named, note = _named_heads(lab, spread, sets, options, n_layers, n_heads)
    if named is not None:
        claims["named-heads"] = named
    if note:
        notes["named-heads"] = note

    correlations = [measures.value_pattern_correlation(lab, ps) for ps in sets]
    residuals = [measures.value_pattern_residual(lab, ps) for ps in sets]
    low_corr = min(float(c.low) for c in correlations)
    if low_corr >= 0.5:
        claims["value-plus-pattern"] = ValuePlusPatternClaim(
            tolerance=_ceil(width_of([measures.value_pattern_correlation(spread, ps) for ps in sets]), g),
            min_correlation=draft_rule(">=", correlations, m, g).threshold,
            max_residual=draft_rule("<=", residuals, m, g).threshold)
    else:
        notes["value-plus-pattern"] = f"not stated: correlation of (v + pattern) with z, lowest CI low {low_corr:.3g}"

    notes.update(_top_head_attention_note(lab, sets, n_layers))
    context = DraftContext(lab, spread, tuple(sets), options, n_layers, n_heads, claims)
    for claim_id, drafter in sorted(DRAFTERS.items()):
        try:
            drafted, note = drafter(context)
        except NonFiniteError as error:
            drafted, note = None, f"not stated: {error}"
        if drafted is not None:
            claims[claim_id] = drafted
        if note:
            notes[claim_id] = note
    claims = {claim_id: replace(claim, origin="discovery") for claim_id, claim in claims.items()}
    return Draft(_with(base, claims), notes)


def _with(base: Spec, claims: dict[str, Any]) -> Spec:
    from dataclasses import replace

    return replace(base, claims=claims)


def _named_heads(lab: Any, spread: Any, sets: Sequence[Any], options: DiscoveryOptions, n_layers: int,
                 n_heads: int) -> tuple[NamedHeadsClaim | None, str]:
    """The top heads by mean |z patching effect| over all sets, signed by direct logit attribution.

    A head is named when its rank (by z patching, and by attribution if it ranks as well there) stays within
    ``max_rank_fraction`` of all heads on every set; ``top_k`` is the worst such rank's CI high.
    """
    import torch

    bound = max(1, int(options.max_rank_fraction * n_layers * n_heads))
    z = torch.stack([measures.head_values(lab, ps, "z_patching").mean(-1) for ps in sets]).mean(0)
    order = z.abs().flatten().argsort(descending=True)[: options.n_heads_named].tolist()
    heads, worst, dropped, spreads = [], [], [], []
    for flat in order:
        layer, index = divmod(flat, n_heads)
        attributions = [lab.ci(measures.head_values(lab, ps, "attribution")[layer, index]) for ps in sets]
        if all(float(a.low) > 0 for a in attributions):
            sign = "positive"
        elif all(float(a.high) < 0 for a in attributions):
            sign = "negative"
        else:
            sign = "any"
        label = f"L{layer}H{index}"
        ranks = {by: [measures.worst_head_rank(lab, ps, [NamedHead(label, sign, (by,))], by) for ps in sets]
                 for by in ("z_patching", "attribution")}
        by = tuple(b for b, r in ranks.items() if max(float(i.high) for i in r) <= bound)
        if "z_patching" not in by:
            dropped.append(f"{label} (z patching rank CI high {max(float(i.high) for i in ranks['z_patching']):.0f})")
            continue
        heads.append(NamedHead(head=label, sign=sign, by=by))
        worst += [i for b in by for i in ranks[b]]
        spreads += [measures.worst_head_rank(spread, ps, [heads[-1]], b) for b in by for ps in sets]
    note = f"heads not named, ranked beyond {bound} of {n_layers * n_heads}: {dropped}" if dropped else ""
    if not heads:
        return None, note or "not stated: no head ranks consistently"
    top_k = math.ceil(max(float(r.high) for r in worst)) + options.rank_margin
    claim = NamedHeadsClaim(tolerance=_ceil(width_of(spreads), 1.0), top_k=top_k, heads=tuple(heads))
    return claim, note


def _top_head_attention_note(lab: Any, sets: Sequence[Any], n_layers: int) -> dict[str, str]:
    """The source's attention claim is stated by hand only; discovery reports what it measured."""
    import torch

    to_bos = torch.stack([lab.attention(ps).to_bos.double().cpu().mean(-1) for ps in sets]).mean(0)
    entropy = torch.stack([lab.attention(ps).normalized_entropy.double().cpu().mean(-1) for ps in sets]).mean(0)
    return {"top-head-attention": (
        f"not stated by discovery: per layer, the largest mean attention to BOS is "
        f"{[round(float(x), 2) for x in to_bos.amax(-1)]} and the largest normalized entropy is "
        f"{[round(float(x), 2) for x in entropy.amax(-1)]}; state it by hand if these support it")}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):  # a JSON string is a TOML basic string: quotes, backslashes, newlines escaped
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return repr(round(value, 6))
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def _toml_field(name: str, value: Any) -> list[str]:
    """``name = value`` lines; a tuple of dataclasses is an array of inline tables, one per line."""
    from dataclasses import fields, is_dataclass

    if isinstance(value, tuple) and value and is_dataclass(value[0]):
        rows = ["{ " + ", ".join(f"{f.name} = {_toml_value(getattr(v, f.name))}" for f in fields(v)) + " },"
                for v in value]
        return [f"{name} = ["] + [f"    {row}" for row in rows] + ["]"]
    return [f"{name} = {_toml_value(value)}"]


def render_spec(draft: Draft, *, header: str = "") -> str:
    """The draft as TOML, with a comment for every claim that is not stated."""
    from dataclasses import fields

    spec = draft.spec
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for title, section in (("model", spec.model), ("statistics", spec.statistics), ("prompts", spec.prompts)):
        lines += ["", f"[{title}]"]
        lines += [f"{f.name} = {_toml_value(getattr(section, f.name))}" for f in fields(section)
                  if getattr(section, f.name) is not None]
    for claim_id in sorted(set(spec.claims) | set(draft.notes)):
        lines.append("")
        if claim_id in draft.notes:
            lines.append(f"# {claim_id}: {draft.notes[claim_id]}")
        if claim_id not in spec.claims:
            continue
        claim = spec.claims[claim_id]
        lines.append(f"[claims.{claim_id}]")
        for f in fields(claim):
            value = getattr(claim, f.name)
            if value is None or value == ():  # left out: the loader gives the field's default
                continue
            lines += _toml_field(f.name, value)
    return "\n".join(lines) + "\n"


def _bad_arguments(args: argparse.Namespace, min_prompts: int) -> str | None:
    """The first problem with the command line's numbers, as one line naming the option and the fix, or None."""
    from circuit.task import MAX_DIGITS

    for flag, value in (("--min-digits", args.min_digits), ("--max-digits", args.max_digits)):
        if not 1 <= value <= MAX_DIGITS:
            return f"{flag} {value} is out of range: operands have 1 to {MAX_DIGITS} digits."
    if args.min_digits > args.max_digits:
        return f"--min-digits {args.min_digits} is larger than --max-digits {args.max_digits}."
    if args.min_size < min_prompts:
        return (f"--min-size {args.min_size} is too small: the claims' intervals need at least {min_prompts} distinct "
                f"prompts (16 is the default).")
    if args.min_size > args.max_size:
        return f"--min-size {args.min_size} is larger than --max-size {args.max_size}."
    if args.prompt_sets < 1:
        return f"--prompt-sets {args.prompt_sets}: measure at least 1 prompt set (5 is the default)."
    return None


def draft_header(model: str, prompt_sets: int, options: DiscoveryOptions) -> str:
    """The comment at the top of a draft: how it was made, and that nobody has reviewed it yet."""
    model = " ".join(str(model).split())  # one line: a name holding a newline stays inside the comment
    return (f"DRAFT, not reviewed: drafted by `python -m circuit.discover --model {model}` from {prompt_sets} prompt "
            f"sets;\nthresholds sit {options.margin} outside the measured per-set CIs of a claim test judged on "
            f"{options.n_sets} sets\n({FamilyWise(options.statistics.family_level, options.n_sets).text}). "
            f"Review every claim against the analysis before shipping this spec.")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


def main(argv: Sequence[str] | None = None) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="python -m circuit.discover", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="hub id or local folder")
    parser.add_argument("--out", type=Path, help="write the draft spec here (default: print it)")
    parser.add_argument("--match", action="append", help="names that select the spec (default: the folder name)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--min-digits", type=int, default=2)
    parser.add_argument("--max-digits", type=int, default=3)
    parser.add_argument("--min-size", type=int, default=16)
    parser.add_argument("--max-size", type=int, default=16)
    parser.add_argument("--metric", default="first_differing_token", choices=["seed", "first_differing_token"])
    parser.add_argument("--corruptions", nargs="+", default=["same_length"], choices=["same_length", "reversed"])
    parser.add_argument("--prompt-sets", type=int, default=DiscoveryOptions.n_prompt_sets)
    parser.add_argument("--claims-dir", type=Path, default=Path("claims"),
                        help="the folder of claim modules whose drafters (@drafts) run too (default: ./claims)")
    args = parser.parse_args(argv)
    problem = _bad_arguments(args, DiscoveryOptions.statistics.min_prompts)
    if problem:
        parser.error(problem)
    if not args.claims_dir.is_dir():
        parser.error(f"--claims-dir {args.claims_dir}: no such folder; pass the folder of claim modules (claims/).")
    if args.out is not None and (args.out.is_dir() or not args.out.parent.is_dir()):
        parser.error(f"--out {args.out}: " + (f"is a folder; pass a file name, e.g. {args.out / 'draft.toml'}."
                                             if args.out.is_dir() else
                                             f"the folder {args.out.parent} does not exist; create it or pass "
                                             f"another path (checked before the model loads)."))
    from circuit.spec import import_claims

    try:
        import_claims(args.claims_dir)
    except Exception as error:  # a claim module that does not import: its drafter cannot run
        parser.error(f"--claims-dir {args.claims_dir}: a claim module cannot be imported ({type(error).__name__}: "
                     f"{_first_line(error)}); fix it, or pass another --claims-dir.")

    from circuit.models import ModelLoadError, load_model, resolve_device

    try:
        resolve_device(args.device)
    except ValueError as error:
        parser.error(f"--device: {error}")
    try:
        model = load_model(args.model, device=args.device, with_hf_reference=False)
    except ModelLoadError as error:
        parser.error(f"--model: {error}")
    prompts = PromptSpec(min_size=args.min_size, max_size=args.max_size, min_digits=args.min_digits,
                         max_digits=args.max_digits, corruptions=tuple(args.corruptions), metric=args.metric)
    options = DiscoveryOptions(prompts=prompts, n_prompt_sets=args.prompt_sets)
    draft = discover(model, options, match=args.match or [Path(args.model).name])
    text = render_spec(draft, header=draft_header(args.model, args.prompt_sets, options))
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
