"""Claim specs: the numbers a circuit claim is tested against, stated once per model in a TOML file.

A claim such as "head L23H1 is among the ten most important heads, with a positive direct effect" has a
sentence (in ``claims/``) and numbers (the head, the ten, the sign). The numbers differ between models,
so they live in one spec file per model (``claims/specs/<model>.toml``); the claim tests read them from
here and never from literals. A spec states only the claims it believes; a claim a spec does not state
is skipped as "not stated in spec <file>".

Loading validates everything up front and names the file and the key of any problem: an unknown claim
id, a missing or unknown field, a value of the wrong type or out of range, and (given the model's size)
a layer or head index the model does not have. The result is a tree of frozen dataclasses.

Which claim ids exist, and what each one's table holds, is a registry (:data:`KNOWN_CLAIMS`): a claim's
parameters are a frozen dataclass registered with :func:`register_claim`, by the built-in claims below and
by each claim module in ``claims/`` for its own claims (:func:`import_claims` imports such a folder). Every
claim table may say who stated it: ``origin = "hand"`` (the default) or ``"discovery"``.

Layout of a spec file::

    [model]                     # which models the spec is for
    match = ["Qwen/Qwen2.5-0.5B", "qwen2.5-0.5b"]
    [statistics]                # how intervals are computed
    level = 0.95
    n_resamples = 1000
    min_prompts = 5             # optional: intervals over fewer distinct prompts are refused
    family_level = 0.05         # optional: false-support rate of a claim test (all its sets and looks)
    power = 0.9                 # optional: the chance a claim true by its design margin is supported
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

import importlib.util
import inspect
import json
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, NewType

from circuit.evidence import DRIFTS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "AmbiguousSpecError",
    "AttributionCompletenessClaim",
    "ClaimSpec",
    "Correlation",
    "FinalTokenLocalizationClaim",
    "Fraction",
    "Head",
    "HfEquivalenceClaim",
    "KNOWN_CLAIMS",
    "Layer",
    "LayerBound",
    "MlpOverAttentionClaim",
    "ModelSpec",
    "NamedHead",
    "NamedHeadsClaim",
    "PerDtype",
    "PromptSpec",
    "Range",
    "Rank",
    "Spec",
    "SpecError",
    "StatisticsSpec",
    "TaskSolvedClaim",
    "TopHeadAttentionClaim",
    "ValuePlusPatternClaim",
    "find_spec",
    "import_claims",
    "load_spec",
    "measured_with",
    "parse_head",
    "register_claim",
]

_HEAD = re.compile(r"^L(\d+)H(\d+)$")


class SpecError(ValueError):
    """A spec file is malformed or does not fit the model; the message names the file and the key."""


class AmbiguousSpecError(SpecError):
    """More than one spec states a model's claims (:func:`find_spec`): which one counts is the user's choice."""


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
    """The false-support rate of one claim test (between 0 and 1, e.g. 0.05): the largest chance that a claim
    which is false is declared supported, over all the prompt sets the hypothesis profile draws and all the
    looks at each (``circuit.decision``); ``level`` stays the level of intervals that decide nothing (figures,
    tolerances)."""
    power: float = 0.9
    """The chance that a claim true by its design margin is supported by one claim test at the prompt budget
    (between 0 and 1); discovery sets thresholds at the margin this needs (``circuit.decision.required_margin``)."""


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
    budget: int | None = None
    """Most prompts a claim test measures one set on: an inconclusive set grows by batches of fresh prompts of
    its shape up to this (``circuit.decision``). Default: 4 x max_size."""

    @property
    def prompt_budget(self) -> int:
        return self.budget if self.budget is not None else 4 * self.max_size


@dataclass(frozen=True)
class Range:
    """The values a statistic's threshold can take, for a field annotated ``Annotated[float, Range(...)]``
    (or one of :data:`Correlation`, :data:`Fraction`, :data:`Rank`): the loader refuses a value outside it,
    naming the range, since a rule such as "correlation >= 1.2" can never hold."""

    low: float | None = None
    """Smallest allowed value (None: unbounded)."""
    high: float | None = None
    """Largest allowed value (None: unbounded)."""
    what: str = "the statistic"
    """What the field compares with, for the message ("a correlation")."""

    def problem(self, value: float) -> str | None:
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            low = "-inf" if self.low is None else f"{self.low:g}"
            high = "inf" if self.high is None else f"{self.high:g}"
            return f"is {value:g}, but {self.what} lies in [{low}, {high}]: a threshold outside it never decides."
        return None


Correlation = Annotated[float, Range(-1.0, 1.0, "a correlation")]
"""A field compared with a correlation (between -1 and 1)."""
Fraction = Annotated[float, Range(0.0, 1.0, "a fraction")]
"""A field compared with a fraction or probability (between 0 and 1)."""
Rank = Annotated[int, Range(1, None, "a rank")]
"""A field compared with a rank or a count of top items (1 or more)."""

MAX_RESAMPLES = 100_000
"""Most bootstrap resamples per interval (see :func:`_check_values` for the memory they take)."""
MAX_PROMPTS = 4096
"""Most prompts in a set (see :func:`_check_values` for the memory they take)."""


Layer = NewType("Layer", int)
"""A field holding a layer index (0 .. n_layers - 1): checked against the model under test."""
LayerBound = NewType("LayerBound", int)
"""A field holding an exclusive layer bound (0 .. n_layers), e.g. "layers before this one"."""
Head = NewType("Head", str)
"""A field holding a head label, 'L<layer>H<head>': checked for form and against the model under test."""

ORIGINS = ("hand", "discovery")
MEASURED_PROMPTS = ("min_digits", "max_digits", "corruptions", "metric")
"""The [prompts] fields that say which population a statistic is measured on (set sizes and the budget only
change how precisely)."""


@dataclass(frozen=True)
class ClaimSpec:
    """Fields every claim has. A claim's parameters subclass this (``@register_claim("my-claim")``)."""

    tolerance: float
    """Regression tolerance: with ``--baseline``, the claim fails if its statistic moved by more than this toward
    failing its rule (see ``drift``)."""
    origin: str = field(default="hand", kw_only=True)
    """Who stated the claim: "hand" (a researcher, e.g. from the source analysis; the default) or "discovery"
    (drafted by ``python -m circuit.discover``; its test compares only these with a fresh draft)."""
    drift: str = field(default="worse", kw_only=True)
    """Which moves beyond ``tolerance`` regress the claim: "worse" (toward failing its rule; the default: a move
    the other way is reported as an improvement) or "both" (any move: the claim's number itself is pinned)."""

    TOP_K_OVER_HEADS: ClassVar[bool] = False
    """Whether a ``top_k`` field counts heads (then it may not exceed the model's layers x heads)."""

    def check(self) -> None:
        """Raise ``ValueError`` naming the field if the values contradict each other (override to add checks;
        types, ranges of layers and heads, and ``tolerance >= 0`` are checked for every claim)."""


