"""Spec of reading results: a finished child and its pods' termination messages -> one summary per step."""

import json

import pytest

from selfreward.operator import plan as planner
from selfreward.operator.results import ChildState, child_state, latest_by_shard, merge_metrics, pod_report, step_summaries
from tests.builders import ROOT, defaulted_spec

SPEC = defaulted_spec(("placement.inference.replicas", 2))
GENERATE = planner.step_for(SPEC, ROOT, 2, "generate", 1)
JUDGE = planner.step_for(SPEC, ROOT, 2, "judge", 1)
SFT = planner.step_for(SPEC, ROOT, 1, "sft", 1)
T0, T1, T2 = "2025-01-01T00:00:00Z", "2025-01-01T00:05:00Z", "2025-01-01T00:10:00Z"
COMPLETE = ChildState(True, False, "Complete", "")
FAILED = ChildState(True, False, "FailedIndexes", "Job has failed indexes")


# --- builders -----------------------------------------------------------------------------------


def ok(stage, *shards, **metrics):
    return {"ok": True, "stage": stage, "shards": [{"index": i} for i in shards], "metrics": metrics}


def failed(stage, reason="DataError", error="bad rows", permanent=False):
    return {"ok": False, "stage": stage, "reason": reason, "error": error, "permanent": permanent}


def message(*summaries):
    """A termination message: one JSON summary line per stage the pod reported on."""
    return "\n".join(json.dumps(summary) for summary in summaries)


def pod(shard=0, phase="Succeeded", text="", exit_code=None, reason=None, disrupted=False, created=T0,
        container="worker", indexed=True):
    """A pod whose stage container terminated (phase Succeeded or Failed) or still runs (Running)."""
    exit_code = (0 if phase == "Succeeded" else 1) if exit_code is None else exit_code
    reason = reason or ("Completed" if exit_code == 0 else "Error")
    state = {"running": {}} if phase in ("Pending", "Running") else {
        "terminated": {"exitCode": exit_code, "reason": reason, "message": text}}
    conditions = [{"type": "Ready", "status": "False"}]
    if disrupted:
        conditions.append({"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI"})
    annotations = {"batch.kubernetes.io/job-completion-index": str(shard)} if indexed else {}
    return {
        "metadata": {"name": f"demo-i02-generate-a1-{shard}-{created[-6:-1].replace(':', '')}",
                     "annotations": annotations, "creationTimestamp": created},
        "status": {"phase": phase, "conditions": conditions,
                   "containerStatuses": [{"name": container, "state": state}]},
    }


def succeeded(shard, *summaries, **kwargs):
    return pod(shard, "Succeeded", message(*summaries), **kwargs)


def died(shard, *summaries, exit_code=1, tail="", **kwargs):
    text = "\n".join(part for part in (message(*summaries), tail) if part)
    return pod(shard, "Failed", text, exit_code=exit_code, **kwargs)


def master(*summaries, phase="Succeeded", created=T0, **kwargs):
    return pod(0, phase, message(*summaries), container="pytorch", indexed=False, created=created, **kwargs)


def worker(phase="Succeeded", created=T1, **kwargs):
    return pod(0, phase, "", container="pytorch", indexed=False, created=created, **kwargs)


def condition(kind, status="True", reason=None, message=""):
    return {"type": kind, "status": status, "reason": reason or kind, "message": message}


def job_child(*conditions, suspend=False):
    return {"apiVersion": "batch/v1", "kind": "Job", "spec": {"suspend": suspend}, "status": {"conditions": list(conditions)}}


def pytorchjob_child(*conditions, suspend=False):
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "spec": {"runPolicy": {"suspend": suspend}},
            "status": {"conditions": list(conditions)}}


def only(results):
    (result,) = results
    return result


