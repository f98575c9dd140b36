"""Spec of reading a SelfRewardRun: the CRD's schema, defaults and CEL rules, as the API server applies them."""

from pathlib import Path

import pytest
import yaml

from selfreward.operator import spec as specs
from selfreward.operator.spec import SpecError
from tests.builders import defaulted_spec, run_object, run_with, with_field, without_field

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
CRD_PATH = REPO / "crds" / "selfrewardruns.yaml"


def crd_default(dotted: str):
    """The `default` the CRD file itself declares for a spec field ("dpo.beta")."""
    crd = yaml.safe_load(CRD_PATH.read_text(encoding="utf-8"))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    node = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for name in dotted.split("."):
        node = node["properties"][name]
    return node["default"]


def errors_of(obj):
    with pytest.raises(SpecError) as raised:
        specs.validate(obj)
    return raised.value.errors


def error_paths(obj):
    return [error.path for error in errors_of(obj)]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- the examples -----------------------------------------------------------------------------


EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))


def test_examples_include_the_quickstart_and_the_paper_setup():
    names = {path.name for path in EXAMPLE_FILES}

    assert {"quickstart.yaml", "paper-70b.yaml"} <= names


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=[path.stem for path in EXAMPLE_FILES])
def test_every_example_is_a_valid_run(path):
    documents = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    runs = [d for d in documents if d.get("kind") == specs.KIND]

    assert len(runs) == 1
    assert specs.validate(runs[0], str(path))["spec"]


def test_the_quickstart_loads_with_its_seed_paths_resolved_next_to_it():
    run = specs.load_run(EXAMPLES / "quickstart.yaml")

    assert run.name == "quickstart"
    assert Path(run.spec["seed"]["instructions"]) == (EXAMPLES / "seed" / "ift.jsonl").resolve()


# --- defaults ---------------------------------------------------------------------------------


PAPER_DEFAULTS = [
    pytest.param("iterations", 3, id="iterations"),
    pytest.param("generation.candidates", 4, id="candidates"),
    pytest.param("generation.temperature", 0.7, id="generation-temperature"),
    pytest.param("generation.topP", 0.9, id="generation-topP"),
    pytest.param("judge.samples", 3, id="judge-samples"),
    pytest.param("judge.scoreRange.min", 0, id="score-min"),
    pytest.param("judge.scoreRange.max", 5, id="score-max"),
    pytest.param("dpo.beta", 0.1, id="dpo-beta"),
    pytest.param("dpo.learningRate", 1e-6, id="dpo-learning-rate"),
    pytest.param("sft.learningRate", 5.5e-6, id="sft-learning-rate"),
    pytest.param("promptGeneration.fewShot.fromSeed", 6, id="fewshot-seed"),
    pytest.param("promptGeneration.fewShot.fromGenerated", 2, id="fewshot-generated"),
    pytest.param("promptGeneration.temperature", 0.6, id="prompt-temperature"),
    pytest.param("pairs.minScoreGap", 0, id="min-score-gap"),
    pytest.param("pairs.minValidJudgements", 2, id="min-valid-judgements-majority-of-3"),
    pytest.param("retries.limit", 2, id="retries"),
]


def lookup(spec, dotted):
    for name in dotted.split("."):
        spec = spec[name]
    return spec


@pytest.mark.parametrize(("field", "expected"), PAPER_DEFAULTS)
def test_an_omitted_field_gets_the_papers_value(field, expected):
    assert lookup(defaulted_spec(), field) == pytest.approx(expected)


@pytest.mark.parametrize(("field", "expected"), PAPER_DEFAULTS)
def test_defaults_are_read_from_the_crd_file(field, expected):
    declared = crd_default(field)

    assert declared == pytest.approx(expected)
    assert lookup(defaulted_spec(), field) == declared


def test_a_given_value_is_kept_over_the_default():
    assert defaulted_spec(("generation.candidates", 8))["generation"]["candidates"] == 8


def test_defaults_fill_a_partly_given_section():
    spec = defaulted_spec(("judge.scoreRange", {"max": 9}))

    assert spec["judge"]["scoreRange"] == {"min": 0, "max": 9}
    assert spec["judge"]["samples"] == 3


def test_defaulting_does_not_change_the_given_object():
    obj = run_object()
    before = yaml.safe_dump(obj)

    specs.validate(obj)

    assert yaml.safe_dump(obj) == before


# --- invalid specs ----------------------------------------------------------------------------


