"""Claim discovery: measure a model and freeze what was found into a draft claim spec.

``python -m circuit.discover --model PATH`` runs the sweeps every claim reads (residual-stream, attention
and MLP patching, per-head z / value / pattern patching, direct logit attribution, attention summaries)
on prompt sets drawn, deterministically, from the same distribution the claims draw from, and writes a TOML
spec (``circuit.spec``). It does not fit and test on the same data:

- it *chooses* on one half of the prompt sets (seed 0: which layer is late, which heads and cells to name,
  which signs to state);
- it *states* from the other, held-out half (seed 1): each threshold sits the design margin from the
  held-out estimate (``circuit.decision.required_margin``: the distance at which the claim test, judged on
  ``n_sets`` sets with the spec's looks and level, is supported with the spec's power at its prompt budget),
  rounded outward to ``grid``; a fixed threshold (a sign, a gap of 0, a ratio of 1) is stated only when the
  held-out estimate clears it by that margin;
- beside each stated claim the draft records every threshold's held-out estimate, interval and margin;
- a claim the held-out half does not support is *not stated*; the draft says why, with the numbers;
- each claim's baseline ``tolerance`` is half the median width of its statistic's held-out 95% intervals.

The statistics are the claims' own (``circuit.measures`` and the claim modules' functions), so a spec written
here is judged by the claims exactly as it was measured. A draft is a draft: a researcher reads it before it
becomes a spec.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from circuit import measures
from circuit.drafts import DRAFTERS, DraftContext, drafts, floor_to, width_of
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

__all__ = ["DRAFTERS", "DiscoveryOptions", "DraftContext", "discover", "drafts", "draw_prompt_sets",
           "render_spec", "main", "width_of"]


@dataclass(frozen=True)
class DiscoveryOptions:
    """How discovery measures, and the claim test its thresholds are designed for."""

    prompts: PromptSpec
    statistics: StatisticsSpec = StatisticsSpec(level=0.95, n_resamples=1000)
    n_prompt_sets: int = 4
    """Prompt sets in each half: chosen on one half, stated from the other."""
    n_sets: int = 50
    """Prompt sets a claim test is judged on under the most demanding profile (hypothesis' ``thorough``:
    ``max_examples=50``): the design margin gives the spec's power over that many sets."""
    n_heads_named: int = 3
    """The most heads (by |z patching|) the draft names."""
    grid: float = 0.01
    """Thresholds are rounded outward to this grid (so re-running discovery gives the same numbers)."""
    min_recovery: float = 0.5
    """A layer counts as 'late' for localization when final-position recovery from it on is at least this..."""
    max_other_recovery: float = 0.5
    """...and no other position recovers more than this."""
    min_correlation: float = 0.5
    """value-plus-pattern is stated only with a correlation threshold of at least this."""
    max_rank_fraction: float = 0.25
    """Heads and cells are named only within this fraction of all (else naming them says nothing: every head is
    in the top-k when k is most heads)."""

    @property
    def budget(self) -> int:
        """The prompt budget of a claim test's set (the spec's ``[prompts] budget``)."""
        return self.prompts.prompt_budget


@dataclass
class Draft:
    """A discovered spec: the claims stated, why the others are not, and how each threshold was set."""

    spec: Spec
    notes: dict[str, str] = field(default_factory=dict)
    measured: dict[str, dict[str, str]] = field(default_factory=dict)
    """Claim id -> threshold name -> its held-out estimate, interval and margin."""


def draw_prompt_sets(lab: Any, n: int, *, seed: int = 0, max_tries: int = 10_000,
                     exclude: Sequence[Any] = ()) -> list[Any]:
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
        if lab.accepts(prompt_set) and prompt_set not in drawn and prompt_set not in exclude:
            drawn.append(prompt_set)
    raise RuntimeError(f"Only {len(drawn)} acceptable prompt sets in {max_tries} tries (asked {n}); widen the prompts.")


