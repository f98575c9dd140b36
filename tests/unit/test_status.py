"""Spec of status building: what happened to a step -> the new status, its phase and conditions."""

import copy

import pytest

from selfreward.operator import plan as planner
from selfreward.operator import status as status_core
from selfreward.operator.events import between
from selfreward.operator.plan import Done, Failed, Suspended, Waiting
from selfreward.operator.status import derived_metrics, record, record_start, reset_failed, set_condition, summarize
from tests.builders import ROOT, condition, defaulted_spec, find_iteration, find_stage, status_with, succeeded_through

SPEC = defaulted_spec()
T0, T1, T2 = "2025-01-01T00:00:00Z", "2025-01-01T01:00:00Z", "2025-01-01T02:00:00Z"


def step(iteration, stage, attempt=1):
    return planner.step_for(SPEC, ROOT, iteration, stage, attempt)


def success(*shards, **metrics):
    return {"ok": True, "shards": [{"index": i} for i in shards], "metrics": metrics}


def failure(error="boom", reason="OutOfMemory", permanent=False):
    return {"ok": False, "reason": reason, "error": error, "permanent": permanent}


# --- recording a stage ------------------------------------------------------------------------


def test_record_start_marks_the_stage_running_with_its_children():
    status = record_start({}, step(2, "generate"), ["demo-i02-generate-a1"], at=T0)

    item = find_stage(status, 2, "generate")
    assert item["state"] == "Running"
    assert item["attempt"] == 1
    assert item["children"] == ["demo-i02-generate-a1"]
    assert item["startedAt"] == T0
    assert item["shardsDone"] == []
    assert item["outputs"] == {"candidates": f"{ROOT}/iter-02/candidates"}


def test_record_start_of_a_retry_clears_the_last_failure():
    failed = record({}, step(1, "sft"), failure(), at=T0)

    item = find_stage(record_start(failed, step(1, "sft", 2), ["demo-i01-sft-a2"], at=T1), 1, "sft")

    assert (item["state"], item["attempt"], item["startedAt"]) == ("Running", 2, T1)
    assert not {"reason", "message", "permanent", "finishedAt"} & set(item)


def test_record_success_stores_metrics_shards_and_outputs():
    status = record({}, step(2, "generate"), success(0, 2, candidates=8, candidateChars=800), at=T1)

    item = find_stage(status, 2, "generate")
    assert item["state"] == "Succeeded"
    assert item["shardsDone"] == [0, 2]
    assert item["metrics"] == {"candidates": 8, "candidateChars": 800, "meanCandidateChars": 100.0}
    assert item["outputs"] == {"candidates": f"{ROOT}/iter-02/candidates"}
    assert item["finishedAt"] == T1


def test_record_success_keeps_shards_done_by_an_earlier_attempt():
    first = record_start({}, step(2, "judge"), [], at=T0)
    find_stage(first, 2, "judge")["shardsDone"] = [1]

    status = record(first, step(2, "judge"), success(0, 2, pairs=0), at=T1)

    assert find_stage(status, 2, "judge")["shardsDone"] == [0, 1, 2]


@pytest.mark.parametrize(
    ("iteration", "stage", "model"),
    [
        pytest.param(1, "sft", f"{ROOT}/iter-01/model", id="sft"),
        pytest.param(2, "dpo", f"{ROOT}/iter-02/model", id="dpo"),
    ],
)
def test_a_training_success_sets_the_iterations_model(iteration, stage, model):
    status = record({}, step(iteration, stage), success(0), at=T1)

    assert find_iteration(status, iteration)["model"] == model


@pytest.mark.parametrize("stage", ["instruct", "generate", "judge", "evaluate"])
def test_an_inference_success_sets_no_model(stage):
    status = record({}, step(2, stage), success(0), at=T1)

    assert "model" not in find_iteration(status, 2)


def test_a_failed_training_stage_sets_no_model():
    assert "model" not in find_iteration(record({}, step(1, "sft"), failure(), at=T1), 1)


