"""Spec of the reconciler's pure helpers: which steps one child runs, and which a running child runs."""

from datetime import datetime, timezone

import pytest

from selfreward.operator import plan as planner
from selfreward.operator.reconciler import cluster_chain, running_chain, seconds_since
from selfreward.operator.status import record, record_start
from tests.builders import ROOT, defaulted_spec, status_with, succeeded_through

ONE_SHARD = defaulted_spec(("placement.inference.replicas", 1))
TWO_SHARDS = defaulted_spec(("placement.inference.replicas", 2))
AFTER_SFT = status_with((1, "sft", "Succeeded"))


def next_chain(spec, status):
    first = planner.plan(spec, status, ROOT)
    assert isinstance(first, planner.Step), first
    return cluster_chain(spec, status, ROOT, first)


def shape(chain):
    return [(step.iteration, step.stage, step.shard_count) for step in chain]


def succeed(status, chain):
    for step in chain:
        status = record(status, step, {"ok": True, "shards": [], "metrics": {}})
    return status


def start(status, chain, child):
    for step in chain:
        status = record_start(status, step, [child])
    return status


# --- cluster_chain ---------------------------------------------------------------------------


def test_with_one_shard_everything_m1_does_after_sft_is_one_child():
    assert shape(next_chain(ONE_SHARD, AFTER_SFT)) == [(1, "evaluate", 1), (2, "instruct", 1), (2, "generate", 1), (2, "judge", 1)]


def test_with_two_shards_the_chain_is_cut_where_the_shard_count_changes():
    assert shape(next_chain(TWO_SHARDS, AFTER_SFT)) == [(1, "evaluate", 1), (2, "instruct", 1)]


def test_with_two_shards_generate_and_judge_run_together_in_the_next_child():
    status = succeed(AFTER_SFT, next_chain(TWO_SHARDS, AFTER_SFT))

    assert shape(next_chain(TWO_SHARDS, status)) == [(2, "generate", 2), (2, "judge", 2)]


@pytest.mark.parametrize(
    "status",
    [
        pytest.param({}, id="sft"),
        pytest.param(succeeded_through(1, then=((2, "instruct", "Succeeded"), (2, "generate", "Succeeded"),
                                                (2, "judge", "Succeeded"))), id="dpo"),
    ],
)
@pytest.mark.parametrize("spec", [pytest.param(ONE_SHARD, id="one-shard"), pytest.param(TWO_SHARDS, id="two-shards")])
def test_a_training_step_runs_alone(spec, status):
    chain = next_chain(spec, status)

    assert len(chain) == 1
    assert chain[0].kind == "training"


def test_the_chain_starts_with_the_step_it_is_given():
    first = planner.plan(TWO_SHARDS, AFTER_SFT, ROOT)

    assert cluster_chain(TWO_SHARDS, AFTER_SFT, ROOT, first)[0] == first


def test_without_evaluation_the_chain_after_sft_starts_at_instruct():
    spec = defaulted_spec(("placement.inference.replicas", 2), ("evaluation.enabled", False))

    assert shape(next_chain(spec, AFTER_SFT)) == [(2, "instruct", 1)]


def test_cutting_a_chain_leaves_the_status_unchanged():
    before = repr(AFTER_SFT)

    next_chain(TWO_SHARDS, AFTER_SFT)

    assert repr(AFTER_SFT) == before


# --- running_chain ---------------------------------------------------------------------------


def test_the_running_child_and_every_step_recorded_with_it_in_plan_order():
    chain = next_chain(ONE_SHARD, AFTER_SFT)
    status = start(AFTER_SFT, list(reversed(chain)), "demo-i01-evaluate-a1")  # recorded out of order

    child, steps = running_chain(status, planner.plan(ONE_SHARD, status, ROOT))

    assert child == "demo-i01-evaluate-a1"
    assert shape(steps) == shape(chain)
    assert [step.attempt for step in steps] == [1, 1, 1, 1]


def recorded(step: planner.Step) -> tuple:
    return step.iteration, step.stage, step.attempt, step.shard_count, step.outputs, step.fingerprint


def test_the_running_steps_are_the_steps_the_child_was_built_from():
    chain = next_chain(TWO_SHARDS, succeed(AFTER_SFT, next_chain(TWO_SHARDS, AFTER_SFT)))
    status = start(succeed(AFTER_SFT, next_chain(TWO_SHARDS, AFTER_SFT)), chain, "demo-i02-generate-a1")

    _, steps = running_chain(status, planner.Waiting(2, "generate"))

    assert [recorded(step) for step in steps] == [recorded(step) for step in chain]


