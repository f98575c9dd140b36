"""Spec of the planner: from a run's spec and status, the next step, or that the run is over."""

import re

import pytest

from selfreward.operator import layout
from selfreward.operator import plan as planner
from selfreward.operator.plan import Done, Failed, Step, Suspended, Waiting
from selfreward.operator.status import record
from tests.builders import BASE_MODEL, ROOT, defaulted_spec, status_with, succeeded_through

SPEC = defaulted_spec()
M1 = f"{ROOT}/iter-01/model"
M2 = f"{ROOT}/iter-02/model"


def next_step(status, spec=SPEC):
    decision = planner.plan(spec, status, ROOT)
    assert isinstance(decision, Step), decision
    return decision


def chain(status, spec=SPEC, first=None):
    return planner.plan_chain(spec, status, ROOT, record, first=first)


# --- iteration 1 ------------------------------------------------------------------------------


def test_a_new_run_starts_with_sft_of_the_base_model():
    step = next_step({})

    assert (step.iteration, step.stage, step.attempt) == (1, "sft", 1)
    assert step.inputs == {
        "model": BASE_MODEL,
        "instructions": SPEC["seed"]["instructions"],
        "evaluations": SPEC["seed"]["evaluations"],
    }
    assert step.model == BASE_MODEL
    assert step.outputs == {"model": f"{ROOT}/iter-01/model", "checkpoints": f"{ROOT}/iter-01/checkpoints"}
    assert step.kind == "training"


def test_sft_is_given_the_spec_it_needs_and_of_the_judge_only_what_formats_its_examples():
    how_it_runs = planner.EXECUTION_FIELDS["sft"]
    sft = {key: value for key, value in SPEC["sft"].items() if key not in how_it_runs}

    assert next_step({}).sections == {"sft": sft, "judge": {"scoreRange": SPEC["judge"]["scoreRange"]}}


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_how_a_training_stage_runs_is_given_apart_from_its_spec(stage):
    execution = planner.execution_options(SPEC, stage)

    assert execution == {key: SPEC[stage][key] for key in planner.EXECUTION_FIELDS[stage]}
    assert {"zeroStage", "checkpointEvery", "gradientCheckpointing"} <= set(execution)


def test_inference_stages_have_no_execution_options():
    assert planner.execution_options(SPEC, "generate") == {}


def test_a_custom_judge_template_is_part_of_what_sft_is_given():
    spec = defaulted_spec(("judge.template", "Rate {prompt} / {response}"))
    step = planner.plan(spec, {}, ROOT)
    assert step.sections["judge"] == {"template": "Rate {prompt} / {response}", "scoreRange": spec["judge"]["scoreRange"]}


def test_after_sft_the_new_model_m1_is_evaluated():
    step = next_step(status_with((1, "sft", "Succeeded")))

    assert (step.iteration, step.stage) == (1, "evaluate")
    assert step.model == M1
    assert step.inputs == {"model": M1, "holdout": SPEC["seed"]["evaluationHoldout"]}
    assert step.outputs == {"evaluation": f"{ROOT}/iter-01/evaluation"}


def test_without_evaluation_iteration_2_follows_sft_directly():
    spec = defaulted_spec(("evaluation.enabled", False))

    step = next_step(status_with((1, "sft", "Succeeded")), spec)

    assert (step.iteration, step.stage) == (2, "instruct")


# --- iteration 2 and later --------------------------------------------------------------------


ITERATION_2 = [
    pytest.param("instruct", M1, id="instruct"),
    pytest.param("generate", M1, id="generate"),
    pytest.param("judge", M1, id="judge"),
    pytest.param("dpo", M1, id="dpo"),
    pytest.param("evaluate", M2, id="evaluate"),
]


def steps_of_iteration_2(spec=SPEC):
    """Each step the planner gives while iteration 2's stages succeed one after the other."""
    status = succeeded_through(1)
    steps = []
    while True:
        decision = planner.plan(spec, status, ROOT)
        if not isinstance(decision, Step) or decision.iteration != 2:
            return steps
        steps.append(decision)
        status = record(status, decision, {"ok": True, "shards": [], "metrics": {}})


def test_iteration_2_runs_its_stages_in_order():
    assert [step.stage for step in steps_of_iteration_2()] == ["instruct", "generate", "judge", "dpo", "evaluate", "compare"]


@pytest.mark.parametrize(("stage", "model"), ITERATION_2)
def test_iteration_2_uses_m1_until_dpo_has_trained_m2(stage, model):
    step = next(s for s in steps_of_iteration_2() if s.stage == stage)

    assert step.model == model
    assert step.inputs["model"] == model