def test_record_failure_stores_reason_message_and_permanence():
    status = record({}, step(1, "sft"), failure("CUDA out of memory", "OutOfMemory", permanent=True), at=T1)

    item = find_stage(status, 1, "sft")
    assert item["state"] == "Failed"
    assert (item["reason"], item["message"], item["permanent"]) == ("OutOfMemory", "CUDA out of memory", True)


def test_a_failure_message_is_cut_to_1024_characters():
    item = find_stage(record({}, step(1, "sft"), failure("x" * 5000), at=T1), 1, "sft")

    assert item["message"] == "x" * 1024


def test_a_failure_without_reason_or_message_gets_defaults():
    item = find_stage(record({}, step(1, "sft"), {"ok": False}, at=T1), 1, "sft")

    assert item["reason"] == "StageFailed"
    assert item["message"]
    assert item["permanent"] is False


def test_a_success_after_a_failure_clears_the_failure():
    failed = record({}, step(1, "sft"), failure(permanent=True), at=T0)

    item = find_stage(record(failed, step(1, "sft", 2), success(0), at=T1), 1, "sft")

    assert item["state"] == "Succeeded"
    assert not {"reason", "message", "permanent"} & set(item)


def test_iterations_are_kept_in_order():
    status = record({}, step(2, "instruct"), success(0), at=T0)
    status = record(status, step(1, "sft"), success(0), at=T1)

    assert [entry["iteration"] for entry in status["iterations"]] == [1, 2]


# --- derived metrics --------------------------------------------------------------------------


def test_mean_scores_are_sums_over_pairs():
    metrics = derived_metrics("judge", {"pairs": 4, "chosenScoreSum": 18, "rejectedScoreSum": 7})

    assert metrics["meanChosenScore"] == 4.5
    assert metrics["meanRejectedScore"] == 1.75


def test_no_mean_score_without_pairs():
    metrics = derived_metrics("judge", {"pairs": 0, "chosenScoreSum": 0, "rejectedScoreSum": 0})

    assert "meanChosenScore" not in metrics
    assert "meanRejectedScore" not in metrics
    assert metrics["pairs"] == 0


def test_mean_candidate_length_is_chars_over_candidates():
    assert derived_metrics("generate", {"candidates": 3, "candidateChars": 100})["meanCandidateChars"] == 33.3


def test_other_stages_keep_their_metrics_as_reported():
    assert derived_metrics("evaluate", {"pairwiseAccuracy": 0.8}) == {"pairwiseAccuracy": 0.8}


# --- phase and conditions ---------------------------------------------------------------------


def test_done_means_succeeded_and_ready():
    status = summarize(succeeded_through(3), Done(), SPEC, at=T0)

    assert status["phase"] == "Succeeded"
    assert status["iteration"] == 3
    assert condition(status, "Ready")["status"] == "True"
    assert condition(status, "Progressing")["status"] == "False"
    assert condition(status, "Failed")["status"] == "False"
    assert {entry["phase"] for entry in status["iterations"]} == {"Succeeded"}


def test_failed_means_the_failed_condition_with_the_stages_reason():
    decision = Failed(1, "sft", "OutOfMemory", "CUDA out of memory")

    status = summarize(status_with((1, "sft", "Failed", 3)), decision, SPEC, at=T0)

    assert (status["phase"], status["iteration"], status["stage"]) == ("Failed", 1, "sft")
    failed = condition(status, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "OutOfMemory")
    assert "CUDA out of memory" in failed["message"]
    assert condition(status, "Ready")["status"] == "False"
    assert find_iteration(status, 1)["phase"] == "Failed"


@pytest.mark.parametrize(
    "decision",
    [pytest.param(planner.step_for(SPEC, ROOT, 2, "judge", 1), id="step"), pytest.param(Waiting(2, "judge"), id="waiting")],
)
def test_a_step_or_wait_means_running_and_progressing(decision):
    status = summarize(succeeded_through(1), decision, SPEC, at=T0)

    assert (status["phase"], status["iteration"], status["stage"]) == ("Running", 2, "judge")
    assert condition(status, "Progressing")["status"] == "True"
    assert condition(status, "Ready")["status"] == "False"
    assert condition(status, "Failed")["status"] == "False"