INVALID = [
    pytest.param(("metadata.name", "r" * 64), "metadata.name", id="name-longer-than-a-label"),
    pytest.param(("spec.colour", "blue"), "spec.colour", id="unknown-spec-field"),
    pytest.param(("spec.judge.foo", 1), "spec.judge.foo", id="unknown-nested-field"),
    pytest.param(("spec.generation.candidates", 1), "spec.generation.candidates", id="one-candidate"),
    pytest.param(("spec.dpo.beta", -1), "spec.dpo.beta", id="negative-beta"),
    pytest.param(("spec.dpo.beta", 0), "spec.dpo.beta", id="zero-beta"),
    pytest.param(("spec.iterations", 0), "spec.iterations", id="zero-iterations"),
    pytest.param(("spec.iterations", 21), "spec.iterations", id="21-iterations"),
    pytest.param(("spec.generation.topP", 0), "spec.generation.topP", id="topP-zero"),
    pytest.param(("spec.generation.temperature", 0), "spec.generation.temperature", id="greedy-candidates"),
    pytest.param(("spec.judge.temperature", 0), "spec.judge.temperature", id="cel-greedy-judge-samples"),
    pytest.param(("spec.generation.topP", 1.5), "spec.generation.topP", id="topP-above-one"),
    pytest.param(("spec.judge.scoreRange", {"min": 5, "max": 5}), "spec.judge.scoreRange", id="cel-empty-score-range"),
    pytest.param(
        ("spec.sft", {"learningRate": 1.0e-6, "finalLearningRate": 2.0e-6}),
        "spec.sft.finalLearningRate",
        id="cel-sft-final-lr-above-peak",
    ),
    pytest.param(
        ("spec.dpo", {"batchSize": 10, "microBatchSize": 4}), "spec.dpo.microBatchSize", id="cel-batch-not-multiple"
    ),
    pytest.param(
        ("spec.promptGeneration.fewShot", {"fromSeed": 0, "fromGenerated": 0}),
        "spec.promptGeneration.fewShot",
        id="cel-no-fewshot-examples",
    ),
    pytest.param(
        ("spec.promptGeneration.filters", {"minWords": 50, "maxWords": 10}),
        "spec.promptGeneration.filters.minWords",
        id="cel-min-words-above-max",
    ),
    pytest.param(
        ("spec.judge.template", "Rate the answer to {prompt}. Score: <points>"),
        "spec.judge.template",
        id="cel-template-without-response",
    ),
    pytest.param(("spec.seed.evaluationHoldout", None), "spec.seed.evaluationHoldout", id="cel-evaluation-without-holdout"),
    pytest.param(("spec.pairs.minScoreGap", 6), "spec.pairs.minScoreGap", id="cel-gap-wider-than-score-range"),
    pytest.param(("spec.pairs.minValidJudgements", 4), "spec.pairs.minValidJudgements", id="cel-min-valid-above-samples"),
    pytest.param(("spec.judge.samples", 1), "spec.pairs.minValidJudgements", id="cel-one-sample-below-default-min-valid"),
    pytest.param(("spec.pairs.minValidJudgements", 0), "spec.pairs.minValidJudgements", id="zero-min-valid"),
    pytest.param(("spec.placement.inference.replicas", 0), "spec.placement.inference.replicas", id="zero-replicas"),
    pytest.param(("spec.sft.schedule", "linear"), "spec.sft.schedule", id="enum-schedule"),
    pytest.param(("spec.storage.uri", "http://x"), "spec.storage.uri", id="pattern-storage-uri"),
    pytest.param(
        ("spec.baseModel", None),
        "spec.baseModel",
        id="missing-base-model",
    ),
    pytest.param(("apiVersion", "selfreward.io/v1"), "apiVersion", id="wrong-api-version"),
    pytest.param(("metadata.name", None), "metadata.name", id="missing-name"),
    pytest.param(("kind", "RewardRun"), "kind", id="wrong-kind"),
    pytest.param(("spec.placement.training.tolerations", [{"key": "x", "op": "Exists"}]),
                 "spec.placement.training.tolerations[0].op", id="unknown-field-in-list-item"),
]


@pytest.mark.parametrize(("change", "path"), INVALID)
def test_an_invalid_run_is_refused_naming_the_field(change, path):
    assert path in error_paths(run_with(change))


def test_a_missing_base_model_is_refused_naming_it():
    errors = errors_of(without_field(run_object(), "spec.baseModel"))

    assert any("baseModel" in str(error) for error in errors)


