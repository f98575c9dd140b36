"""Spec of retry backoff: how long after its last failure a stage may start again."""

import pytest

from selfreward.operator import plan as planner
from selfreward.operator.plan import MAX_BACKOFF_SECONDS, retry_backoff
from tests.builders import ROOT, defaulted_spec, status_with

BACKOFF = 30
SPEC = defaulted_spec(("retries.backoffSeconds", BACKOFF), ("retries.limit", 20))


def sft_step(attempt, restart=False):
    return planner.step_for(SPEC, ROOT, 1, "sft", attempt, restart=restart)


def after(state, attempt, **extra):
    return status_with((1, "sft", state, attempt, extra))


@pytest.mark.parametrize(
    ("status", "attempt", "expected"),
    [
        pytest.param({}, 1, 0, id="first-attempt"),
        pytest.param(after("Pending", 1), 2, 0, id="not-reached-then-pending"),
        pytest.param(after("Failed", 1), 2, BACKOFF, id="after-1-failure"),
        pytest.param(after("Failed", 2), 3, 2 * BACKOFF, id="after-2-failures"),
        pytest.param(after("Failed", 3), 4, 4 * BACKOFF, id="after-3-failures"),
        pytest.param(after("Failed", 20), 21, MAX_BACKOFF_SECONDS, id="capped-at-a-day"),
        pytest.param(after("Failed", 3, retryBase=2), 4, BACKOFF, id="retry-base-subtracts"),
        pytest.param(after("Failed", 5, retryBase=3), 6, 2 * BACKOFF, id="retry-base-then-2-failures"),
    ],
)
def test_a_retry_waits_backoff_seconds_doubled_per_counted_failure(status, attempt, expected):
    assert retry_backoff(SPEC, status, sft_step(attempt)) == expected


def test_the_cap_is_one_day():
    assert MAX_BACKOFF_SECONDS == 86400


def test_a_restart_starts_at_once_even_after_failures():
    assert retry_backoff(SPEC, after("Failed", 3), sft_step(4, restart=True)) == 0


def test_a_zero_backoff_never_waits():
    spec = defaulted_spec(("retries.backoffSeconds", 0))

    assert retry_backoff(spec, after("Failed", 3), sft_step(4)) == 0


def test_the_backoff_is_a_float():
    assert isinstance(retry_backoff(SPEC, after("Failed", 1), sft_step(2)), float)


def test_the_planners_next_step_after_a_failure_gets_the_backoff():
    status = after("Failed", 2, reason="Flaky")

    step = planner.plan(SPEC, status, ROOT)

    assert (step.stage, step.attempt) == ("sft", 3)
    assert retry_backoff(SPEC, status, step) == 2 * BACKOFF


def test_only_the_steps_own_stage_counts():
    status = status_with((1, "sft", "Succeeded"), (1, "evaluate", "Failed", 3))

    assert retry_backoff(SPEC, status, planner.step_for(SPEC, ROOT, 2, "instruct", 1)) == 0