def test_suspended_means_not_progressing():
    status = summarize(status_with((1, "sft", "Succeeded"), iteration=1, stage="sft"), Suspended(), SPEC, at=T0)

    assert status["phase"] == "Suspended"
    assert condition(status, "Progressing")["status"] == "False"
    assert condition(status, "Progressing")["reason"] == "Suspended"


def test_an_iteration_with_stages_left_is_running():
    status = summarize(status_with((1, "sft", "Succeeded")), Waiting(1, "evaluate"), SPEC, at=T0)

    assert find_iteration(status, 1)["phase"] == "Running"


def test_a_condition_keeps_its_transition_time_while_its_status_stays():
    first = summarize({}, planner.step_for(SPEC, ROOT, 1, "sft", 1), SPEC, at=T0)

    second = summarize(first, Waiting(1, "sft"), SPEC, at=T1)

    assert condition(second, "Progressing")["lastTransitionTime"] == T0


def test_a_condition_gets_a_new_transition_time_when_its_status_flips():
    running = summarize({}, Waiting(1, "sft"), SPEC, at=T0)

    failed = summarize(running, Failed(1, "sft", "OutOfMemory", ""), SPEC, at=T2)

    assert condition(failed, "Failed")["lastTransitionTime"] == T2
    assert condition(failed, "Progressing")["lastTransitionTime"] == T2
    assert condition(failed, "Ready")["lastTransitionTime"] == T0


def test_set_condition_replaces_only_its_own_type():
    conditions = set_condition([], status_core.ConditionType.READY, False, "InProgress", "", None, at=T0)
    conditions = set_condition(conditions, status_core.ConditionType.FAILED, False, "NoFailure", "", None, at=T0)

    conditions = set_condition(conditions, status_core.ConditionType.READY, True, "RunSucceeded", "done", None, at=T1)

    assert [(c["type"], c["status"]) for c in conditions] == [("Failed", "False"), ("Ready", "True")]


@pytest.mark.parametrize(("generation", "present"), [pytest.param(7, True, id="given"), pytest.param(None, False, id="absent")])
def test_observed_generation_is_set_when_given(generation, present):
    status = summarize({}, Waiting(1, "sft"), SPEC, generation=generation, at=T0)

    assert ("observedGeneration" in status) is present
    assert all(("observedGeneration" in c) is present for c in status["conditions"])
    if present:
        assert status["observedGeneration"] == 7
        assert {c["observedGeneration"] for c in status["conditions"]} == {7}


# --- purity and retries -----------------------------------------------------------------------


FAILED_STATUS = summarize(
    status_with((1, "sft", "Failed", 3, {"reason": "OutOfMemory", "message": "m", "permanent": True})),
    Failed(1, "sft", "OutOfMemory", "m"),
    SPEC,
    generation=2,
    at=T0,
)

CALLS = [
    pytest.param(lambda s: record_start(s, step(1, "sft", 4), ["c"], at=T1), id="record_start"),
    pytest.param(lambda s: record(s, step(1, "sft", 4), success(0), at=T1), id="record-success"),
    pytest.param(lambda s: record(s, step(1, "sft", 4), failure(), at=T1), id="record-failure"),
    pytest.param(lambda s: summarize(s, Done(), SPEC, generation=3, at=T1), id="summarize"),
    pytest.param(lambda s: reset_failed(s), id="reset_failed"),
    pytest.param(
        lambda s: set_condition(s["conditions"], status_core.ConditionType.FAILED, False, "NoFailure", "", 3, at=T1),
        id="set_condition",
    ),
]


@pytest.mark.parametrize("call", CALLS)
def test_status_functions_never_change_their_input(call):
    status = copy.deepcopy(FAILED_STATUS)

    call(status)

    assert status == FAILED_STATUS