def measured_with(claim: ClaimSpec, prompts: PromptSpec) -> dict[str, Any]:
    """What a claim's statistics are measured with, as JSON values: the claim's fields except the bookkeeping
    ones (those of :class:`ClaimSpec`: tolerance, origin, drift) and the bounds the statistics are compared
    with (fields named ``min_*`` or ``max_*``, and :class:`PerDtype` tolerances), plus the prompts' population
    (:data:`MEASURED_PROMPTS`, as ``prompts.<field>``). Two records measured with the same of these measured
    the same thing; a baseline is compared only then (``circuit.evidence.compare``)."""
    bookkeeping = {f.name for f in fields(ClaimSpec)}
    out: dict[str, Any] = {}
    for f in fields(claim):
        value = getattr(claim, f.name)
        if f.name in bookkeeping or f.name.startswith(("min_", "max_")) or isinstance(value, PerDtype):
            continue
        out[f.name] = value
    out.update({f"prompts.{name}": getattr(prompts, name) for name in MEASURED_PROMPTS})
    return json.loads(json.dumps(out, default=_json_value))


def _json_value(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    return str(value)


KNOWN_CLAIMS: dict[str, type[ClaimSpec]] = {}
"""Claim ids a spec may state -> the dataclass of each one's parameters; filled by :func:`register_claim`
(the built-in claims below, and every claim module imported, e.g. by pytest collecting ``claims/``)."""

_CLAIM_ID = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_SOURCES: dict[str, str] = {}
"""Claim id -> the file that declared it (read when it was declared: a module may later leave sys.modules)."""


def register_claim(claim_id: str) -> Callable[[type], type]:
    """Class decorator: declare ``cls`` (a frozen dataclass subclassing :class:`ClaimSpec`) as the parameters
    of claim ``claim_id``, so that a spec's ``[claims.<claim_id>]`` table is validated into it::

        @register_claim("logit-lens-monotone")
        @dataclass(frozen=True)
        class LogitLensMonotone(ClaimSpec):
            from_layer: Layer
            \"\"\"The first layer whose step is judged.\"\"\"

    Field types the loader understands: ``int``, ``float``, ``str``, ``bool``, :data:`Layer`,
    :data:`LayerBound`, :data:`Head`, :class:`PerDtype`, ``X | None``, ``tuple[X, ...]`` and nested frozen
    dataclasses (a TOML table, or an array of tables for a tuple of them). A field's docstring (the string
    after it) is quoted when the field is missing from a spec.

    Raises:
        ValueError: a malformed id, a class that is not a frozen ``ClaimSpec`` dataclass, or an id already
            declared by another file.
    """
    if not isinstance(claim_id, str) or not _CLAIM_ID.match(claim_id):
        raise ValueError(f"Claim id {claim_id!r}: use lower-case words joined by hyphens, e.g. 'named-heads'.")

    def decorate(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, ClaimSpec) and "__dataclass_fields__" in vars(cls)
                and cls.__dataclass_params__.frozen):  # type: ignore[attr-defined]
            raise ValueError(f"@register_claim({claim_id!r}) decorates {cls!r}: it must be a "
                             f"@dataclass(frozen=True) subclass of circuit.spec.ClaimSpec (put @register_claim above "
                             f"@dataclass).")
        known, source = KNOWN_CLAIMS.get(claim_id), _source_of(cls)
        if known is not None and _SOURCES[claim_id] != source:
            raise ValueError(f"Claim id {claim_id!r} is declared twice: by {known.__qualname__} in {_SOURCES[claim_id]} "
                             f"and by {cls.__qualname__} in {source}. Rename one.")
        KNOWN_CLAIMS[claim_id] = cls  # the same file imported again (e.g. under another module name) replaces it
        _SOURCES[claim_id] = source
        return cls

    return decorate