# --- the child's state -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("child", "finished", "suspended", "reason"),
    [
        pytest.param(job_child(), False, False, "", id="job-new"),
        pytest.param(job_child(condition("Complete", reason="CompletionsReached")), True, False, "CompletionsReached",
                     id="job-complete"),
        pytest.param(job_child(condition("FailureTarget"), condition("Failed", reason="PodFailurePolicy")), True, False,
                     "PodFailurePolicy", id="job-failed"),
        pytest.param(job_child(condition("Failed", status="False")), False, False, "", id="job-failed-false"),
        pytest.param(job_child(condition("Suspended"), suspend=True), False, True, "", id="job-suspended"),
        pytest.param(job_child(condition("Complete")), True, False, "Complete", id="job-condition-without-reason"),
        pytest.param(pytorchjob_child(condition("Created"), condition("Running")), False, False, "", id="pytorchjob-running"),
        pytest.param(pytorchjob_child(condition("Created"), condition("Succeeded", reason="PyTorchJobSucceeded")), True, False,
                     "PyTorchJobSucceeded", id="pytorchjob-succeeded"),
        pytest.param(pytorchjob_child(condition("Failed", reason="PyTorchJobFailed")), True, False, "PyTorchJobFailed",
                     id="pytorchjob-failed"),
        pytest.param(pytorchjob_child(condition("Suspended"), suspend=True), False, True, "", id="pytorchjob-suspended"),
    ],
)
def test_a_child_is_finished_once_it_reached_a_terminal_condition(child, finished, suspended, reason):
    state = child_state(child)

    assert (state.finished, state.suspended, state.reason) == (finished, suspended, reason)


def test_a_child_without_status_is_not_finished():
    assert child_state({"kind": "Job", "spec": {}}) == ChildState(False, False)


def test_the_terminal_conditions_message_is_kept():
    state = child_state(job_child(condition("Failed", reason="BackoffLimitExceeded", message="Job has reached the limit")))

    assert state.message == "Job has reached the limit"


# --- one pod ---------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["Pending", "Running"])
def test_a_pod_that_has_not_terminated_has_no_report(phase):
    assert pod_report(pod(phase=phase)) is None


def test_a_pod_reports_its_shard_from_the_completion_index():
    assert pod_report(succeeded(7, ok("generate", 7))).shard == 7


def test_a_pod_without_completion_index_is_shard_0():
    assert pod_report(master(ok("sft", 0))).shard == 0


def test_a_pods_summary_lines_are_read_by_stage():
    report = pod_report(succeeded(0, ok("generate", 0), ok("judge", 0)))

    assert set(report.summaries) == {"generate", "judge"}
    assert report.summaries["judge"] == ok("judge", 0)
    assert report.log_tail == ""


def test_lines_that_are_not_summaries_are_the_log_tail():
    report = pod_report(died(0, exit_code=137, tail='Traceback (most recent call last):\n{"not": "a summary"}\nKilled'))

    assert report.summaries == {}
    assert report.log_tail == 'Traceback (most recent call last):\n{"not": "a summary"}\nKilled'
    assert (report.succeeded, report.exit_code, report.reason) == (False, 137, "Error")


def test_a_disruption_target_condition_marks_the_pod_disrupted():
    assert pod_report(died(0, exit_code=143, disrupted=True)).disrupted is True
    assert pod_report(died(0, exit_code=143)).disrupted is False


# --- one report per shard --------------------------------------------------------------------


def test_a_replacement_that_succeeded_speaks_for_its_shard_over_the_pod_it_replaced():
    older = died(0, exit_code=137, created=T0, disrupted=True)
    newer = succeeded(0, ok("generate", 0), created=T1)

    assert latest_by_shard([newer, older])[0].succeeded is True


def test_a_success_is_not_overtaken_by_a_newer_silent_failure():
    older = succeeded(0, ok("generate", 0), created=T0)
    newer = died(0, exit_code=137, created=T1)

    assert latest_by_shard([older, newer])[0].summaries == {"generate": ok("generate", 0)}


def test_among_equally_telling_pods_the_newest_speaks():
    older = died(0, failed("generate", reason="First"), created=T0)
    newer = died(0, failed("generate", reason="Second"), created=T1)

    assert latest_by_shard([newer, older])[0].summaries["generate"]["reason"] == "Second"


def test_a_reported_failure_says_more_than_a_silent_one():
    reported = died(0, failed("sft", reason="NaNLoss"), created=T0, container="pytorch", indexed=False)
    silent = died(0, exit_code=1, created=T1, container="pytorch", indexed=False)

    assert latest_by_shard([reported, silent])[0].summaries["sft"]["reason"] == "NaNLoss"


def test_pods_still_running_are_left_out():
    assert latest_by_shard([pod(0, "Running"), succeeded(1, ok("generate", 1))]).keys() == {1}