def discover(model: Any, options: DiscoveryOptions, *, match: Sequence[str]) -> Draft:
    """Measure ``model`` (a ``circuit.models.LoadedModel``) and return the draft spec."""
    from dataclasses import replace

    from circuit.lab import Lab
    from circuit.stats import NonFiniteError

    cfg = model.bridge.cfg
    n_layers, n_heads = cfg.n_layers, cfg.n_heads
    base = Spec(path=Path("<discovery>"), model=ModelSpec(match=tuple(match), n_layers=n_layers, n_heads=n_heads),
                statistics=options.statistics, prompts=options.prompts, claims={})
    lab = Lab(model, base)
    chosen_on = draw_prompt_sets(lab, options.n_prompt_sets, seed=0)
    held_out = draw_prompt_sets(lab, options.n_prompt_sets, seed=1, exclude=chosen_on)
    claims: dict[str, Any] = {
        "hf-equivalence": HfEquivalenceClaim(tolerance=1e-5),
        "attribution-completeness": AttributionCompletenessClaim(tolerance=1e-4),
    }
    notes: dict[str, str] = {}
    ctx = DraftContext(lab, tuple(chosen_on), tuple(held_out), options, n_layers, n_heads, claims)

    def separation(lab, ps):
        return lab.task_separation(ps)

    task = ctx.for_claim("task-solved")
    if not task.supports(">", separation, 0.0, "clean - corrupted"):
        notes["task-solved"] = f"not stated: {ctx.log['task-solved']['clean - corrupted']}"
        for claim_id in ("final-token-localization", "mlp-over-attention", "named-heads", "value-plus-pattern",
                         *DRAFTERS):
            notes[claim_id] = "not stated: not measured, the task is not solved (see task-solved)"
        claims = {claim_id: replace(claim, origin="discovery") for claim_id, claim in claims.items()}
        return Draft(_with(base, claims), notes, ctx.log)
    claims["task-solved"] = TaskSolvedClaim(tolerance=task.tolerance(separation))

    late = _late_layer(ctx, options)
    if late is None:
        notes["final-token-localization"] = (
            f"not stated: no layer from which the final position recovers >= {options.min_recovery} and no other "
            f"position more than {options.max_other_recovery} (point estimates on every draft set)")
    else:
        localization = ctx.for_claim("final-token-localization")
        final = localization.rule(">=", lambda lab, ps: measures.final_recovery(lab, ps, late), "min_recovery")
        other = localization.rule("<=", lambda lab, ps: measures.other_recovery(lab, ps, late), "max_other_recovery")
        if final.threshold >= options.min_recovery and other.threshold <= options.max_other_recovery:
            claims["final-token-localization"] = FinalTokenLocalizationClaim(
                tolerance=localization.tolerance(lambda lab, ps: measures.final_recovery(lab, ps, late)),
                late_from_layer=late, min_recovery=final.threshold, max_other_recovery=other.threshold)
        else:
            notes["final-token-localization"] = (
                f"not stated: from layer {late}, the held-out sets give min_recovery {final.threshold:g} (needs >= "
                f"{options.min_recovery}) and max_other_recovery {other.threshold:g} (needs <= "
                f"{options.max_other_recovery})")

    from_layer = 0 if late is None else late
    ratio = ctx.for_claim("mlp-over-attention")
    try:
        rules = [ratio.rule(">", lambda lab, ps, m=method: measures.mlp_attention_share(lab, ps, m, from_layer),
                            f"MLP share ({method})") for method in ("activation", "attribution")]
        lowest = min(r.threshold for r in rules)
        if lowest >= 0.5:  # a share of 1/2 is a ratio of 1
            claims["mlp-over-attention"] = MlpOverAttentionClaim(
                tolerance=ratio.tolerance(lambda lab, ps: measures.mlp_attention_share(lab, ps, "activation",
                                                                                       from_layer)),
                from_layer=from_layer, min_ratio=floor_to(lowest / (1 - lowest), options.grid) if lowest < 1 else 1e6)
        else:
            notes["mlp-over-attention"] = (f"not stated: the MLP share of sum |effect| from layer {from_layer}: the "
                                           f"held-out sets support no share of at least 1/2 ({lowest:g})")
    except NonFiniteError as error:  # a resample whose effects are all 0
        notes["mlp-over-attention"] = f"not stated: the MLP share from layer {from_layer}: {error}"

    named, note = _named_heads(ctx.for_claim("named-heads"), options, n_layers, n_heads)
    if named is not None:
        claims["named-heads"] = named
    if note:
        notes["named-heads"] = note

    vp = ctx.for_claim("value-plus-pattern")
    correlation = vp.rule(">=", measures.value_pattern_correlation, "min_correlation")
    residual = vp.rule("<=", measures.value_pattern_residual, "max_residual")
    if correlation.threshold >= options.min_correlation:
        claims["value-plus-pattern"] = ValuePlusPatternClaim(
            tolerance=vp.tolerance(measures.value_pattern_correlation), min_correlation=correlation.threshold,
            max_residual=residual.threshold)
    else:
        notes["value-plus-pattern"] = (f"not stated: the held-out sets support a correlation of (v + pattern) with z "
                                       f"of at least {correlation.threshold:g} only (needs {options.min_correlation})")

    for claim_id, drafter in sorted(DRAFTERS.items()):
        try:
            drafted, note = drafter(ctx.for_claim(claim_id))
        except NonFiniteError as error:
            drafted, note = None, f"not stated: {error}"
        if drafted is not None:
            claims[claim_id] = drafted
        if note:
            notes[claim_id] = note
    claims = {claim_id: replace(claim, origin="discovery") for claim_id, claim in claims.items()}
    return Draft(_with(base, claims), notes, {k: v for k, v in ctx.log.items() if k in claims})