def _source_of(cls: type) -> str:
    try:
        return str(Path(inspect.getfile(cls)).resolve())
    except (TypeError, OSError):  # pragma: no cover - classes defined interactively
        return f"{cls.__module__}.{cls.__qualname__}"


def import_claims(folder: str | Path) -> list[types.ModuleType]:
    """Import every ``test_*.py`` module in ``folder`` (a claims folder, or one such file), so that the
    claims they declare with :func:`register_claim` are known; returns the modules. Modules already imported
    (by pytest, say) are imported again under a private name; their claims replace themselves."""
    modules = []
    folder = Path(folder)
    for path in [folder] if folder.is_file() else sorted(folder.glob("test_*.py")):
        name = f"_circuit_claims_.{path.parent.name}.{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:  # pragma: no cover
            continue
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        modules.append(module)
    return modules


@register_claim("hf-equivalence")
@dataclass(frozen=True)
class HfEquivalenceClaim(ClaimSpec):
    """Claim 1: the TransformerLens bridge computes the same probabilities as the HF model."""

    atol: PerDtype = PerDtype(float32=5e-5, bfloat16=0.5, float16=0.08)
    """Largest |softmax(bridge) - softmax(HF)| allowed, per dtype. In low precision the two round
    differently (the bridge folds norms and centres the unembedding). On the default model, 800 random
    prompt sets and texts gave at most 8.6e-6 (float32; on llama-mult-2d a thorough run found 1.08e-5 on the
    text '\x1cX0', hence 5e-5), 0.29 (bfloat16) and 0.039 (float16); HF itself
    in bfloat16 is up to 0.31 off its float32 copy, so in bfloat16 this claim only catches gross errors
    (on that model, a layer-0 MLP scaled by 1.1 gives 0.46, a layer-2 MLP scaled by 1.5 only 0.17)."""