# --- metrics ---------------------------------------------------------------------------------


def test_merge_metrics_adds_numbers_up():
    merged = merge_metrics([{"candidates": 4, "candidateChars": 120.5}, {"candidates": 6, "candidateChars": 80.0}, {"candidates": 1}])

    assert merged == {"candidates": 11, "candidateChars": 200.5}


def test_merge_metrics_keeps_the_first_value_that_is_not_a_number():
    merged = merge_metrics([{"model": "m1", "strict": True}, {"model": "m2", "strict": False}])

    assert merged == {"model": "m1", "strict": True}


def test_merge_metrics_of_nothing_is_empty():
    assert merge_metrics([]) == {}


# --- summaries of a step ---------------------------------------------------------------------


def test_when_every_shard_succeeded_the_step_succeeded_with_their_shards_and_summed_metrics():
    pods = [succeeded(1, ok("generate", 1, candidates=6, candidateChars=300)),
            succeeded(0, ok("generate", 0, candidates=4, candidateChars=100))]

    summary = only(step_summaries([GENERATE], COMPLETE, pods))

    assert summary == {"ok": True, "stage": "generate", "shards": [{"index": 0}, {"index": 1}],
                       "metrics": {"candidates": 10, "candidateChars": 400}}


def test_a_shards_failing_summary_is_the_steps_failure():
    pods = [succeeded(0, ok("generate", 0)), died(1, failed("generate", "DataError", "prompt 17 is empty", permanent=True), exit_code=2)]

    summary = only(step_summaries([GENERATE], FAILED, pods))

    assert summary == {"ok": False, "stage": "generate", "reason": "DataError", "error": "prompt 17 is empty", "permanent": True}


def test_exit_code_2_without_a_summary_is_a_permanent_failure():
    pods = [succeeded(0, ok("generate", 0)), died(1, exit_code=2)]

    summary = only(step_summaries([GENERATE], FAILED, pods))

    assert (summary["ok"], summary["permanent"], summary["stage"]) == (False, True, "generate")


def test_a_killed_pod_is_a_retryable_failure_naming_its_exit_code_and_keeping_its_log_tail():
    tail = "loading shard 1\nRuntimeError: NCCL timeout"
    pods = [succeeded(0, ok("generate", 0)), died(1, exit_code=137, tail=tail)]

    summary = only(step_summaries([GENERATE], FAILED, pods))

    assert (summary["ok"], summary["permanent"], summary["reason"]) == (False, False, "Error")
    assert "137" in summary["error"]
    assert summary["error"].endswith(tail)


def test_only_the_end_of_a_long_log_tail_is_kept():
    tail = "x" * 5000 + "\nthe last line"

    summary = only(step_summaries([GENERATE], FAILED, [succeeded(0, ok("generate", 0)), died(1, tail=tail)]))

    assert summary["error"].endswith("the last line")
    assert len(summary["error"]) < 1000


def test_an_out_of_memory_kill_says_so():
    pods = [succeeded(0, ok("generate", 0)), died(1, exit_code=137, reason="OOMKilled")]

    summary = only(step_summaries([GENERATE], FAILED, pods))

    assert (summary["reason"], summary["permanent"]) == ("OOMKilled", False)
    assert "memory" in summary["error"]


def test_a_disrupted_pod_gives_a_disrupted_failure():
    pods = [master(phase="Failed", exit_code=143, disrupted=True)]

    summary = only(step_summaries([SFT], ChildState(True, False, "PyTorchJobFailed", ""), pods))

    assert (summary["ok"], summary["disrupted"], summary["reason"], summary["permanent"]) == (False, True, "Disrupted", False)


def test_a_real_failure_speaks_over_a_disruption_of_another_shard():
    pods = [died(0, exit_code=143, disrupted=True), died(1, exit_code=137, reason="OOMKilled")]

    summary = only(step_summaries([GENERATE], FAILED, pods))

    assert (summary["reason"], summary["disrupted"]) == ("OOMKilled", False)


def test_a_permanent_failure_speaks_over_a_retryable_one():
    pods = [died(0, failed("generate", "Timeout", "slow")), died(1, failed("generate", "DataError", "bad", permanent=True), exit_code=2)]

    summary = only(step_summaries([GENERATE], FAILED, pods))

    assert (summary["reason"], summary["permanent"]) == ("DataError", True)


