"""Claim specs: loading, validation errors that name the file and key, and spec selection by model."""

from pathlib import Path

import pytest

from circuit.spec import KNOWN_CLAIMS, NamedHeadsClaim, SpecError, find_spec, import_claims, load_spec, parse_head

SPECS = Path(__file__).resolve().parent.parent / "claims" / "specs"

MINIMAL = """
[model]
match = ["tiny"]
[statistics]
level = 0.95
n_resamples = 200
[prompts]
min_size = 6
max_size = 8
min_digits = 2
max_digits = 3
corruptions = ["same_length"]
"""

NAMED_HEADS = """
[claims.named-heads]
top_k = 2
tolerance = 1
heads = [{ head = "L1H3", sign = "positive", by = ["z_patching"] }]
"""


def write(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def claim_ids_in(folder: Path) -> set[str]:
    """The ids of the ``@pytest.mark.claim(id=...)`` markers in ``folder``'s claim files (read, not imported)."""
    import re

    return {m for path in folder.glob("test_*.py") for m in re.findall(r"mark\.claim\(id=\"([a-z0-9-]+)\"",
                                                                         path.read_text())}


def test_every_claim_of_claims_is_declared_and_stated_in_the_qwen_spec():
    """Every claim the suite tests (>= 14 ids) has registered parameters and a table in the source's spec."""
    import_claims(SPECS.parent)
    ids = claim_ids_in(SPECS.parent)
    assert len(ids) >= 14, sorted(ids)
    assert ids <= set(KNOWN_CLAIMS), sorted(ids - set(KNOWN_CLAIMS))
    spec = load_spec(SPECS / "qwen2.5-0.5b.toml", n_layers=24, n_heads=14)
    assert ids <= set(spec.claims), f"not stated in qwen2.5-0.5b.toml: {sorted(ids - set(spec.claims))}"


def test_the_qwen_spec_states_the_source_analysis_claims():
    import_claims(SPECS.parent)
    spec = load_spec(SPECS / "qwen2.5-0.5b.toml", n_layers=24, n_heads=14)
    heads = spec.claims["named-heads"]
    assert isinstance(heads, NamedHeadsClaim)
    assert {(h.head, h.sign) for h in heads.heads} == {("L23H1", "positive"), ("L22H7", "negative"),
                                                       ("L0H11", "any")}
    assert all(claim.origin == "hand" for claim in spec.claims.values())  # from the source, not discovered
    assert spec.prompts.min_digits == spec.prompts.max_digits == 5


def test_every_bundled_spec_loads():
    import_claims(SPECS.parent)
    for path in SPECS.glob("*.toml"):
        load_spec(path)


def test_a_minimal_spec_states_no_claims(tmp_path):
    spec = load_spec(write(tmp_path, MINIMAL))
    assert spec.claims == {}
    assert spec.claim("named-heads") is None
    with pytest.raises(KeyError, match="Unknown claim id 'nope'"):
        spec.claim("nope")


def test_head_out_of_range_names_file_and_key(tmp_path):
    path = write(tmp_path, MINIMAL + NAMED_HEADS)
    load_spec(path, n_layers=2, n_heads=4)
    with pytest.raises(SpecError, match=r"spec\.toml: \[claims\.named-heads\.heads\[0\]\.head\] head L1H3 is out of "
                                        r"range: the model has layers 0\.\.0 and heads 0\.\.3"):
        load_spec(path, n_layers=1, n_heads=4)
    with pytest.raises(SpecError, match=r"heads 0\.\.2 per layer"):
        load_spec(path).check_model(n_layers=2, n_heads=3)


def test_a_late_layer_the_model_lacks_is_an_error(tmp_path):
    path = write(tmp_path, MINIMAL + "[claims.final-token-localization]\nlate_from_layer = 2\nmin_recovery = 0.8\n"
                                     "max_other_recovery = 0.2\ntolerance = 0.1\n")
    load_spec(path, n_layers=3, n_heads=4)
    with pytest.raises(SpecError, match=r"\[claims\.final-token-localization\.late_from_layer\] layer 2 is out of "
                                        r"range: the model has layers 0\.\.1"):
        load_spec(path, n_layers=2, n_heads=4)


def test_unknown_claim_id_names_file_and_key(tmp_path):
    path = write(tmp_path, MINIMAL + "[claims.final-token]\ntolerance = 1\n")
    with pytest.raises(SpecError, match=r"spec\.toml: \[claims\.final-token\] unknown claim id 'final-token'; "
                                        r"known: .*'final-token-localization'"):
        load_spec(path)


def test_missing_field_names_file_key_and_what_it_means(tmp_path):
    path = write(tmp_path, MINIMAL + "[claims.named-heads]\ntolerance = 1\nheads = []\n")
    with pytest.raises(SpecError, match=r"\[claims\.named-heads\.top_k\] missing field: top_k = \.\.\. "
                                        r"\(Each named head must rank within the top k"):
        load_spec(path)


def test_missing_section_and_unknown_field(tmp_path):
    with pytest.raises(SpecError, match=r"\[prompts\] missing section"):
        load_spec(write(tmp_path, MINIMAL.split("[prompts]")[0]))
    with pytest.raises(SpecError, match=r"\[claims\.task-solved\] unknown field\(s\) \['treshold'\]"):
        load_spec(write(tmp_path, MINIMAL + "[claims.task-solved]\ntolerance = 1\ntreshold = 2\n"))


@pytest.mark.parametrize(("snippet", "pattern"), [
    ('[claims.task-solved]\ntolerance = "big"\n', r"\[claims\.task-solved\.tolerance\] must be a number"),
    ('[claims.task-solved]\ntolerance = -1\n', r"\[claims\.task-solved\.tolerance\] must be >= 0"),
    ('[claims.task-solved]\ntolerance = 1\ndrift = "better"\n',
     r"\[claims\.task-solved\.drift\] is 'better'; use one of \['worse', 'both'\]"),
    (NAMED_HEADS.replace("L1H3", "head3"), r"\[claims\.named-heads\.heads\[0\]\.head\] 'head3' is not a head label"),
    (NAMED_HEADS.replace("positive", "up"), r"\[claims\.named-heads\.heads\[0\]\.sign\] is 'up'"),
    ('metric = "logprob"\n',
     r"\[prompts\.metric\] is 'logprob'; use one of \['seed', 'first_differing_token'\]"),
    (NAMED_HEADS.replace('"z_patching"', '"dla"'), r"\[claims\.named-heads\.heads\[0\]\.by\] is \['dla'\]"),
])
def test_bad_values_name_the_key(tmp_path, snippet, pattern):
    with pytest.raises(SpecError, match=pattern):
        load_spec(write(tmp_path, MINIMAL + snippet))


def test_too_few_prompts_for_an_interval_are_refused_with_the_minimum(tmp_path):
    one = MINIMAL.replace("min_size = 6\nmax_size = 8", "min_size = 1\nmax_size = 1")
    with pytest.raises(SpecError, match=r"\[prompts\.min_size\] is 1, but intervals need at least \[statistics\] "
                                        r"min_prompts = 5 distinct prompts: raise min_size \(and max_size\) to 5"):
        load_spec(write(tmp_path, one))
    with pytest.raises(SpecError, match=r"\[prompts\.min_size\] is 4, but .* min_prompts = 7 "):
        load_spec(write(tmp_path, MINIMAL.replace("min_size = 6", "min_size = 4").replace(
            "n_resamples = 200", "n_resamples = 200\nmin_prompts = 7")))
    with pytest.raises(SpecError, match=r"\[statistics\.min_prompts\] must be at least 2 \(an interval over one "
                                        r"prompt has zero width\), got 1"):
        load_spec(write(tmp_path, one.replace("n_resamples = 200", "n_resamples = 200\nmin_prompts = 1")))
    with pytest.raises(SpecError, match=r"\[prompts\.min_size\] need min_size <= max_size, got 9, 8"):
        load_spec(write(tmp_path, MINIMAL.replace("min_size = 6", "min_size = 9")))


def test_the_minimum_of_prompts_is_configurable(tmp_path):
    assert load_spec(write(tmp_path, MINIMAL)).statistics.min_prompts == 5
    spec = load_spec(write(tmp_path, MINIMAL.replace("min_size = 6", "min_size = 3").replace(
        "n_resamples = 200", "n_resamples = 200\nmin_prompts = 3")))
    assert (spec.statistics.min_prompts, spec.prompts.min_size) == (3, 3)


def test_model_size_mismatch_says_how_to_choose(tmp_path):
    path = write(tmp_path, MINIMAL.replace('match = ["tiny"]', 'match = ["tiny"]\nn_layers = 24'))
    with pytest.raises(SpecError, match=r"\[model\.n_layers\] the spec is for a model with n_layers=24, but the "
                                        r"model under test has n_layers=2\. Choose its spec with --claims-spec"):
        load_spec(path, n_layers=2, n_heads=4)


def test_not_toml_and_missing_file(tmp_path):
    with pytest.raises(SpecError, match=r"bad\.toml: not valid TOML"):
        load_spec(write(tmp_path, "[model\n", "bad.toml"))
    with pytest.raises(SpecError, match=r"no such spec file"):
        load_spec(tmp_path / "absent.toml")


def test_find_spec_by_hub_id_folder_name_or_revision():
    assert find_spec("Qwen/Qwen2.5-0.5B", SPECS).name == "qwen2.5-0.5b.toml"
    assert find_spec("qwen/qwen2.5-0.5b@main", SPECS).name == "qwen2.5-0.5b.toml"
    assert find_spec("/somewhere/models/test-qwen2-3l", SPECS).name == "test-models.toml"


def test_find_spec_explains_when_none_or_several_match(tmp_path):
    write(tmp_path, MINIMAL, "a.toml")
    with pytest.raises(SpecError, match=r"No claim spec in .* matches model 'other'.*a\.toml \(match = \['tiny'\]\)"
                                        r".*pass --claims-spec PATH"):
        find_spec("other", tmp_path)
    write(tmp_path, MINIMAL, "b.toml")
    with pytest.raises(SpecError, match=r"Several claim specs match model 'tiny': \['a\.toml', 'b\.toml'\]"):
        find_spec("tiny", tmp_path)


def test_parse_head():
    assert parse_head("L23H1") == (23, 1)
    with pytest.raises(ValueError, match="not a head label"):
        parse_head("23.1")


def test_the_family_wise_level_defaults_to_5_percent_and_is_validated(tmp_path):
    assert load_spec(write(tmp_path, MINIMAL)).statistics.family_level == 0.05
    spec = load_spec(write(tmp_path, MINIMAL.replace("n_resamples = 200", "n_resamples = 200\nfamily_level = 0.01")))
    assert spec.statistics.family_level == 0.01
    with pytest.raises(SpecError, match=r"\[statistics\.family_level\] must be between 0 and 1 \(e\.g\. 0\.05\), "
                                        r"got 1\.5"):
        load_spec(write(tmp_path, MINIMAL.replace("n_resamples = 200", "n_resamples = 200\nfamily_level = 1.5")))


# --- claims declared outside the library (@register_claim) ---------------------------------------------

USER_CLAIM = '''
from dataclasses import dataclass

from circuit.spec import ClaimSpec, Head, Layer, register_claim


@dataclass(frozen=True)
class Band:
    first: Layer
    """The band's first layer."""
    heads: tuple[Head, ...] = ()
    """Heads of the band."""


@register_claim("user-band-claim")
@dataclass(frozen=True)
class UserBand(ClaimSpec):
    bands: tuple[Band, ...]
    """The bands the claim names."""
    min_share: float
    """A share, between 0 and 1."""
    note: str | None = None
    """Free text."""

    def check(self):
        if not 0 <= self.min_share <= 1:
            raise ValueError(f"min_share = {self.min_share}: a share is between 0 and 1.")
'''


@pytest.fixture
def user_claim(tmp_path):
    """A claim module declaring 'user-band-claim' (nested dataclasses, Layer and Head fields, a check())."""
    from circuit.spec import KNOWN_CLAIMS

    folder = tmp_path / "userclaims"
    folder.mkdir()
    (folder / "test_user_band.py").write_text(USER_CLAIM)
    import_claims(folder)
    yield folder
    KNOWN_CLAIMS.pop("user-band-claim", None)


def test_a_claim_declared_in_its_own_file_is_validated_like_a_built_in_one(tmp_path, user_claim):
    table = ('[claims.user-band-claim]\ntolerance = 0.1\nmin_share = 0.5\n'
             'bands = [{ first = 1, heads = ["L1H0"] }, { first = 2 }]\n')
    spec = load_spec(write(tmp_path, MINIMAL + table), n_layers=3, n_heads=2)
    claim = spec.claims["user-band-claim"]
    assert [b.first for b in claim.bands] == [1, 2] and claim.bands[0].heads == ("L1H0",) and claim.note is None
    assert claim.origin == "hand"
    with pytest.raises(SpecError, match=r"\[claims\.user-band-claim\.bands\[1\]\.first\] layer 2 is out of range: "
                                        r"the model has layers 0\.\.1"):
        load_spec(write(tmp_path, MINIMAL + table), n_layers=2, n_heads=2)
    with pytest.raises(SpecError, match=r"\[claims\.user-band-claim\.bands\[0\]\.heads\[0\]\] head L1H5 is out of "
                                        r"range: the model has layers 0\.\.2 and heads 0\.\.1 per layer"):
        load_spec(write(tmp_path, MINIMAL + table.replace('"L1H0"', '"L1H5"')), n_layers=3, n_heads=2)
    with pytest.raises(SpecError, match=r"\[claims\.user-band-claim\] min_share = 1\.5: a share is between 0 and 1"):
        load_spec(write(tmp_path, MINIMAL + table.replace("min_share = 0.5", "min_share = 1.5")))
    with pytest.raises(SpecError, match=r"\[claims\.user-band-claim\.min_share\] missing field: min_share = \.\.\. "
                                        r"\(A share, between 0 and 1\.\)"):
        load_spec(write(tmp_path, MINIMAL + table.replace("min_share = 0.5\n", "")))
    with pytest.raises(SpecError, match=r"\[claims\.user-band-claim\.bands\[0\]\.heads\[0\]\] 'H1' is not a head label"):
        load_spec(write(tmp_path, MINIMAL + table.replace('"L1H0"', '"H1"')))
    with pytest.raises(SpecError, match=r"\[claims\.user-band-claim\.bands\[0\]\.first\] must be an integer, got '1'"):
        load_spec(write(tmp_path, MINIMAL + table.replace("first = 1,", 'first = "1",')))
    with pytest.raises(SpecError, match=r"\[claims\.user-band-claim\.origin\] is 'robot'; use one of \['hand', "
                                        r"'discovery'\]"):
        load_spec(write(tmp_path, MINIMAL + table + 'origin = "robot"\n'))


def test_an_unknown_claim_id_says_where_claims_are_declared(tmp_path):
    with pytest.raises(SpecError, match=r"unknown claim id 'no-such-claim'; known: \[.*\]\. A claim is declared "
                                        r"with @register_claim in its claims/ file\."):
        load_spec(write(tmp_path, MINIMAL + "[claims.no-such-claim]\ntolerance = 1\n"))


def test_register_claim_refuses_bad_declarations(tmp_path, user_claim):
    from dataclasses import dataclass

    from circuit.spec import ClaimSpec, register_claim

    with pytest.raises(ValueError, match=r"Claim id 'Bad_Id': use lower-case words joined by hyphens"):
        register_claim("Bad_Id")

    class NotADataclass(ClaimSpec):
        pass

    with pytest.raises(ValueError, match=r"it must be a @dataclass\(frozen=True\) subclass of circuit\.spec\.ClaimSpec"):
        register_claim("some-claim")(NotADataclass)

    @dataclass(frozen=True)
    class Elsewhere(ClaimSpec):
        pass

    with pytest.raises(ValueError, match=r"Claim id 'user-band-claim' is declared twice: by UserBand in .*"
                                         r"test_user_band\.py and by .*Elsewhere in .*test_spec\.py\. Rename one\."):
        register_claim("user-band-claim")(Elsewhere)
    import_claims(user_claim)  # the same file imported again replaces its own declaration


def test_drift_is_worse_unless_a_claim_asks_for_both(tmp_path):
    spec = load_spec(write(tmp_path, MINIMAL + NAMED_HEADS + '[claims.task-solved]\ntolerance = 1\ndrift = "both"\n'))
    assert (spec.claims["named-heads"].drift, spec.claims["task-solved"].drift) == ("worse", "both")


def test_what_a_statistic_is_measured_with_leaves_out_bounds_and_bookkeeping(tmp_path):
    from circuit.spec import measured_with

    text = MINIMAL + NAMED_HEADS + ("[claims.final-token-localization]\ntolerance = 0.1\norigin = \"discovery\"\n"
                                    "late_from_layer = 1\nmin_recovery = 0.5\nmax_other_recovery = 0.2\n")
    spec = load_spec(write(tmp_path, text))
    population = {"prompts.min_digits": 2, "prompts.max_digits": 3, "prompts.corruptions": ["same_length"],
                  "prompts.metric": "seed"}
    assert measured_with(spec.claims["final-token-localization"], spec.prompts) == {"late_from_layer": 1,
                                                                                     **population}
    assert measured_with(spec.claims["named-heads"], spec.prompts) == {
        "top_k": 2, "heads": [{"head": "L1H3", "sign": "positive", "by": ["z_patching"]}], **population}