def test_every_invalid_field_is_reported_at_once():
    obj = run_with(("spec.generation.candidates", 1), ("spec.iterations", 0))

    assert sorted(error_paths(obj)) == ["spec.generation.candidates", "spec.iterations"]


def test_every_broken_cross_field_rule_is_reported_at_once():
    obj = run_with(("spec.judge.scoreRange", {"min": 5, "max": 5}), ("spec.promptGeneration.filters.minWords", 200))

    assert {"spec.judge.scoreRange", "spec.promptGeneration.filters.minWords"} <= set(error_paths(obj))


def test_the_error_message_names_the_field_and_the_bad_value():
    with pytest.raises(SpecError) as raised:
        specs.validate(with_field(run_object(), "spec.generation.candidates", 1), "run.yaml")

    assert "run.yaml" in str(raised.value)
    assert "spec.generation.candidates: Invalid value: 1" in str(raised.value)


def test_evaluation_disabled_needs_no_holdout():
    obj = run_with(("spec.seed.evaluationHoldout", None), ("spec.evaluation.enabled", False))

    assert specs.validate(obj)["spec"]["evaluation"]["enabled"] is False


def test_a_template_with_both_placeholders_is_accepted():
    template = "Question: {prompt}\nAnswer: {response}\nEnd with Score: <points>."

    assert defaulted_spec(("judge.template", template))["judge"]["template"] == template


def test_the_widest_allowed_score_gap_is_accepted():
    assert defaulted_spec(("pairs.minScoreGap", 5))["pairs"]["minScoreGap"] == 5


# --- reading files ----------------------------------------------------------------------------


def test_load_run_resolves_relative_seed_paths_against_the_files_folder(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    obj = run_with(("spec.storage.uri", "out"), ("spec.baseModel.uri", "s3://models/base"))
    path = write(folder / "run.yaml", yaml.safe_dump(obj))

    run = specs.load_run(path)

    assert run.spec["seed"]["instructions"] == str((folder / "seed" / "ift.jsonl").resolve())
    assert run.spec["seed"]["evaluationHoldout"] == str((folder / "seed" / "holdout.jsonl").resolve())
    assert run.spec["storage"]["uri"] == str((folder / "out").resolve())
    assert run.spec["baseModel"]["uri"] == "s3://models/base"
    assert (run.name, run.namespace) == ("demo", "default")


def test_load_run_leaves_absolute_paths_alone(tmp_path):
    absolute = str(tmp_path / "data" / "ift.jsonl")
    path = write(tmp_path / "run.yaml", yaml.safe_dump(with_field(run_object(), "spec.seed.instructions", absolute)))

    assert specs.load_run(path).spec["seed"]["instructions"] == absolute


def test_load_run_defaults_the_namespace(tmp_path):
    path = write(tmp_path / "run.yaml", yaml.safe_dump(without_field(run_object(), "metadata.namespace")))

    assert specs.load_run(path).namespace == "default"


def test_load_run_ignores_other_kinds_of_documents(tmp_path):
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    path = write(tmp_path / "run.yaml", yaml.safe_dump_all([config_map, run_object()]))

    assert specs.load_run(path).name == "demo"


@pytest.mark.parametrize(
    "documents",
    [
        pytest.param([], id="no-document"),
        pytest.param([{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}], id="no-run"),
        pytest.param([run_object(), run_object()], id="two-runs"),
    ],
)
def test_load_run_needs_exactly_one_run(tmp_path, documents):
    path = write(tmp_path / "run.yaml", yaml.safe_dump_all(documents))

    with pytest.raises(SpecError) as raised:
        specs.load_run(path)

    assert "exactly one SelfRewardRun" in str(raised.value)


def test_load_run_refuses_invalid_yaml(tmp_path):
    path = write(tmp_path / "run.yaml", "spec: [unclosed\n  baseModel: {")

    with pytest.raises(SpecError) as raised:
        specs.load_run(path)

    assert "not valid YAML" in str(raised.value)


def test_load_run_refuses_an_invalid_run_naming_the_file(tmp_path):
    path = write(tmp_path / "run.yaml", yaml.safe_dump(with_field(run_object(), "spec.iterations", 0)))

    with pytest.raises(SpecError) as raised:
        specs.load_run(path)

    assert str(path) in str(raised.value)
    assert [error.path for error in raised.value.errors] == ["spec.iterations"]
