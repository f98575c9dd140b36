"""Spec of run events: what changed between two statuses -> the Kubernetes Events that say so."""

import pytest

from selfreward.operator.events import Event, between, run_changes
from tests.builders import status_with

CHILD = "demo-i02-generate-a1"


def running(attempt=1, **extra):
    return status_with((2, "generate", "Running", attempt, {"children": [f"demo-i02-generate-a{attempt}"], **extra}))


def only(events):
    (event,) = events
    return event


# --- stage transitions -----------------------------------------------------------------------


def test_a_first_attempt_starting_is_a_stage_started_event_naming_its_child():
    event = only(between({}, running(1)))

    assert (event.type, event.reason) == ("Normal", "StageStarted")
    assert "iteration 2 generate (attempt 1)" in event.message
    assert CHILD in event.message


def test_a_second_attempt_starting_is_a_retry():
    failed = status_with((2, "generate", "Failed", 1, {"reason": "OOMKilled"}))

    event = only(between(failed, running(2)))

    assert (event.type, event.reason) == ("Normal", "StageRetrying")
    assert "demo-i02-generate-a2" in event.message


@pytest.mark.parametrize(
    ("attempt", "retry_base", "reason"),
    [
        pytest.param(3, 2, "StageStarted", id="restart-first-attempt"),
        pytest.param(4, 2, "StageRetrying", id="restart-second-attempt"),
        pytest.param(5, 4, "StageStarted", id="after-reset-failed"),
    ],
)
def test_retry_base_makes_the_first_attempt_of_a_restart_a_start(attempt, retry_base, reason):
    assert only(between({}, running(attempt, retryBase=retry_base))).reason == reason


def test_the_message_names_only_the_latest_child():
    status = status_with((2, "generate", "Running", 2, {"children": ["demo-i02-generate-a1", "demo-i02-generate-a2"]}))

    message = only(between({}, status)).message

    assert "demo-i02-generate-a2" in message
    assert "demo-i02-generate-a1" not in message


def test_a_stage_that_succeeded_is_a_stage_succeeded_event():
    event = only(between(running(1), status_with((2, "generate", "Succeeded", 1))))

    assert (event.type, event.reason) == ("Normal", "StageSucceeded")
    assert "iteration 2 generate (attempt 1) succeeded" in event.message


def test_a_stage_that_failed_is_a_warning_with_its_reason_and_message():
    failed = status_with((2, "generate", "Failed", 1, {"reason": "OOMKilled", "message": "the stage container ran out of memory"}))

    event = only(between(running(1), failed))

    assert (event.type, event.reason) == ("Warning", "StageFailed")
    assert "OOMKilled: the stage container ran out of memory" in event.message


def test_a_failure_message_is_cut_to_1024_characters():
    failed = status_with((2, "generate", "Failed", 1, {"reason": "Crash", "message": "x" * 5000}))

    assert len(only(between(running(1), failed)).message) == 1024


def test_an_unchanged_stage_gives_no_event():
    assert between(running(1), running(1)) == []


def test_a_stage_sent_back_to_pending_gives_no_event():
    assert between(running(1), status_with((2, "generate", "Pending", 1))) == []


def test_each_changed_stage_gives_one_event_in_status_order():
    old = status_with((2, "generate", "Running", 1), (2, "judge", "Running", 1), (2, "dpo", "Pending", 0))
    new = status_with((2, "generate", "Succeeded", 1), (2, "judge", "Failed", 1, {"reason": "DataError"}), (2, "dpo", "Pending", 0))

    assert [(e.reason, e.key) for e in between(old, new)] == [
        ("StageSucceeded", "2/generate/1/Succeeded"),
        ("StageFailed", "2/judge/1/Failed"),
    ]


def test_the_same_stage_in_another_iteration_is_another_stage():
    old = status_with((2, "generate", "Succeeded", 1))
    new = status_with((2, "generate", "Succeeded", 1), (3, "generate", "Running", 1))

    assert only(between(old, new)).key == "3/generate/1/Running"


# --- keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        pytest.param({}, running(1), "2/generate/1/Running", id="started"),
        pytest.param(running(1), status_with((2, "generate", "Succeeded", 1)), "2/generate/1/Succeeded", id="succeeded"),
        pytest.param(running(2), status_with((2, "generate", "Failed", 2)), "2/generate/2/Failed", id="failed"),
    ],
)
def test_a_stage_events_key_names_iteration_stage_attempt_and_state(old, new, key):
    assert only(between(old, new)).key == key


def test_the_same_transition_always_gives_the_same_event():
    old, new = running(1), status_with((2, "generate", "Failed", 1, {"reason": "OOMKilled", "message": "m"}))

    assert between(old, new) == between(old, new)


def test_another_attempt_of_the_same_transition_has_another_key():
    assert only(between({}, running(1))).key != only(between({}, running(2))).key


# --- the run as a whole ----------------------------------------------------------------------


FAILED_CONDITION = {"type": "Failed", "status": "True", "reason": "OOMKilled",
                    "message": "iteration 2 stage judge failed: OOMKilled: out of memory"}


@pytest.mark.parametrize(
    ("new", "expected"),
    [
        pytest.param({"phase": "Succeeded", "iteration": 3}, ("Normal", "RunSucceeded", "run/Succeeded/3"), id="succeeded"),
        pytest.param({"phase": "Failed", "iteration": 2, "stage": "judge", "observedGeneration": 4,
                      "conditions": [FAILED_CONDITION]}, ("Warning", "RunFailed", "run/Failed/2/judge/0"), id="failed"),
        pytest.param({"phase": "Suspended", "observedGeneration": 5}, ("Normal", "RunSuspended", "run/Suspended/5"),
                     id="suspended"),
    ],
)
def test_the_run_succeeding_failing_or_being_suspended_is_an_event(new, expected):
    event = only(run_changes({"phase": "Running"}, new))

    assert (event.type, event.reason, event.key) == expected


def test_a_failed_run_event_carries_the_failed_conditions_message():
    new = {"phase": "Failed", "iteration": 2, "stage": "judge", "conditions": [FAILED_CONDITION]}

    assert only(run_changes({"phase": "Running"}, new)).message == FAILED_CONDITION["message"]


def test_a_succeeded_run_event_names_the_last_iteration():
    assert "3" in only(run_changes({"phase": "Running"}, {"phase": "Succeeded", "iteration": 3})).message


@pytest.mark.parametrize("phase", ["Succeeded", "Failed", "Suspended", "Running"])
def test_an_unchanged_phase_gives_no_run_event(phase):
    assert run_changes({"phase": phase}, {"phase": phase}) == []


@pytest.mark.parametrize(("old", "new"), [pytest.param({}, "Running", id="started"), pytest.param("Suspended", "Running", id="resumed")])
def test_running_again_gives_no_run_event(old, new):
    assert run_changes({"phase": old} if old else {}, {"phase": new}) == []


def test_the_same_run_transition_always_gives_the_same_event():
    old, new = {"phase": "Running"}, {"phase": "Suspended", "observedGeneration": 5}

    assert run_changes(old, new) == run_changes(old, new) == [
        Event("Normal", "RunSuspended", "spec.suspend is true: no new stage starts", "run/Suspended/5")]


def test_suspending_again_after_a_spec_change_has_another_key():
    first = only(run_changes({"phase": "Running"}, {"phase": "Suspended", "observedGeneration": 5}))
    second = only(run_changes({"phase": "Running"}, {"phase": "Suspended", "observedGeneration": 7}))

    assert first.key != second.key