@pytest.mark.parametrize(
    ("stage", "inputs", "outputs"),
    [
        pytest.param("instruct", {}, {"prompts": "iter-02/prompts"}, id="instruct"),
        pytest.param("generate", {"prompts": "iter-02/prompts"}, {"candidates": "iter-02/candidates"}, id="generate"),
        pytest.param(
            "judge",
            {"candidates": "iter-02/candidates"},
            {"judgements": "iter-02/judgements", "pairs": "iter-02/pairs"},
            id="judge",
        ),
        pytest.param("dpo", {"pairs": "iter-02/pairs"}, {"model": "iter-02/model", "checkpoints": "iter-02/checkpoints"}, id="dpo"),
    ],
)
def test_each_stage_reads_what_the_one_before_wrote(stage, inputs, outputs):
    step = next(s for s in steps_of_iteration_2() if s.stage == stage)

    for name, folder in inputs.items():
        assert step.inputs[name] == f"{ROOT}/{folder}"
    assert step.outputs == {name: f"{ROOT}/{folder}" for name, folder in outputs.items()}


def test_instruct_of_iteration_2_has_no_earlier_prompts():
    step = next_step(succeeded_through(1))

    assert step.inputs["earlierPrompts"] == []
    assert step.inputs["instructions"] == SPEC["seed"]["instructions"]


def test_instruct_of_iteration_3_sees_the_prompts_of_iteration_2():
    step = next_step(succeeded_through(2))

    assert (step.iteration, step.stage) == (3, "instruct")
    assert step.inputs["earlierPrompts"] == [f"{ROOT}/iter-02/prompts"]
    assert step.model == M2


def test_a_configured_prompt_generator_replaces_the_current_model_for_instruct_only():
    spec = defaulted_spec(("promptGeneration.model", "s3://models/llama-2-70b-chat"))

    steps = {step.stage: step for step in steps_of_iteration_2(spec)}

    assert steps["instruct"].model == "s3://models/llama-2-70b-chat"
    assert steps["generate"].model == M1


@pytest.mark.parametrize(
    ("stage", "shards"),
    [
        pytest.param("instruct", 1, id="instruct"),
        pytest.param("generate", 6, id="generate"),
        pytest.param("judge", 6, id="judge"),
        pytest.param("dpo", 1, id="dpo"),
        pytest.param("evaluate", 1, id="evaluate"),
    ],
)
def test_generate_and_judge_are_sharded_over_the_inference_replicas(stage, shards):
    spec = defaulted_spec(("placement.inference.replicas", 6), ("placement.training.replicas", 3))

    step = next(s for s in steps_of_iteration_2(spec) if s.stage == stage)

    assert step.shard_count == shards


# --- running, failing, retrying ---------------------------------------------------------------


def test_a_running_stage_is_waited_for():
    assert planner.plan(SPEC, status_with((1, "sft", "Running")), ROOT) == Waiting(1, "sft")


@pytest.mark.parametrize("attempt", [1, 2], ids=["first-failure", "second-failure"])
def test_a_failed_stage_is_retried_while_retries_remain(attempt):
    step = next_step(status_with((1, "sft", "Failed", attempt, {"reason": "OutOfMemory"})))

    assert (step.stage, step.attempt) == ("sft", attempt + 1)


def test_a_stage_failing_more_often_than_the_retry_limit_fails_the_run():
    status = status_with((1, "sft", "Failed", 3, {"reason": "OutOfMemory", "message": "CUDA out of memory"}))

    assert planner.plan(SPEC, status, ROOT) == Failed(1, "sft", "OutOfMemory", "CUDA out of memory")


def test_the_retry_limit_comes_from_the_spec():
    spec = defaulted_spec(("retries.limit", 0))

    decision = planner.plan(spec, status_with((1, "sft", "Failed", 1, {"reason": "OutOfMemory"})), ROOT)

    assert isinstance(decision, Failed)


def test_a_permanent_failure_is_not_retried():
    status = status_with((1, "sft", "Failed", 1, {"reason": "DataError", "message": "ift.jsonl:3", "permanent": True}))

    assert planner.plan(SPEC, status, ROOT) == Failed(1, "sft", "DataError", "ift.jsonl:3")


def test_a_failure_without_a_reason_is_named_stage_failed():
    decision = planner.plan(SPEC, status_with((1, "sft", "Failed", 9)), ROOT)

    assert isinstance(decision, Failed)
    assert decision.reason == "StageFailed"