@register_claim("task-solved")
@dataclass(frozen=True)
class TaskSolvedClaim(ClaimSpec):
    """Claim 2 (precondition): clean and corrupted logit differences differ (CI of the mean excludes 0)."""


@register_claim("final-token-localization")
@dataclass(frozen=True)
class FinalTokenLocalizationClaim(ClaimSpec):
    """Claim 3: patching the residual stream at the final position recovers the clean logit difference."""

    late_from_layer: Layer
    """The first layer counted as late."""
    min_recovery: float
    """Mean normalized recovery at the final position over late layers must be at least this (CI low)."""
    max_other_recovery: float
    """In late layers, no other position may recover more than this (the largest's CI high must be at most this)."""


@register_claim("mlp-over-attention")
@dataclass(frozen=True)
class MlpOverAttentionClaim(ClaimSpec):
    """Claim 4: MLP outputs matter more than attention outputs at the final position."""

    from_layer: Layer
    """Only layers from this one on are summed (0: all layers)."""
    min_ratio: float
    """sum |MLP effect| / sum |attention effect| must exceed this, by patching and by attribution: judged as the MLP
    share sum |MLP| / (sum |MLP| + sum |attention|), whose CI low must exceed min_ratio / (1 + min_ratio)."""


@dataclass(frozen=True)
class NamedHead:
    """One head the analysis names."""

    head: Head
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


@register_claim("named-heads")
@dataclass(frozen=True)
class NamedHeadsClaim(ClaimSpec):
    """Claim 5: the named heads matter."""

    TOP_K_OVER_HEADS = True

    top_k: Rank
    """Each named head must rank within the top k: its |effect| minus that of the best head ranked beyond k, paired
    on the same prompts, must have an interval above 0 (``circuit.measures.head_gap``)."""
    heads: tuple[NamedHead, ...]
    """The named heads."""


@register_claim("value-plus-pattern")
@dataclass(frozen=True)
class ValuePlusPatternClaim(ClaimSpec):
    """Claim 6: per head, value patching + pattern patching effects add up to the z patching effect."""

    min_correlation: Correlation
    """Correlation across heads of (v + pattern) with z must be at least this (CI low)."""
    max_residual: float
    """Largest |v + pattern - z| over heads, in normalized units, must be at most this (CI high)."""


@register_claim("top-head-attention")
@dataclass(frozen=True)
class TopHeadAttentionClaim(ClaimSpec):
    """Claim 7: late top heads attend to BOS; early top heads attend near-uniformly."""

    TOP_K_OVER_HEADS = True

    top_k: Rank
    """How many heads (by |z patching effect|) count as top heads."""
    late_from_layer: Layer
    """Top heads in this layer or later are late."""
    early_until_layer: LayerBound
    """Top heads before this layer are early."""
    min_bos_attention: Fraction
    """Every late top head's mean attention to BOS (from the final position) must be at least this (CI low)."""
    min_normalized_entropy: Fraction
    """Every early top head's attention entropy / log(#keys) must be at least this (CI low)."""


@register_claim("attribution-completeness")
@dataclass(frozen=True)
class AttributionCompletenessClaim(ClaimSpec):
    """Claim 8: direct logit attributions of all components add up to the logit difference."""

    atol: PerDtype = PerDtype(float32=1e-4, bfloat16=0.25, float16=0.03)
    """Largest per-prompt |sum of attributions - logit difference| allowed (the largest itself, no interval), per dtype.
    The attributions are summed in float32 from the cached activations, but the model's own logits are
    rounded to its dtype (half a unit in the last place of a logit near 20 is 0.06 in bfloat16, 0.008 in
    float16); on the default model the largest gap was 0.074 (bfloat16) and 0.010 (float16)."""




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


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    if isinstance(tp, NewType):
        return tp.__name__
    if typing.get_origin(tp) is not None:
        return str(tp).replace("typing.", "").replace("circuit.spec.", "")
    return getattr(tp, "__name__", str(tp))


