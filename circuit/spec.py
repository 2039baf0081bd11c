"""Claim specs: the numbers a circuit claim is tested against, stated once per model in a TOML file.

A claim such as "head L23H1 is among the ten most important heads, with a positive direct effect" has a
sentence (in ``claims/``) and numbers (the head, the ten, the sign). The numbers differ between models,
so they live in one spec file per model (``claims/specs/<model>.toml``); the claim tests read them from
here and never from literals. A spec states only the claims it believes; a claim a spec does not state
is skipped as "not stated in spec <file>".

Loading validates everything up front and names the file and the key of any problem: an unknown claim
id, a missing or unknown field, a value of the wrong type or out of range, and (given the model's size)
a layer or head index the model does not have. The result is a tree of frozen dataclasses.

Layout of a spec file::

    [model]                     # which models the spec is for
    match = ["Qwen/Qwen2.5-0.5B", "qwen2.5-0.5b"]
    [statistics]                # how intervals are computed
    level = 0.95
    n_resamples = 1000
    min_prompts = 5             # optional: intervals over fewer distinct prompts are refused
    family_level = 0.05         # optional: family-wise error rate of a claim test over its prompt sets
    [prompts]                   # which prompt sets the claims are tested on
    ...
    [claims.named-heads]        # one table per stated claim, fields as in the dataclasses below
    ...

Numbers that depend on the model's floating-point precision (the tolerances of identities that hold
exactly in real arithmetic: bridge vs HF probabilities, attributions adding up) are :class:`PerDtype`
fields, written as one table per field, one value per dtype the suite runs in::

    atol = {float32 = 1e-4, bfloat16 = 0.25, float16 = 0.03}

(a single number means the same value at every dtype; float64 takes the float32 value). A claim reads the
value of the model's dtype with ``claim.atol.at(model.dtype)``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "AttributionCompletenessClaim",
    "ClaimSpec",
    "FinalTokenLocalizationClaim",
    "HfEquivalenceClaim",
    "KNOWN_CLAIMS",
    "MlpOverAttentionClaim",
    "ModelSpec",
    "NamedHead",
    "NamedHeadsClaim",
    "PerDtype",
    "PromptSpec",
    "Spec",
    "SpecError",
    "StatisticsSpec",
    "TaskSolvedClaim",
    "TopHeadAttentionClaim",
    "ValuePlusPatternClaim",
    "find_spec",
    "load_spec",
    "parse_head",
]

_HEAD = re.compile(r"^L(\d+)H(\d+)$")


class SpecError(ValueError):
    """A spec file is malformed or does not fit the model; the message names the file and the key."""


def parse_head(label: str) -> tuple[int, int]:
    """``"L23H1"`` -> ``(23, 1)``. Raises ValueError for anything else."""
    match = _HEAD.match(label) if isinstance(label, str) else None
    if match is None:
        raise ValueError(f"{label!r} is not a head label: write heads as 'L<layer>H<head>', e.g. 'L23H1'.")
    return int(match[1]), int(match[2])


# --- precision-dependent numbers ----------------------------------------------------------------------

DTYPES = ("float32", "bfloat16", "float16")
"""The dtypes a :class:`PerDtype` value names (float64 reads the float32 value)."""


@dataclass(frozen=True)
class PerDtype:
    """A number that depends on the precision the model runs in: one value per dtype.

    In a spec: ``{float32 = 1e-4, bfloat16 = 0.25, float16 = 0.03}`` (all three), or one number for all.
    """

    float32: float
    bfloat16: float
    float16: float

    def at(self, dtype: Any) -> float:
        """The value for ``dtype`` (a ``torch.dtype`` or its name; ``float64`` reads ``float32``).

        Raises:
            ValueError: a dtype with no value here (e.g. an integer dtype or float8).
        """
        name = str(dtype).removeprefix("torch.")
        name = "float32" if name == "float64" else name
        if name not in DTYPES:
            raise ValueError(f"No value for dtype {dtype!r}: a per-dtype spec value has {list(DTYPES)} "
                             f"(and float64, which reads float32).")
        return getattr(self, name)

    def values(self) -> tuple[float, ...]:
        """The values in the order of ``DTYPES``."""
        return tuple(getattr(self, name) for name in DTYPES)

    def __str__(self) -> str:
        return "{" + ", ".join(f"{name} = {getattr(self, name):g}" for name in DTYPES) + "}"


# --- the sections -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """Which models the spec is for."""

    match: tuple[str, ...]
    """Hub ids, folder names or bundled model names that select this spec (compared case-insensitively)."""
    n_layers: int | None = None
    """The model's layer count, if the spec is for one size only (checked against the loaded model)."""
    n_heads: int | None = None
    """The model's query heads per layer, if the spec is for one size only (checked likewise)."""
    revision: str | None = None
    """The hub revision the spec's numbers were measured on, for the record."""