def test_a_suspended_run_starts_nothing():
    spec = defaulted_spec(("suspend", True))

    assert planner.plan(spec, status_with((1, "sft", "Succeeded")), ROOT) == Suspended()


def test_a_suspended_run_still_waits_for_its_running_stage():
    spec = defaulted_spec(("suspend", True))

    assert planner.plan(spec, status_with((1, "sft", "Running")), ROOT) == Waiting(1, "sft")


# --- the end, and continuing ------------------------------------------------------------------


def test_a_run_whose_stages_all_succeeded_is_done():
    assert planner.plan(SPEC, succeeded_through(3), ROOT) == Done()


def test_without_evaluation_a_run_is_done_without_evaluate_stages():
    spec = defaulted_spec(("evaluation.enabled", False))

    assert planner.plan(spec, succeeded_through(3, evaluation=False), ROOT) == Done()


def test_raising_iterations_after_done_continues_with_iteration_4():
    spec = defaulted_spec(iterations=4)

    step = next_step(succeeded_through(3), spec)

    assert (step.iteration, step.stage, step.attempt) == (4, "instruct", 1)
    assert step.model == f"{ROOT}/iter-03/model"
    assert step.inputs["earlierPrompts"] == [f"{ROOT}/iter-02/prompts", f"{ROOT}/iter-03/prompts"]


# --- chains of inference steps that share a model ---------------------------------------------


def test_m1s_evaluation_chains_with_the_inference_stages_of_iteration_2():
    steps = chain(status_with((1, "sft", "Succeeded")))

    assert [(s.iteration, s.stage) for s in steps] == [(1, "evaluate"), (2, "instruct"), (2, "generate"), (2, "judge")]
    assert {s.model for s in steps} == {M1}


def test_a_chain_stops_before_training():
    steps = chain(status_with((1, "sft", "Succeeded")))

    assert "dpo" not in [s.stage for s in steps]


def test_a_chain_stops_where_another_model_writes_the_prompts():
    spec = defaulted_spec(("promptGeneration.model", "s3://models/llama-2-70b-chat"))

    steps = chain(status_with((1, "sft", "Succeeded")), spec)

    assert [s.stage for s in steps] == ["evaluate"]


def test_a_training_step_is_a_chain_of_one():
    steps = chain({})

    assert [s.stage for s in steps] == ["sft"]


def test_a_chain_starts_from_the_given_first_step():
    first = planner.step_for(SPEC, ROOT, 2, "generate", 2)

    steps = chain(succeeded_through(1, then=((2, "instruct", "Succeeded"),)), first=first)

    assert [(s.stage, s.attempt) for s in steps] == [("generate", 2), ("judge", 1)]


@pytest.mark.parametrize(
    "status",
    [
        pytest.param(succeeded_through(3), id="done"),
        pytest.param(status_with((1, "sft", "Running")), id="waiting"),
    ],
)
def test_no_chain_when_there_is_nothing_to_start(status):
    assert chain(status) == []


def test_planning_a_chain_leaves_the_status_unchanged():
    status = status_with((1, "sft", "Succeeded"))
    before = repr(status)

    chain(status)

    assert repr(status) == before


# --- child names ------------------------------------------------------------------------------


CHILD_SUFFIX = re.compile(r"-i\d{2}-(sft|instruct|generate|judge|dpo|evaluate)-a\d+$")


@pytest.mark.parametrize(
    ("run", "iteration", "stage", "attempt"),
    [
        pytest.param("demo", 1, "sft", 1, id="short"),
        pytest.param("r" * 63, 2, "evaluate", 3, id="63-characters"),
        pytest.param("a" * 40 + "-" + "b" * 22, 12, "generate", 10, id="63-with-dash-at-cut"),
        pytest.param("x" * 253, 20, "instruct", 21, id="253-characters"),
    ],
)
def test_child_names_fit_kubernetes_and_keep_their_suffix(run, iteration, stage, attempt):
    name = layout.child_name(run, iteration, stage, attempt)

    assert len(name) <= 63
    assert name.endswith(f"-i{iteration:02d}-{stage}-a{attempt}")
    assert CHILD_SUFFIX.search(name)
    assert not name.startswith("-")


def test_a_short_run_name_is_kept_whole():
    assert layout.child_name("demo", 2, "judge", 1) == "demo-i02-judge-a1"


def test_two_long_run_names_get_different_child_names():
    prefix = "team-alpha-llama-2-70b-self-rewarding-experiment-"

    first = layout.child_name(prefix + "one", 1, "generate", 1)
    second = layout.child_name(prefix + "two", 1, "generate", 1)

    assert first != second