def _with(base: Spec, claims: dict[str, Any]) -> Spec:
    from dataclasses import replace

    return replace(base, claims=claims)


def _late_layer(ctx: DraftContext, options: DiscoveryOptions) -> int | None:
    """The first layer from which, on every draft set, the final position recovers at least ``min_recovery`` and
    no other position more than ``max_other_recovery`` (point estimates: the held-out sets decide the numbers)."""
    for layer in range(ctx.n_layers):
        if all(float(measures.final_recovery(ctx.lab, ps, layer).estimate) >= options.min_recovery
               and float(measures.other_recovery(ctx.lab, ps, layer).estimate) <= options.max_other_recovery
               for ps in ctx.sets):
            return layer
    return None


def _named_heads(ctx: DraftContext, options: DiscoveryOptions, n_layers: int,
                 n_heads: int) -> tuple[NamedHeadsClaim | None, str]:
    """The top heads by mean |z patching effect| on the draft sets, as many as the held-out sets support.

    For ``j`` named heads (the top ``j``, up to ``n_heads_named``) and ``top_k`` from ``j`` up to
    ``max_rank_fraction`` of all heads, the claim "each is in the top k" is the gap between the weakest named
    head and the best head beyond k (``circuit.measures.head_gap``); the draft names the most heads whose gap the
    held-out sets clear by the design margin, with the smallest such k. Each head's sign (by direct logit
    attribution) is stated when it clears 0 by the margin too; "by attribution" is added when that ranking's
    gap clears as well.
    """
    import torch

    bound = max(1, int(options.max_rank_fraction * n_layers * n_heads))
    z = torch.stack([measures.head_values(ctx.lab, ps, "z_patching").mean(-1) for ps in ctx.sets]).mean(0)
    order = [divmod(flat, n_heads) for flat in z.abs().flatten().argsort(descending=True).tolist()]
    labels = [f"L{layer}H{index}" for layer, index in order]
    best = None
    for j in range(1, min(options.n_heads_named, bound) + 1):
        heads = [NamedHead(label, "any", ("z_patching",)) for label in labels[:j]]
        for k in range(j, bound + 1):
            if ctx.supports(">", lambda lab, ps: measures.head_gap(lab, ps, heads, "z_patching", k), 0.0,
                            f"top {j} heads in top_k={k}"):
                best = (j, k)
                break
    if best is None:
        return None, (f"not stated: no head's |z patching effect| exceeds that of the head ranked beyond k (k <= "
                      f"{bound} of {n_layers * n_heads}) by the design margin on the held-out sets; top heads on "
                      f"the draft sets: {labels[:options.n_heads_named]}")
    j, k = best
    ctx.log["named-heads"] = {}
    heads = [NamedHead(label, "any", ("z_patching",)) for label in labels[:j]]
    ctx.supports(">", lambda lab, ps: measures.head_gap(lab, ps, heads, "z_patching", k), 0.0, "top_k (z patching)")
    by = ("z_patching", "attribution") if ctx.supports(
        ">", lambda lab, ps: measures.head_gap(lab, ps, heads, "attribution", k), 0.0, "top_k (attribution)") \
        else ("z_patching",)
    named = []
    for head in heads:
        drafted = torch.stack([measures.head_values(ctx.lab, ps, "attribution")[head.layer, head.index].mean()
                               for ps in ctx.sets]).mean()
        sign = "positive" if float(drafted) > 0 else "negative"
        oriented = [(head, 1.0 if sign == "positive" else -1.0)]
        if not ctx.supports(">", lambda lab, ps: measures.weakest_signed_attribution(lab, ps, oriented), 0.0,
                            f"sign of {head.head}"):
            sign = "any"
        named.append(NamedHead(head.head, sign, by))
    claim = NamedHeadsClaim(tolerance=ctx.tolerance(lambda lab, ps: measures.head_gap(lab, ps, heads, "z_patching", k)),
                            top_k=k, heads=tuple(named))
    beyond = labels[j:options.n_heads_named]
    return claim, (f"heads not named (their gap is not supported): {beyond}" if beyond else "")


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
        rows = ["{ " + ", ".join(f"{f.name} = {_toml_value(getattr(v, f.name))}" for f in fields(v)
                                 if getattr(v, f.name) is not None) + " },"  # None: left out, the field's default
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
        for name, how in draft.measured.get(claim_id, {}).items():
            lines.append(f"# {name}: {how}")
        if claim_id not in spec.claims:
            continue
        claim = spec.claims[claim_id]
        lines.append(f"[claims.{claim_id}]")
        for f in fields(claim):
            value = getattr(claim, f.name)
            if value is None or value == () or (f.name == "drift" and value == f.default):  # the loader's default
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
    if args.budget is not None and args.budget < args.max_size:
        return f"--budget {args.budget} is below --max-size {args.max_size}: a set grows up to the budget."
    if args.prompt_sets < 1:
        return f"--prompt-sets {args.prompt_sets}: measure at least 1 prompt set (5 is the default)."
    return None


def draft_header(model: str, prompt_sets: int, options: DiscoveryOptions) -> str:
    """The comment at the top of a draft: how it was made, and that nobody has reviewed it yet."""
    model = " ".join(str(model).split())  # one line: a name holding a newline stays inside the comment
    return (f"DRAFT, not reviewed: drafted by `python -m circuit.discover --model {model}`: chosen on {prompt_sets} "
            f"prompt sets,\nstated from {prompt_sets} held-out sets; each threshold sits the design margin from the "
            f"held-out\nestimate (power {options.statistics.power} over {options.n_sets} sets at {options.budget} "
            f"prompts a set, false support <= {options.statistics.family_level}).\nReview every claim against the "
            f"analysis before shipping this spec.")


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
    parser.add_argument("--budget", type=int, default=None,
                        help="most prompts a claim test measures one set on (default: 4 x --max-size)")
    parser.add_argument("--prompt-sets", type=int, default=DiscoveryOptions.n_prompt_sets,
                        help="prompt sets in each half (chosen on one half, stated from the other)")
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
                         max_digits=args.max_digits, corruptions=tuple(args.corruptions), metric=args.metric,
                         budget=args.budget)
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