@dataclass(frozen=True)
class StatisticsSpec:
    """How the claims' confidence intervals are computed."""

    level: float
    """Confidence level of the bootstrap intervals (e.g. 0.95)."""
    n_resamples: int
    """Bootstrap resamples per interval."""
    min_prompts: int = 5
    """Fewest distinct prompts an interval is computed over (at least 2; fewer are refused, and [prompts]
    min_size must be at least this)."""
    family_level: float = 0.05
    """Family-wise error rate of one claim test (between 0 and 1, e.g. 0.05): the largest chance that a claim
    which truly holds is declared false on any of the prompt sets the hypothesis profile draws. Each of
    ``n`` sets is judged on its ``1 - 2 * family_level / n`` interval (Bonferroni, ``circuit.decision``);
    ``level`` stays the level of intervals that decide nothing (preconditions, figures, tolerances)."""


@dataclass(frozen=True)
class PromptSpec:
    """The prompt sets claims are tested on (drawn by hypothesis within these bounds)."""

    min_size: int
    """Fewest prompts in a set: at least [statistics] min_prompts (the bootstrap needs several; 8 or more is
    sensible)."""
    max_size: int
    """Most prompts in a set."""
    min_digits: int
    """Fewest operand digits (the source analysis used 5)."""
    max_digits: int
    """Most operand digits."""
    corruptions: tuple[str, ...]
    """Pairings of corrupted with clean prompts: 'same_length' (fresh operands) and/or 'reversed' (the source's)."""
    metric: str = "seed"
    """The logit difference: 'seed' (the source's: every answer token's logit read at the final prompt
    position, against a perturbed answer) or 'first_differing_token' (the clean answer against the corrupted
    prompt's answer, at their first differing token, with the common prefix teacher-forced after the prompt;
    sets whose answers first differ at different depths are not drawn)."""


@dataclass(frozen=True)
class ClaimSpec:
    """Fields every claim has."""

    tolerance: float
    """Regression tolerance: with ``--baseline``, the claim fails if its statistic moved by more than this."""


@dataclass(frozen=True)
class HfEquivalenceClaim(ClaimSpec):
    """Claim 1: the TransformerLens bridge computes the same probabilities as the HF model."""

    atol: PerDtype = PerDtype(float32=1e-5, bfloat16=0.5, float16=0.08)
    """Largest |softmax(bridge) - softmax(HF)| allowed, per dtype. In low precision the two round
    differently (the bridge folds norms and centres the unembedding). On the default model, 800 random
    prompt sets and texts gave at most 8.6e-6 (float32), 0.29 (bfloat16) and 0.039 (float16); HF itself
    in bfloat16 is up to 0.31 off its float32 copy, so in bfloat16 this claim only catches gross errors
    (on that model, a layer-0 MLP scaled by 1.1 gives 0.46, a layer-2 MLP scaled by 1.5 only 0.17)."""


@dataclass(frozen=True)
class TaskSolvedClaim(ClaimSpec):
    """Claim 2 (precondition): clean and corrupted logit differences differ (CI of the mean excludes 0)."""