def test_a_chain_step_after_a_failed_step_was_not_reached():
    pods = [succeeded(0, ok("generate", 0), ok("judge", 0)), died(1, failed("generate", "DataError", "bad"))]

    generate, judge = step_summaries([GENERATE, JUDGE], FAILED, pods)

    assert (generate["ok"], generate["stage"], generate["reason"]) == (False, "generate", "DataError")
    assert judge is None


def test_a_chain_step_after_a_silent_death_in_the_step_before_was_not_reached():
    pods = [succeeded(0, ok("generate", 0), ok("judge", 0)), died(1, exit_code=137, reason="OOMKilled")]

    generate, judge = step_summaries([GENERATE, JUDGE], FAILED, pods)

    assert generate["reason"] == "OOMKilled"
    assert judge is None


def test_a_pod_that_died_after_its_first_stage_failed_its_second():
    pods = [succeeded(0, ok("generate", 0), ok("judge", 0, pairs=2)), died(1, ok("generate", 1), exit_code=137, tail="Killed")]

    generate, judge = step_summaries([GENERATE, JUDGE], FAILED, pods)

    assert generate == {"ok": True, "stage": "generate", "shards": [{"index": 0}, {"index": 1}], "metrics": {}}
    assert (judge["ok"], judge["stage"], judge["permanent"]) == (False, "judge", False)
    assert "137" in judge["error"]


def test_a_chain_where_every_shard_ran_every_stage_succeeds_in_each():
    pods = [succeeded(i, ok("generate", i, candidates=2), ok("judge", i, pairs=1)) for i in (0, 1)]

    generate, judge = step_summaries([GENERATE, JUDGE], COMPLETE, pods)

    assert (generate["ok"], generate["metrics"]) == (True, {"candidates": 4})
    assert (judge["ok"], judge["metrics"]) == (True, {"pairs": 2})


def test_a_replaced_pod_that_succeeded_makes_its_shard_succeed():
    pods = [succeeded(0, ok("generate", 0)),
            died(1, exit_code=143, created=T0, disrupted=True),
            succeeded(1, ok("generate", 1), created=T1)]

    assert only(step_summaries([GENERATE], COMPLETE, pods))["ok"] is True


def test_the_training_masters_summary_speaks_over_a_worker_that_ended_silently():
    pods = [master(ok("sft", 0, trainLoss=0.5), created=T0), worker("Succeeded", created=T1), worker("Succeeded", created=T2)]

    summary = only(step_summaries([SFT], ChildState(True, False, "PyTorchJobSucceeded", ""), pods))

    assert summary == {"ok": True, "stage": "sft", "shards": [{"index": 0}], "metrics": {"trainLoss": 0.5}}


def test_the_training_masters_failure_speaks_over_a_worker_that_failed_silently():
    pods = [master(failed("sft", "NaNLoss", "loss is nan"), phase="Failed", created=T0), worker("Failed", created=T1)]

    summary = only(step_summaries([SFT], ChildState(True, False, "PyTorchJobFailed", ""), pods))

    assert (summary["reason"], summary["error"]) == ("NaNLoss", "loss is nan")


def test_a_finished_child_without_pods_is_a_retryable_failure_naming_its_condition():
    state = ChildState(True, False, "DeadlineExceeded", "Job was active longer than specified deadline")

    summary = only(step_summaries([GENERATE], state, []))

    assert (summary["ok"], summary["stage"], summary["permanent"], summary["reason"]) == (False, "generate", False, "DeadlineExceeded")
    assert "DeadlineExceeded" in summary["error"]
    assert "longer than specified deadline" in summary["error"]


def test_a_chain_of_a_child_without_pods_fails_its_first_step_and_never_reaches_the_rest():
    generate, judge = step_summaries([GENERATE, JUDGE], ChildState(True, False, "", ""), [])

    assert (generate["ok"], generate["reason"]) == (False, "ChildFailed")
    assert judge is None


def test_a_shard_that_never_reported_fails_the_step_even_when_the_others_succeeded():
    summary = only(step_summaries([GENERATE], COMPLETE, [succeeded(0, ok("generate", 0)), succeeded(1)]))

    assert (summary["ok"], summary["permanent"]) == (False, False)
