"""Spec of the judge-quality gates: the figures, the limits, and how they stop (or only mark) a run."""

import pytest

from selfreward.operator import gates
from selfreward.operator import plan as planner
from selfreward.operator.plan import Failed, Fingerprints, Step
from selfreward.operator.status import summarize
from tests.builders import ROOT, defaulted_spec, find_stage, succeeded_through

SPEC = defaulted_spec()
LIMITS = SPEC["judge"]["gates"]

# A judge stage's summed shard metrics: 40 judgements, 30 of them without the model's own score
# (12 constrained), 10 prompts of which 2 tied and 1 had a gap below minScoreGap.
WEAK_JUDGE = {
    "judgements": 40, "parseFailures": 30, "constrainedScores": 12, "pairs": 7, "ties": 2, "gapTooSmall": 1,
    "unscored": 0, "score0": 0, "score1": 2, "score2": 4, "score3": 30, "score4": 4, "score5": 0,
}
COLLAPSED_JUDGE = {"judgements": 40, "parseFailures": 0, "pairs": 3, "ties": 7, "gapTooSmall": 0,
                   "score4": 39, "score5": 1, "score0": 0}


def results(metrics, **limits):
    return {r.gate.name: r for r in gates.check(metrics, {**LIMITS, **limits})}


def test_the_defaults_are_loose_enough_for_a_working_judge():
    assert LIMITS == {"maxParseFailureRate": 0.5, "maxTieRate": 0.9, "maxModalScoreShare": 0.95, "onViolation": "Fail"}


def test_each_figure_is_its_count_over_its_total():
    found = results(WEAK_JUDGE)

    assert (found["parseFailureRate"].count, found["parseFailureRate"].total) == (30, 40)
    assert (found["tieRate"].count, found["tieRate"].total) == (2, 10)
    assert (found["modalScoreShare"].count, found["modalScoreShare"].total) == (30, 40)
    assert found["parseFailureRate"].value == pytest.approx(0.75)


def test_a_figure_at_its_limit_passes_and_above_it_fails():
    assert results(WEAK_JUDGE, maxParseFailureRate=0.75)["parseFailureRate"].passed
    assert not results(WEAK_JUDGE, maxParseFailureRate=0.74)["parseFailureRate"].passed


def test_a_collapsed_judge_fails_the_collapse_gate():
    found = results(COLLAPSED_JUDGE)

    assert found["modalScoreShare"].value == pytest.approx(39 / 40)
    assert not found["modalScoreShare"].passed
    assert found["parseFailureRate"].passed and found["tieRate"].passed


def test_nothing_measured_means_no_gate():
    assert gates.check({}, LIMITS) == []
    assert gates.check({"judgements": 0, "parseFailures": 0}, LIMITS) == []


def test_warn_blocks_nothing():
    assert gates.blocking(WEAK_JUDGE, {**LIMITS, "onViolation": "Warn"}) == []
    assert [r.gate.name for r in gates.blocking(WEAK_JUDGE, LIMITS)] == ["parseFailureRate"]


def test_the_message_names_the_gate_the_figure_and_the_limit():
    message = results(WEAK_JUDGE)["parseFailureRate"].message(2)

    assert message == ("judge gate parseFailureRate of iteration 2: 0.750 (30 of 40 judgements without a score of the "
                       "model's own) is above spec.judge.gates.maxParseFailureRate 0.5")


# --- the planner ------------------------------------------------------------------------------


def judged(metrics, *then):
    """Iteration 1 done, iteration 2 judged with `metrics`, then the `then` stage tuples."""
    return succeeded_through(1, then=((2, "instruct", "Succeeded"), (2, "generate", "Succeeded"),
                                      (2, "judge", "Succeeded", 1, {"metrics": metrics}), *then))


def test_a_judge_past_a_gate_fails_the_run_before_dpo_with_the_gates_reason():
    decision = planner.plan(SPEC, judged(COLLAPSED_JUDGE), ROOT)

    assert isinstance(decision, Failed)
    assert (decision.iteration, decision.stage, decision.reason) == (2, "judge", "JudgeScoreCollapse")
    assert "modalScoreShare of iteration 2: 0.975 (39 of 40" in decision.message


def test_every_failed_gate_is_in_the_message_and_the_first_gives_the_reason():
    metrics = {**COLLAPSED_JUDGE, "parseFailures": 40}
    decision = planner.plan(SPEC, judged(metrics), ROOT)

    assert decision.reason == "JudgeParseFailures"
    assert "parseFailureRate" in decision.message and "modalScoreShare" in decision.message


def test_raising_the_limit_lets_the_run_go_on_to_dpo_without_judging_again():
    spec = defaulted_spec(("judge.gates.maxModalScoreShare", 1.0))
    step = planner.plan(spec, judged(COLLAPSED_JUDGE), ROOT)

    assert isinstance(step, Step) and (step.iteration, step.stage) == (2, "dpo")


def test_warn_goes_on_to_dpo_and_status_shows_the_failed_gate():
    spec = defaulted_spec(("judge.gates.onViolation", "Warn"))
    status = judged(COLLAPSED_JUDGE)
    step = planner.plan(spec, status, ROOT)

    assert (step.iteration, step.stage) == (2, "dpo")
    shown = find_stage(summarize(status, step, spec), 2, "judge")["gates"]
    assert {g["name"]: g["passed"] for g in shown} == {"parseFailureRate": True, "tieRate": True, "modalScoreShare": False}
    assert next(g for g in shown if g["name"] == "modalScoreShare") == {
        "name": "modalScoreShare", "value": 0.975, "limit": 0.95, "passed": False}


def test_an_iteration_already_trained_on_its_pairs_is_not_failed_afterwards():
    status = judged(COLLAPSED_JUDGE, (2, "dpo", "Succeeded"), (2, "evaluate", "Succeeded"))

    assert not isinstance(planner.plan(SPEC, status, ROOT), Failed)


def test_a_running_dpo_is_waited_for_even_if_a_limit_is_tightened_meanwhile():
    status = judged(COLLAPSED_JUDGE, (2, "dpo", "Running"))

    assert planner.plan(SPEC, status, ROOT) == planner.Waiting(2, "dpo")


def test_a_suspended_run_stays_suspended_rather_than_failing_on_a_gate():
    assert planner.plan(defaulted_spec(("suspend", True)), judged(COLLAPSED_JUDGE), ROOT) == planner.Suspended()


def test_dpo_run_again_after_a_spec_edit_is_gated_too():
    trained = judged(COLLAPSED_JUDGE, (2, "dpo", "Succeeded"), (2, "evaluate", "Succeeded"))
    relaxed = defaulted_spec(("judge.gates.maxModalScoreShare", 1.0))
    for item in trained["iterations"][1]["stages"]:  # as recorded under the relaxed limit
        item["fingerprint"] = Fingerprints(relaxed, ROOT, {}).of(2, item["name"])
    edited = defaulted_spec(("dpo.beta", 0.2))  # reruns DPO under the default limit

    decision = planner.plan(edited, trained, ROOT)

    assert isinstance(decision, Failed) and decision.reason == "JudgeScoreCollapse"


def test_gates_are_not_part_of_any_fingerprint_or_stage_config():
    relaxed = defaulted_spec(("judge.gates.maxTieRate", 1.0), ("judge.gates.onViolation", "Warn"))
    for stage in ("judge", "evaluate", "dpo"):
        assert Fingerprints(SPEC, ROOT, {}).of(2, stage) == Fingerprints(relaxed, ROOT, {}).of(2, stage)
        assert "gates" not in planner.stage_sections(SPEC, stage).get("judge", {})