@dataclass(frozen=True)
class FinalTokenLocalizationClaim(ClaimSpec):
    """Claim 3: patching the residual stream at the final position recovers the clean logit difference."""

    late_from_layer: int
    """The first layer counted as late."""
    min_recovery: float
    """Mean normalized recovery at the final position over late layers must be at least this (CI low)."""
    max_other_recovery: float
    """In late layers, no other position may recover more than this (CI high of the largest)."""


@dataclass(frozen=True)
class MlpOverAttentionClaim(ClaimSpec):
    """Claim 4: MLP outputs matter more than attention outputs at the final position."""

    from_layer: int
    """Only layers from this one on are summed (0: all layers)."""
    min_ratio: float
    """sum |MLP effect| / sum |attention effect| must exceed this (CI low), by patching and by attribution."""


@dataclass(frozen=True)
class NamedHead:
    """One head the analysis names."""

    head: str
    """The head, as 'L<layer>H<head>'."""
    sign: str
    """Its stated direct effect on the logit difference: 'positive', 'negative' or 'any'."""
    by: tuple[str, ...]
    """Where it ranks in the top-k: 'z_patching' (|z patching effect|) and/or 'attribution' (|direct logit attribution|)."""

    @property
    def layer(self) -> int:
        return parse_head(self.head)[0]

    @property
    def index(self) -> int:
        return parse_head(self.head)[1]


@dataclass(frozen=True)
class NamedHeadsClaim(ClaimSpec):
    """Claim 5: the named heads matter."""

    top_k: int
    """Each named head must rank within the top k (CI high of its rank <= k)."""
    heads: tuple[NamedHead, ...]
    """The named heads."""


@dataclass(frozen=True)
class ValuePlusPatternClaim(ClaimSpec):
    """Claim 6: per head, value patching + pattern patching effects add up to the z patching effect."""

    min_correlation: float
    """Correlation across heads of (v + pattern) with z must be at least this (CI low)."""
    max_residual: float
    """Largest |v + pattern - z| over heads, in normalized units, must be at most this (CI high)."""


@dataclass(frozen=True)
class TopHeadAttentionClaim(ClaimSpec):
    """Claim 7: late top heads attend to BOS; early top heads attend near-uniformly."""

    top_k: int
    """How many heads (by |z patching effect|) count as top heads."""
    late_from_layer: int
    """Top heads in this layer or later are late."""
    early_until_layer: int
    """Top heads before this layer are early."""
    min_bos_attention: float
    """Every late top head's mean attention to BOS (from the final position) must be at least this (CI low)."""
    min_normalized_entropy: float
    """Every early top head's attention entropy / log(#keys) must be at least this (CI low)."""


@dataclass(frozen=True)
class AttributionCompletenessClaim(ClaimSpec):
    """Claim 8: direct logit attributions of all components add up to the logit difference."""

    atol: PerDtype = PerDtype(float32=1e-4, bfloat16=0.25, float16=0.03)
    """Largest per-prompt |sum of attributions - logit difference| allowed (CI high of the max), per dtype.
    The attributions are summed in float32 from the cached activations, but the model's own logits are
    rounded to its dtype (half a unit in the last place of a logit near 20 is 0.06 in bfloat16, 0.008 in
    float16); on the default model the largest gap was 0.074 (bfloat16) and 0.010 (float16)."""


KNOWN_CLAIMS: dict[str, type[ClaimSpec]] = {
    "hf-equivalence": HfEquivalenceClaim,
    "task-solved": TaskSolvedClaim,
    "final-token-localization": FinalTokenLocalizationClaim,
    "mlp-over-attention": MlpOverAttentionClaim,
    "named-heads": NamedHeadsClaim,
    "value-plus-pattern": ValuePlusPatternClaim,
    "top-head-attention": TopHeadAttentionClaim,
    "attribution-completeness": AttributionCompletenessClaim,
}
"""Claim ids a spec may state, and the dataclass of each one's parameters."""


