"""Claim specs: loading, validation errors that name the file and key, and spec selection by model."""

from pathlib import Path

import pytest

from circuit.spec import KNOWN_CLAIMS, NamedHeadsClaim, SpecError, find_spec, load_spec, parse_head

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


def test_the_qwen_spec_states_the_source_analysis_claims():
    spec = load_spec(SPECS / "qwen2.5-0.5b.toml", n_layers=24, n_heads=14)
    heads = spec.claims["named-heads"]
    assert isinstance(heads, NamedHeadsClaim)
    assert {(h.head, h.sign) for h in heads.heads} == {("L23H1", "positive"), ("L22H7", "negative"),
                                                       ("L0H11", "any")}
    assert set(spec.claims) == set(KNOWN_CLAIMS)
    assert spec.prompts.min_digits == spec.prompts.max_digits == 5


def test_every_bundled_spec_loads():
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