def test_reset_failed_gives_a_failed_stage_its_retries_back_under_a_new_attempt_number():
    status = reset_failed(status_with((1, "sft", "Succeeded"), (1, "evaluate", "Failed", 3, {"permanent": True})))

    item = find_stage(status, 1, "evaluate")
    assert (item["state"], item["attempt"], item["permanent"]) == ("Pending", 3, False)
    assert find_stage(status, 1, "sft")["state"] == "Succeeded"
    decision = planner.plan(SPEC, status, ROOT)
    assert (decision.stage, decision.attempt) == ("evaluate", 4)  # child names ...-a1..a3 are never reused


def test_after_reset_failed_the_stage_has_its_whole_retry_budget_again():
    limit = SPEC["retries"]["limit"]
    status = reset_failed(status_with((1, "sft", "Succeeded"), (1, "evaluate", "Failed", 3)))
    for attempt in range(4, 4 + limit):
        status = record(status, planner.step_for(SPEC, ROOT, 1, "evaluate", attempt), {"ok": False, "reason": "Flaky"})
        decision = planner.plan(SPEC, status, ROOT)
        assert isinstance(decision, planner.Step) and decision.attempt == attempt + 1

    status = record(status, planner.step_for(SPEC, ROOT, 1, "evaluate", 4 + limit), {"ok": False, "reason": "Flaky"})
    assert isinstance(planner.plan(SPEC, status, ROOT), planner.Failed)


# --- disruptions, stages not reached, kstatus conditions ----------------------------------------


NO_RETRIES = defaulted_spec(("retries.limit", 0))


def disrupted(reason="Disrupted"):
    return {"ok": False, "reason": reason, "error": "the pod was evicted", "permanent": False, "disrupted": True}


def sft(attempt, spec=NO_RETRIES):
    return planner.step_for(spec, ROOT, 1, "sft", attempt)


def test_a_disrupted_failure_does_not_count_against_the_retries():
    status = record({}, sft(1), disrupted(), at=T1)

    decision = planner.plan(NO_RETRIES, status, ROOT)

    assert isinstance(decision, planner.Step)
    assert (decision.stage, decision.attempt) == ("sft", 2)


def test_a_failure_that_was_not_a_disruption_counts():
    status = record({}, sft(1), failure(), at=T1)

    assert isinstance(planner.plan(NO_RETRIES, status, ROOT), Failed)


def test_each_disruption_moves_the_retry_base_on_by_one():
    status = record({}, sft(1), disrupted(), at=T0)
    status = record(status, sft(2), disrupted(), at=T1)

    item = find_stage(status, 1, "sft")
    assert (item["state"], item["attempt"], item["retryBase"]) == ("Failed", 2, 2)
    assert planner.plan(NO_RETRIES, status, ROOT).attempt == 3


def test_a_disrupted_failure_is_recorded_as_a_failure_with_its_reason():
    item = find_stage(record({}, sft(1), disrupted(), at=T1), 1, "sft")

    assert (item["state"], item["reason"], item["permanent"]) == ("Failed", "Disrupted", False)


def test_a_real_failure_after_a_disruption_counts():
    status = record({}, sft(1), disrupted(), at=T0)
    status = record(status, sft(2), failure(), at=T1)

    assert isinstance(planner.plan(NO_RETRIES, status, ROOT), Failed)


def chain_started():
    """generate and judge of iteration 2 running in one child."""
    status = succeeded_through(1, then=((2, "instruct", "Succeeded"),))
    for name in ("generate", "judge"):
        status = record_start(status, step(2, name), ["demo-i02-generate-a1"], at=T0)
    return status


def test_a_stage_not_reached_goes_back_to_pending():
    status = record(chain_started(), step(2, "generate"), failure(), at=T1)

    item = find_stage(status_core.record_not_reached(status, step(2, "judge")), 2, "judge")

    assert item["state"] == "Pending"
    assert not {"reason", "message", "permanent"} & set(item)