@dataclass(frozen=True)
class Spec:
    """A validated spec file."""

    path: Path
    """The file it was loaded from."""
    model: ModelSpec
    statistics: StatisticsSpec
    prompts: PromptSpec
    claims: Mapping[str, ClaimSpec]
    """Stated claims by id (a subset of KNOWN_CLAIMS)."""

    def claim(self, claim_id: str) -> ClaimSpec | None:
        """The parameters of ``claim_id``, or None when the spec does not state it."""
        if claim_id not in KNOWN_CLAIMS:
            raise KeyError(f"Unknown claim id {claim_id!r}; known: {sorted(KNOWN_CLAIMS)}.")
        return self.claims.get(claim_id)

    def check_model(self, n_layers: int, n_heads: int) -> Spec:
        """Raise :class:`SpecError` if a layer or head the spec names is outside the model. Returns self."""
        _check_sizes(self, n_layers, n_heads)
        return self


# --- loading ------------------------------------------------------------------------------------------

_CORRUPTIONS = ("same_length", "reversed")
_METRICS = ("seed", "first_differing_token")
_SIGNS = ("positive", "negative", "any")
_RANKINGS = ("z_patching", "attribution")


def _fail(path: Path, key: str, problem: str) -> SpecError:
    return SpecError(f"{path}: [{key}] {problem}")


def _convert(path: Path, key: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field annotation (as a string, from ``from __future__ import annotations``)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    optional = text.endswith("| None")
    base = text.removesuffix(" | None").strip()
    if value is None and optional:
        return None
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(path, key, f"must be an integer, got {value!r}.")
        return value
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(path, key, f"must be a number, got {value!r}.")
        return float(value)
    if base == "PerDtype":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return PerDtype(*(float(value),) * len(DTYPES))
        if not isinstance(value, dict):
            raise _fail(path, key, f"must be a number or a table of one number per dtype, "
                                   f"{{float32 = ..., bfloat16 = ..., float16 = ...}}, got {value!r}.")
        unknown, missing = sorted(set(value) - set(DTYPES)), [d for d in DTYPES if d not in value]
        if unknown or missing:
            raise _fail(path, key, f"a per-dtype table needs exactly the keys {list(DTYPES)}; "
                                   f"unknown {unknown}, missing {missing}.")
        return PerDtype(**{d: _convert(path, f"{key}.{d}", value[d], "float") for d in DTYPES})
    if base == "str":
        if not isinstance(value, str):
            raise _fail(path, key, f"must be a string, got {value!r}.")
        return value
    if base == "tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _fail(path, key, f"must be a list of strings, got {value!r}.")
        return tuple(value)
    if base == "tuple[NamedHead, ...]":
        if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
            raise _fail(path, key, f"must be a non-empty array of tables like "
                                   f"{{head = \"L23H1\", sign = \"positive\", by = [\"z_patching\"]}}, got {value!r}.")
        return tuple(_build(path, f"{key}[{i}]", v, NamedHead) for i, v in enumerate(value))
    raise AssertionError(f"unhandled annotation {text}")  # pragma: no cover - a bug in this module


def _build(path: Path, key: str, table: Any, cls: type) -> Any:
    if not isinstance(table, dict):
        raise _fail(path, key, f"must be a table, got {table!r}.")
    hints = {f.name: f for f in fields(cls)}
    unknown = sorted(set(table) - set(hints))
    if unknown:
        raise _fail(path, key, f"unknown field(s) {unknown}; {cls.__name__} has {sorted(hints)}.")
    values = {}
    for name, f in hints.items():
        if name not in table:
            if f.default is MISSING:
                raise _fail(path, f"{key}.{name}", f"missing field: {_field_doc(cls, name)}")
            continue
        values[name] = _convert(path, f"{key}.{name}", table[name], f.type)
    return cls(**values)


def _field_doc(cls: type, name: str) -> str:
    """The field's docstring (the string literal after it in the class body), for error messages."""
    import ast
    import inspect

    for klass in cls.__mro__:
        try:
            tree = ast.parse(inspect.getsource(klass))
        except (OSError, TypeError):  # pragma: no cover
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, following in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == name
                    and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)):
                return f"{name} = ... ({following.value.value})"
    return name