def test_a_spec_edit_while_a_chain_runs_does_not_change_what_it_is_recorded_as():
    before_edit = next_chain(TWO_SHARDS, succeed(AFTER_SFT, next_chain(TWO_SHARDS, AFTER_SFT)))
    status = start(succeed(AFTER_SFT, next_chain(TWO_SHARDS, AFTER_SFT)), before_edit, "demo-i02-generate-a1")
    edited = defaulted_spec(("placement.inference.replicas", 4), ("generation.candidates", 6))

    _, steps = running_chain(status, planner.Waiting(2, "generate"))

    assert [step.shard_count for step in steps] == [2, 2]
    assert [step.fingerprint for step in steps] == [step.fingerprint for step in before_edit]
    assert planner.plan(edited, status, ROOT) == planner.Waiting(2, "generate")  # the change is seen once it ends


def test_the_running_chain_is_found_from_any_of_its_stages():
    chain = next_chain(ONE_SHARD, AFTER_SFT)
    status = start(AFTER_SFT, chain, "demo-i01-evaluate-a1")

    child, steps = running_chain(status, planner.Waiting(2, "generate"))

    assert child == "demo-i01-evaluate-a1"
    assert shape(steps) == shape(chain)


def test_stages_of_another_child_or_no_longer_running_are_not_part_of_the_chain():
    status = status_with(
        (1, "sft", "Succeeded", 1, {"children": ["c"]}),
        (1, "evaluate", "Running", 2, {"children": ["old", "c"]}),
        (2, "instruct", "Running", 1, {"children": ["other"]}),
        (2, "generate", "Running", 1, {"children": ["c", "other"]}),
    )

    child, steps = running_chain(status, planner.Waiting(1, "evaluate"))

    assert child == "c"
    assert [(step.iteration, step.stage, step.attempt) for step in steps] == [(1, "evaluate", 2)]


def test_a_retried_chain_resumes_with_its_attempt():
    chain = [planner.step_for(ONE_SHARD, ROOT, 1, "evaluate", 3)]
    status = start(AFTER_SFT, chain, "demo-i01-evaluate-a3")

    _, steps = running_chain(status, planner.Waiting(1, "evaluate"))

    assert [step.attempt for step in steps] == [3]


def test_disabling_evaluation_while_a_chain_with_evaluate_runs_leaves_the_rest_of_the_chain():
    status = start(AFTER_SFT, next_chain(ONE_SHARD, AFTER_SFT), "demo-i01-evaluate-a1")
    without_evaluation = defaulted_spec(("evaluation.enabled", False))
    waiting = planner.plan(without_evaluation, status, ROOT)

    child, steps = running_chain(status, waiting)

    assert child == "demo-i01-evaluate-a1"
    assert (2, "instruct") in [(step.iteration, step.stage) for step in steps]


# --- seconds_since ---------------------------------------------------------------------------


NOW = datetime(2025, 1, 1, 1, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("timestamp", "seconds"),
    [
        pytest.param("2025-01-01T01:00:00Z", 0, id="now"),
        pytest.param("2025-01-01T00:59:30Z", 30, id="half-a-minute"),
        pytest.param("2024-12-31T01:00:00Z", 86400, id="a-day"),
        pytest.param("2025-01-01T01:00:10Z", -10, id="in-the-future"),
    ],
)
def test_seconds_since_a_status_timestamp(timestamp, seconds):
    assert seconds_since(timestamp, NOW) == seconds


@pytest.mark.parametrize("timestamp", [None, ""])
def test_without_a_timestamp_it_was_forever_ago(timestamp):
    assert seconds_since(timestamp, NOW) == float("inf")


def test_a_stage_failed_longer_ago_than_its_backoff_may_start():
    spec = defaulted_spec(("retries.backoffSeconds", 30))
    status = status_with((1, "sft", "Failed", 1, {"finishedAt": "2025-01-01T00:59:00Z"}))
    step = planner.plan(spec, status, ROOT)

    delay = planner.retry_backoff(spec, status, step) - seconds_since(planner.stage_status(status, 1, "sft")["finishedAt"], NOW)

    assert delay == -30