def _convert(path: Path, key: str, value: Any, tp: Any) -> Any:
    """Check ``value`` (from TOML) against a resolved field type and convert it (see :func:`register_claim`)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _convert(path, key, value, options[0])
        raise AssertionError(f"unsupported field type {tp}")  # pragma: no cover - a bug in a claim's parameters
    if origin is tuple:
        item = args[0]
        if isinstance(item, type) and is_dataclass(item):
            example = "{" + ", ".join(f"{f.name} = ..." for f in fields(item)) + "}"
            if not isinstance(value, list) or not value or not all(isinstance(v, dict) for v in value):
                raise _fail(path, key, f"must be a non-empty array of tables like {example}, got {value!r}.")
        elif not isinstance(value, list):
            raise _fail(path, key, f"must be a list of {_type_name(item)}, got {value!r}.")
        return tuple(_convert(path, f"{key}[{i}]", v, item) for i, v in enumerate(value))
    if isinstance(tp, type) and tp is PerDtype:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return PerDtype(*(float(value),) * len(DTYPES))
        if not isinstance(value, dict):
            raise _fail(path, key, f"must be a number or a table of one number per dtype, "
                                   f"{{float32 = ..., bfloat16 = ..., float16 = ...}}, got {value!r}.")
        unknown, missing = sorted(set(value) - set(DTYPES)), [d for d in DTYPES if d not in value]
        if unknown or missing:
            raise _fail(path, key, f"a per-dtype table needs exactly the keys {list(DTYPES)}; "
                                   f"unknown {unknown}, missing {missing}.")
        return PerDtype(**{d: _convert(path, f"{key}.{d}", value[d], float) for d in DTYPES})
    if isinstance(tp, type) and is_dataclass(tp):
        return _build(path, key, value, tp)
    base = tp.__supertype__ if isinstance(tp, NewType) else tp
    if base is bool:
        if not isinstance(value, bool):
            raise _fail(path, key, f"must be true or false, got {value!r}.")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(path, key, f"must be an integer, got {value!r}.")
        if tp in (Layer, LayerBound) and value < 0:
            raise _fail(path, key, f"must be a layer index >= 0, got {value}.")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(path, key, f"must be a number, got {value!r}.")
        if not math.isfinite(value):
            raise _fail(path, key, f"must be a finite number, got {value!r}: a threshold or tolerance of inf or "
                                   f"nan never decides.")
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise _fail(path, key, f"must be a string, got {value!r}.")
        if tp is Head:
            try:
                parse_head(value)
            except ValueError as error:
                raise _fail(path, key, str(error)) from None
        return value
    raise AssertionError(f"unsupported field type {tp}")  # pragma: no cover - a bug in a claim's parameters


def _hints(cls: type) -> dict[str, Any]:
    """The resolved field types of a dataclass (its module's names: ``Layer``, nested dataclasses...)."""
    try:
        return typing.get_type_hints(cls)
    except NameError as error:
        raise TypeError(f"{cls.__qualname__}: a field's type is not importable where the class is defined "
                        f"({error}).") from None


def _build(path: Path, key: str, table: Any, cls: type) -> Any:
    if not isinstance(table, dict):
        raise _fail(path, key, f"must be a table, got {table!r}.")
    hints = _hints(cls)
    declared = {f.name: f for f in fields(cls)}
    unknown = sorted(set(table) - set(declared))
    if unknown:
        raise _fail(path, key, f"unknown field(s) {unknown}; {cls.__name__} has {sorted(declared)}.")
    values = {}
    for name, f in declared.items():
        if name not in table:
            if f.default is MISSING and f.default_factory is MISSING:
                raise _fail(path, f"{key}.{name}", f"missing field: {_field_doc(cls, name)}")
            continue
        values[name] = _convert(path, f"{key}.{name}", table[name], hints[name])
        for limit in _ranges(cls, name) if values[name] is not None else ():
            problem = limit.problem(values[name])
            if problem:
                raise _fail(path, f"{key}.{name}", problem)
    return cls(**values)


def _ranges(cls: type, name: str) -> list[Range]:
    """The :class:`Range` annotations of field ``name`` of ``cls`` (``Annotated[..., Range(...)]``)."""
    try:
        hint = typing.get_type_hints(cls, include_extras=True)[name]
    except NameError:  # pragma: no cover - _hints reported it
        return []
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # ``Fraction | None``
        hint = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    if typing.get_origin(hint) is not Annotated:
        return []
    return [m for m in hint.__metadata__ if isinstance(m, Range)]


def _typed_values(obj: Any, key: str):
    """``(key, type, value)`` of every field of a dataclass, recursing into tuples and nested dataclasses."""
    hints = _hints(type(obj))
    for f in fields(obj):
        value, tp = getattr(obj, f.name), hints[f.name]
        yield from _typed_value(value, tp, f"{key}.{f.name}")


def _typed_value(value: Any, tp: Any, key: str):
    if value is None:
        return
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is tuple:
        for i, item in enumerate(value):
            yield from _typed_value(item, typing.get_args(tp)[0], f"{key}[{i}]")
    elif is_dataclass(value) and not isinstance(value, PerDtype):
        yield from _typed_values(value, key)
    else:
        yield key, tp, value


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
    if not 0 < spec.statistics.power < 1:
        raise _fail(path, "statistics.power", f"must be between 0 and 1 (e.g. 0.9), got {spec.statistics.power}.")
    if spec.statistics.n_resamples < 100:
        raise _fail(path, "statistics.n_resamples", f"must be at least 100, got {spec.statistics.n_resamples}.")
    if spec.statistics.n_resamples > MAX_RESAMPLES:
        n, batch = spec.statistics.n_resamples, spec.prompts.max_size
        raise _fail(path, "statistics.n_resamples", f"is {n}, more than {MAX_RESAMPLES}: one interval over "
                    f"{batch} prompts draws an index of {n} x {batch} int64 ({_size(8 * n * batch)}), and a per-head "
                    f"statistic of Qwen2.5-0.5B's 24 x 14 heads resamples {_size(4 * n * batch * 336)} of float32. "
                    f"1000 to 10000 resamples are enough for a 95% interval.")
    if spec.prompts.max_size > MAX_PROMPTS:
        batch, positions = spec.prompts.max_size, 2 * spec.prompts.max_digits + 4
        raise _fail(path, "prompts.max_size", f"is {batch}, more than {MAX_PROMPTS}: one forward of the set holds "
                    f"its logits, {batch} prompts x {positions} positions x 151936 tokens of Qwen2.5-0.5B's vocabulary "
                    f"in float32 ({_size(4 * batch * positions * 151936)}), and each patching sweep one such batch per "
                    f"layer. 8 to 64 prompts per set are sensible.")
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
    if p.budget is not None and p.budget < p.max_size:
        raise _fail(path, "prompts.budget", f"is {p.budget}, below max_size = {p.max_size}: the budget is the most "
                                            f"prompts a set may grow to; use at least {p.max_size} (or leave it out: "
                                            f"4 x max_size).")
    if not 1 <= p.min_digits <= p.max_digits <= 9:
        raise _fail(path, "prompts.min_digits",
                    f"need 1 <= min_digits <= max_digits <= 9, got {p.min_digits}, {p.max_digits}.")
    if p.metric not in _METRICS:
        raise _fail(path, "prompts.metric", f"is {p.metric!r}; use one of {list(_METRICS)}.")
    bad = sorted(set(p.corruptions) - set(_CORRUPTIONS)) or ([] if p.corruptions else ["(empty)"])
    if bad:
        raise _fail(path, "prompts.corruptions", f"unknown corruption(s) {bad}; choose from {list(_CORRUPTIONS)}.")
    for claim_id, claim in spec.claims.items():
        key = f"claims.{claim_id}"
        if claim.tolerance < 0:
            raise _fail(path, f"{key}.tolerance", f"must be >= 0, got {claim.tolerance}.")
        if claim.origin not in ORIGINS:
            raise _fail(path, f"{key}.origin", f"is {claim.origin!r}; use one of {list(ORIGINS)}.")
        if claim.drift not in DRIFTS:
            raise _fail(path, f"{key}.drift", f"is {claim.drift!r}; use one of {list(DRIFTS)} (\"worse\": only a move "
                                              f"toward failing regresses; \"both\": any move beyond tolerance).")
        for f in fields(claim):
            value = getattr(claim, f.name)
            if isinstance(value, PerDtype) and min(value.values()) < 0:
                raise _fail(path, f"{key}.{f.name}", f"must be >= 0 at every dtype, got {value}.")
        top_k = getattr(claim, "top_k", None)
        if isinstance(top_k, int) and top_k < 1:
            raise _fail(path, f"{key}.top_k", f"must be >= 1, got {top_k}.")
        signs: dict[str, tuple[int, str]] = {}
        for i, head in enumerate(getattr(claim, "heads", ())):
            if not isinstance(head, NamedHead):
                continue
            first, sign = signs.setdefault(head.head, (i, head.sign))
            if sign != head.sign:
                raise _fail(path, f"{key}.heads[{i}]", f"{head.head} is listed twice with different signs "
                                                      f"(heads[{first}]: {sign!r}, heads[{i}]: {head.sign!r}): state "
                                                      f"it once, with the sign the analysis found.")
            if head.sign not in _SIGNS:
                raise _fail(path, f"{key}.heads[{i}].sign", f"is {head.sign!r}; use one of {list(_SIGNS)}.")
            if not head.by or set(head.by) - set(_RANKINGS):
                raise _fail(path, f"{key}.heads[{i}].by",
                            f"is {list(head.by)}; use a non-empty subset of {list(_RANKINGS)}.")
        try:
            claim.check()
        except ValueError as error:
            raise _fail(path, key, str(error)) from None


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 2 ** 30:.1f} GiB" if n_bytes >= 2 ** 30 else f"{n_bytes / 2 ** 20:.0f} MiB"