def _check_values(spec: Spec) -> None:
    path = spec.path
    if not spec.model.match:
        raise _fail(path, "model.match", "must name at least one model.")
    if not 0 < spec.statistics.level < 1:
        raise _fail(path, "statistics.level", f"must be between 0 and 1, got {spec.statistics.level}.")
    if not 0 < spec.statistics.family_level < 1:
        raise _fail(path, "statistics.family_level", f"must be between 0 and 1 (e.g. 0.05), got "
                    f"{spec.statistics.family_level}.")
    if spec.statistics.n_resamples < 100:
        raise _fail(path, "statistics.n_resamples", f"must be at least 100, got {spec.statistics.n_resamples}.")
    least = spec.statistics.min_prompts
    if least < 2:
        raise _fail(path, "statistics.min_prompts", f"must be at least 2 (an interval over one prompt has zero width), "
                                                    f"got {least}.")
    p = spec.prompts
    if p.min_size < least:
        raise _fail(path, "prompts.min_size", f"is {p.min_size}, but intervals need at least [statistics] min_prompts = "
                                              f"{least} distinct prompts: raise min_size (and max_size) to {least} or "
                                              f"more (8 or more is sensible).")
    if p.min_size > p.max_size:
        raise _fail(path, "prompts.min_size", f"need min_size <= max_size, got {p.min_size}, {p.max_size}.")
    if not 1 <= p.min_digits <= p.max_digits <= 9:
        raise _fail(path, "prompts.min_digits",
                    f"need 1 <= min_digits <= max_digits <= 9, got {p.min_digits}, {p.max_digits}.")
    if p.metric not in _METRICS:
        raise _fail(path, "prompts.metric", f"is {p.metric!r}; use one of {list(_METRICS)}.")
    bad = sorted(set(p.corruptions) - set(_CORRUPTIONS)) or ([] if p.corruptions else ["(empty)"])
    if bad:
        raise _fail(path, "prompts.corruptions", f"unknown corruption(s) {bad}; choose from {list(_CORRUPTIONS)}.")
    for claim_id, claim in spec.claims.items():
        if claim.tolerance < 0:
            raise _fail(path, f"claims.{claim_id}.tolerance", f"must be >= 0, got {claim.tolerance}.")
        for f in fields(claim):
            value = getattr(claim, f.name)
            if isinstance(value, PerDtype) and min(value.values()) < 0:
                raise _fail(path, f"claims.{claim_id}.{f.name}", f"must be >= 0 at every dtype, got {value}.")
        for name in ("top_k", "late_from_layer", "early_until_layer", "from_layer"):
            value = getattr(claim, name, None)
            if value is not None and value < (1 if name == "top_k" else 0):
                raise _fail(path, f"claims.{claim_id}.{name}", f"must be {'>= 1' if name == 'top_k' else '>= 0'}, "
                                                               f"got {value}.")
        for i, head in enumerate(getattr(claim, "heads", ())):
            key = f"claims.{claim_id}.heads[{i}]"
            try:
                parse_head(head.head)
            except ValueError as error:
                raise _fail(path, f"{key}.head", str(error)) from None
            if head.sign not in _SIGNS:
                raise _fail(path, f"{key}.sign", f"is {head.sign!r}; use one of {list(_SIGNS)}.")
            if not head.by or set(head.by) - set(_RANKINGS):
                raise _fail(path, f"{key}.by", f"is {list(head.by)}; use a non-empty subset of {list(_RANKINGS)}.")


def _check_sizes(spec: Spec, n_layers: int, n_heads: int) -> None:
    path = spec.path
    for name, stated, actual in (("n_layers", spec.model.n_layers, n_layers), ("n_heads", spec.model.n_heads, n_heads)):
        if stated is not None and stated != actual:
            raise _fail(path, f"model.{name}", f"the spec is for a model with {name}={stated}, but the model under "
                                               f"test has {name}={actual}. Choose its spec with --claims-spec.")
    for claim_id, claim in spec.claims.items():
        for name in ("late_from_layer", "early_until_layer", "from_layer"):
            value = getattr(claim, name, None)
            limit = n_layers if name == "early_until_layer" else n_layers - 1
            if value is not None and value > limit:
                raise _fail(path, f"claims.{claim_id}.{name}",
                            f"layer {value} is out of range: the model has layers 0..{n_layers - 1}.")
        for i, head in enumerate(getattr(claim, "heads", ())):
            layer, index = parse_head(head.head)
            if layer >= n_layers or index >= n_heads:
                raise _fail(path, f"claims.{claim_id}.heads[{i}].head",
                            f"head {head.head} is out of range: the model has layers 0..{n_layers - 1} and heads "
                            f"0..{n_heads - 1} per layer.")
        top_k = getattr(claim, "top_k", None)
        if top_k is not None and top_k > n_layers * n_heads:
            raise _fail(path, f"claims.{claim_id}.top_k",
                        f"top_k={top_k} exceeds the model's {n_layers * n_heads} heads.")