def test_a_stage_not_reached_runs_once_the_stage_before_it_succeeds():
    status = record(chain_started(), step(2, "generate"), failure(), at=T1)
    status = status_core.record_not_reached(status, step(2, "judge"))
    status = record(status, step(2, "generate", 2), success(0), at=T2)

    decision = planner.plan(SPEC, status, ROOT)

    assert isinstance(decision, planner.Step)
    assert decision.stage == "judge"


def test_a_stage_not_reached_is_no_event():
    before = record(chain_started(), step(2, "generate"), failure(), at=T1)

    after = status_core.record_not_reached(before, step(2, "judge"))

    assert between(before, after) == []


def test_record_not_reached_never_changes_its_input():
    status = chain_started()
    before = copy.deepcopy(status)

    status_core.record_not_reached(status, step(2, "judge"))

    assert status == before


def test_a_stage_not_reached_spends_none_of_its_retries():
    spec = defaulted_spec(("retries.limit", 1))
    status = record(chain_started(), step(2, "generate"), failure(), at=T1)
    status = status_core.record_not_reached(status, step(2, "judge"))
    status = record(status, step(2, "generate", 2), success(0), at=T2)
    judge = planner.plan(spec, status, ROOT)

    status = record(status, judge, failure(), at=T2)  # judge's first real failure; one retry is left

    assert isinstance(planner.plan(spec, status, ROOT), planner.Step)


@pytest.mark.parametrize(
    ("decision", "reconciling", "stalled"),
    [
        pytest.param(Failed(1, "sft", "OutOfMemory", "CUDA out of memory"), "False", "True", id="failed"),
        pytest.param(Waiting(1, "sft"), "True", "False", id="waiting"),
        pytest.param(planner.step_for(SPEC, ROOT, 1, "sft", 2), "True", "False", id="step"),
        pytest.param(Done(), "False", "False", id="done"),
    ],
)
def test_kstatus_conditions_say_whether_work_goes_on_or_is_stuck(decision, reconciling, stalled):
    status = summarize(status_with((1, "sft", "Failed")), decision, SPEC, at=T0)

    assert condition(status, "Reconciling")["status"] == reconciling
    assert condition(status, "Stalled")["status"] == stalled


def test_a_failed_run_is_stalled_with_the_stages_reason_and_message():
    status = summarize(status_with((1, "sft", "Failed", 3)), Failed(1, "sft", "OutOfMemory", "CUDA out of memory"), SPEC, at=T0)

    stalled = condition(status, "Stalled")
    assert stalled["reason"] == "OutOfMemory"
    assert "CUDA out of memory" in stalled["message"]
    assert condition(status, "Reconciling")["reason"] == "RetriesExhausted"


def test_a_running_run_is_reconciling_with_its_stage():
    reconciling = condition(summarize(succeeded_through(1), Waiting(2, "judge"), SPEC, at=T0), "Reconciling")

    assert (reconciling["status"], reconciling["reason"]) == ("True", "StageRunning")
    assert "judge" in reconciling["message"]


def test_a_suspended_run_is_not_reconciling():
    status = summarize(status_with((1, "sft", "Succeeded"), iteration=1, stage="sft"), Suspended(), SPEC, at=T0)

    assert (condition(status, "Reconciling")["status"], condition(status, "Reconciling")["reason"]) == ("False", "Suspended")


def test_a_failed_run_that_is_retried_is_no_longer_stalled():
    failed = summarize(status_with((1, "sft", "Failed", 3)), Failed(1, "sft", "OutOfMemory", ""), SPEC, at=T0)

    retried = summarize(reset_failed(failed), planner.step_for(SPEC, ROOT, 1, "sft", 4), SPEC, at=T1)

    assert condition(retried, "Stalled")["status"] == "False"
    assert condition(retried, "Stalled")["lastTransitionTime"] == T1
    assert condition(retried, "Reconciling")["status"] == "True"