def _check_sizes(spec: Spec, n_layers: int, n_heads: int) -> None:
    path = spec.path
    for name, stated, actual in (("n_layers", spec.model.n_layers, n_layers), ("n_heads", spec.model.n_heads, n_heads)):
        if stated is not None and stated != actual:
            raise _fail(path, f"model.{name}", f"the spec is for a model with {name}={stated}, but the model under "
                                               f"test has {name}={actual}. Choose its spec with --claims-spec.")
    for claim_id, claim in spec.claims.items():
        for key, tp, value in _typed_values(claim, f"claims.{claim_id}"):
            if tp in (Layer, LayerBound):
                limit = n_layers if tp is LayerBound else n_layers - 1
                if value > limit:
                    raise _fail(path, key, f"layer {value} is out of range: the model has layers 0..{n_layers - 1}.")
            elif tp is Head:
                layer, index = parse_head(value)
                if layer >= n_layers or index >= n_heads:
                    raise _fail(path, key, f"head {value} is out of range: the model has layers 0..{n_layers - 1} "
                                           f"and heads 0..{n_heads - 1} per layer.")
        top_k = getattr(claim, "top_k", None)
        if isinstance(top_k, int) and type(claim).TOP_K_OVER_HEADS and top_k >= n_layers * n_heads:
            raise _fail(path, f"claims.{claim_id}.top_k",
                        f"top_k={top_k} leaves no head of the model's {n_layers * n_heads} ranked beyond it, so the "
                        f"claim says nothing; use top_k < {n_layers * n_heads}.")


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
            raise _fail(path, f"claims.{claim_id}", f"unknown claim id {claim_id!r}; known: {sorted(KNOWN_CLAIMS)}. "
                                                    f"A claim is declared with @register_claim in its claims/ file.")
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


def _toml_string(text: str) -> str:
    import json

    return json.dumps(text, ensure_ascii=False)  # a JSON string is a TOML basic string (both escape quotes and backslashes alike)


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
        if isinstance(match, str):  # a string would match model names by their characters
            raise SpecError(f"{path}: [model.match] must be a list of names, e.g. match = [{_toml_string(match)}], "
                            f"got the string {match!r}.")
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
    raise AmbiguousSpecError(f"Several claim specs match model {model_name!r}: {[p.name for p in found]}. Keep "
                             f"one, or pass --claims-spec PATH.")