def load_spec(path: str | Path, *, n_layers: int | None = None, n_heads: int | None = None) -> Spec:
    """Load and validate a spec file; with ``n_layers`` and ``n_heads``, also check it fits the model.

    Raises:
        SpecError: naming the file and the key, for any malformed, missing, unknown or out-of-range entry.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file. Pass an existing file to --claims-spec.") from None
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{path}: not valid TOML ({error}).") from None
    unknown = sorted(set(data) - {"model", "statistics", "prompts", "claims"})
    if unknown:
        raise _fail(path, unknown[0], "unknown section; a spec has [model], [statistics], [prompts] and "
                                      "[claims.<id>] tables.")
    for section in ("model", "statistics", "prompts"):
        if section not in data:
            raise _fail(path, section, "missing section.")
    claims_table = data.get("claims", {})
    if not isinstance(claims_table, dict):
        raise _fail(path, "claims", "must be a table of [claims.<id>] tables.")
    claims = {}
    for claim_id, table in claims_table.items():
        if claim_id not in KNOWN_CLAIMS:
            raise _fail(path, f"claims.{claim_id}", f"unknown claim id {claim_id!r}; known: {sorted(KNOWN_CLAIMS)}.")
        claims[claim_id] = _build(path, f"claims.{claim_id}", table, KNOWN_CLAIMS[claim_id])
    spec = Spec(
        path=path,
        model=_build(path, "model", data["model"], ModelSpec),
        statistics=_build(path, "statistics", data["statistics"], StatisticsSpec),
        prompts=_build(path, "prompts", data["prompts"], PromptSpec),
        claims=claims,
    )
    _check_values(spec)
    if n_layers is not None and n_heads is not None:
        _check_sizes(spec, n_layers, n_heads)
    return spec


def _names(model_name: str) -> set[str]:
    """The names a model answers to: as given, its folder's name, without a revision suffix."""
    name = str(model_name).split("@")[0].rstrip("/")
    return {name.lower(), Path(name).name.lower()}


def find_spec(model_name: str, spec_dir: str | Path) -> Path:
    """The spec file in ``spec_dir`` whose ``[model] match`` names ``model_name`` (hub id or folder name).

    Raises:
        SpecError: when no spec, or more than one, matches; the message lists the specs and how to choose.
    """
    spec_dir = Path(spec_dir)
    names = _names(model_name)
    found: list[Path] = []
    catalogue: list[str] = []
    for path in sorted(spec_dir.glob("*.toml")):
        try:
            match = tomllib.loads(path.read_text()).get("model", {}).get("match", [])
        except tomllib.TOMLDecodeError as error:
            raise SpecError(f"{path}: not valid TOML ({error}).") from None
        catalogue.append(f"{path.name} (match = {match})")
        if isinstance(match, Sequence) and names & {str(m).lower() for m in match}:
            found.append(path)
    if len(found) == 1:
        return found[0]
    if not found:
        raise SpecError(
            f"No claim spec in {spec_dir} matches model {model_name!r}; the specs are: "
            f"{'; '.join(catalogue) or 'none'}. Add the model's name to a spec's [model] match, write a spec "
            f"for it, or pass --claims-spec PATH."
        )
    raise SpecError(f"Several claim specs match model {model_name!r}: {[p.name for p in found]}. Keep one, or "
                    f"pass --claims-spec PATH.")
