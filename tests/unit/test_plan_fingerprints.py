"""Spec of fingerprints: a stage whose spec sections, inputs or upstream stages changed runs again.

Statuses here are made by recording the very steps the planner returns, so every recorded
fingerprint is real: `drive` plays the executor, starting and finishing each step it is given.
"""

from dataclasses import dataclass, field

import pytest

from selfreward.operator import plan as planner
from selfreward.operator import status as status_core
from selfreward.operator.plan import Done, Failed, Fingerprints, Step, Waiting
from tests.builders import BASE_MODEL, ROOT, defaulted_spec, find_stage

SPEC = defaulted_spec()
SEED_INSTRUCTIONS = SPEC["seed"]["instructions"]
EVERY_STAGE = [(1, "sft"), (1, "evaluate")] + [
    (t, stage) for t in (2, 3) for stage in ("instruct", "generate", "judge", "dpo", "evaluate", "compare")
]


def succeeded(step):
    return {"ok": True, "shards": [{"index": i} for i in range(step.shard_count)], "metrics": {}}


def failed(reason="OutOfMemory", permanent=False):
    return {"ok": False, "reason": reason, "error": reason, "permanent": permanent}


@dataclass
class Drive:
    status: dict
    steps: list = field(default_factory=list)
    decision: object = None

    def ran(self):
        return stages_of(self.steps)


def drive(spec=SPEC, status=None, identities=None, until=None):
    """Start and succeed each step the planner gives, until it gives (iteration, stage) `until`
    (returned unstarted, as `decision`) or anything that is not a step."""
    result = Drive(status or {})
    while True:
        decision = planner.plan(spec, result.status, ROOT, identities)
        result.decision = decision
        if not isinstance(decision, Step) or (decision.iteration, decision.stage) == until:
            return result
        result.steps.append(decision)
        started = status_core.record_start(result.status, decision, [])
        result.status = status_core.record(started, decision, succeeded(decision))


def done_run(spec=SPEC, identities=None):
    finished = drive(spec, identities=identities)
    assert finished.decision == Done()
    return finished.status


def reruns(old_spec=SPEC, new_spec=SPEC, old_identities=None, new_identities=None):
    """The steps run again when a run that finished under the old spec and identities goes on under the new."""
    return drive(new_spec, done_run(old_spec, old_identities), new_identities).steps


def stages_of(steps):
    return [(s.iteration, s.stage) for s in steps]


# --- nothing changed --------------------------------------------------------------------------


def test_a_run_driven_to_done_runs_every_stage_once():
    assert drive().ran() == EVERY_STAGE


def test_a_finished_run_with_the_same_spec_is_done_again():
    assert planner.plan(SPEC, done_run(), ROOT) == Done()


# --- an edited spec ---------------------------------------------------------------------------


def test_editing_judge_samples_reruns_iteration_2s_judge_with_a_fresh_attempt():
    edited = defaulted_spec(("judge.samples", 2))

    step = drive(edited, done_run(), until=(2, "judge")).decision

    assert (step.iteration, step.stage, step.attempt, step.restart) == (2, "judge", 2, True)


def test_editing_judge_samples_leaves_sft_instruct_and_generate_alone():
    edited = defaulted_spec(("judge.samples", 2))

    rerun = stages_of(reruns(new_spec=edited))

    assert not {(1, "sft"), (2, "instruct"), (2, "generate")} & set(rerun)


def test_editing_judge_samples_reruns_every_judging_stage_and_everything_made_from_a_new_judgement():
    edited = defaulted_spec(("judge.samples", 2))

    assert stages_of(reruns(new_spec=edited)) == [
        (1, "evaluate"),
        (2, "judge"), (2, "dpo"), (2, "evaluate"), (2, "compare"),
        (3, "instruct"), (3, "generate"), (3, "judge"), (3, "dpo"), (3, "evaluate"), (3, "compare"),
    ]


def test_a_rerun_judge_makes_dpo_and_evaluate_of_its_iteration_and_all_later_stages_run_again():
    # dpo and the stages of iteration 3 do not read pairs: they rerun because judge did
    edited = defaulted_spec(("pairs.minScoreGap", 1))
    judged = drive(edited, done_run(), until=(2, "dpo"))
    assert judged.ran()[-1] == (2, "judge")

    assert stages_of(drive(edited, judged.status).steps) == [
        (2, "dpo"), (2, "evaluate"), (2, "compare"),
        (3, "instruct"), (3, "generate"), (3, "judge"), (3, "dpo"), (3, "evaluate"), (3, "compare"),
    ]


def test_editing_the_sft_learning_rate_reruns_sft_and_everything_after_it():
    edited = defaulted_spec(("sft.learningRate", 1e-5))

    assert stages_of(reruns(new_spec=edited)) == EVERY_STAGE


def test_editing_the_evaluation_holdout_reruns_only_the_evaluation_stages():
    # The holdout file is the one input that only evaluate reads; compare reads what evaluate made.
    edited = defaulted_spec(("seed.evaluationHoldout", "seed/holdout-v2.jsonl"))

    assert stages_of(reruns(new_spec=edited)) == [
        (1, "evaluate"), (2, "evaluate"), (2, "compare"), (3, "evaluate"), (3, "compare")]


def test_editing_the_head_to_head_judgement_length_reruns_only_the_compare_stages():
    edited = defaulted_spec(("evaluation.headToHead.maxTokens", 64))

    assert stages_of(reruns(new_spec=edited)) == [(2, "compare"), (3, "compare")]


def test_a_fixed_head_to_head_judge_is_an_input_of_compare_alone():
    edited = defaulted_spec(("evaluation.headToHead.judge", "s3://models/judge"))

    assert stages_of(reruns(new_spec=edited, new_identities={"s3://models/judge": "j1"})) == [(2, "compare"), (3, "compare")]
    changed = reruns(old_spec=edited, new_spec=edited, old_identities={"s3://models/judge": "j1"},
                     new_identities={"s3://models/judge": "j2"})
    assert stages_of(changed) == [(2, "compare"), (3, "compare")]


def test_every_rerun_step_is_a_restart_with_the_next_attempt():
    edited = defaulted_spec(("sft.learningRate", 1e-5))

    assert {(s.attempt, s.restart) for s in reruns(new_spec=edited)} == {(2, True)}


@pytest.mark.parametrize("edit", [
    ("sft.zeroStage", 2), ("dpo.zeroStage", 0), ("sft.checkpointEvery", 50), ("dpo.gradientCheckpointing", True),
    ("dpo.reference", "model"), ("sft.precision", "bf16"), ("dpo.precision", "fp32"),
    ("placement.training.processesPerReplica", 4),
], ids=lambda edit: edit[0] if isinstance(edit, tuple) else None)
def test_changing_how_training_runs_reruns_nothing_that_succeeded(edit):
    # The same model comes out: a ZeRO stage, checkpoints, recomputed activations or the
    # reference's form or the arithmetic's precision change memory and time, not the result.
    assert planner.plan(defaulted_spec(edit), done_run(), ROOT) == Done()


def test_turning_lora_on_for_dpo_reruns_every_dpo_and_what_follows_it():
    edited = defaulted_spec(("dpo.lora", {"rank": 8, "alpha": 16, "dropout": 0.0}))

    assert stages_of(reruns(new_spec=edited))[0] == (2, "dpo")


def test_changing_the_inference_replicas_reruns_nothing_that_succeeded():
    edited = defaulted_spec(("placement.inference.replicas", 4))

    assert planner.plan(edited, done_run(), ROOT) == Done()


# --- changed external inputs ------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param(SEED_INSTRUCTIONS, id="seed-instructions"),
        pytest.param(BASE_MODEL, id="base-model"),
    ],
)
def test_a_changed_identity_of_an_input_of_sft_reruns_sft_and_everything_downstream(uri):
    rerun = reruns(old_identities={uri: "old"}, new_identities={uri: "new"})

    assert stages_of(rerun) == EVERY_STAGE


def test_an_unchanged_identity_reruns_nothing():
    identities = {SEED_INSTRUCTIONS: "same", BASE_MODEL: "same"}

    assert planner.plan(SPEC, done_run(identities=identities), ROOT, identities) == Done()


# --- failed stages ----------------------------------------------------------------------------


def failed_sft(spec=SPEC, attempt=1, permanent=False):
    """A status whose iteration-1 sft failed `attempt` times, each on a step the planner gave;
    the last failure is permanent when `permanent`."""
    status = {}
    for number in range(1, attempt + 1):
        step = planner.plan(spec, status, ROOT)
        assert (step.stage, step.attempt) == ("sft", number)
        outcome = failed(permanent=permanent and number == attempt)
        status = status_core.record(status_core.record_start(status, step, []), step, outcome)
    return status


@pytest.mark.parametrize(
    ("attempt", "permanent"),
    [
        pytest.param(3, False, id="past-the-retry-limit"),
        pytest.param(1, True, id="permanent"),
        pytest.param(3, True, id="permanent-past-the-retry-limit"),
    ],
)
def test_a_failed_stage_whose_fingerprint_changed_is_retried_with_a_fresh_budget(attempt, permanent):
    status = failed_sft(attempt=attempt, permanent=permanent)
    assert isinstance(planner.plan(SPEC, status, ROOT), Failed)
    edited = defaulted_spec(("sft.learningRate", 1e-5))

    step = planner.plan(edited, status, ROOT)

    assert (step.stage, step.attempt, step.restart) == ("sft", attempt + 1, True)


def test_a_restarted_stage_gets_the_whole_retry_limit_again():
    edited = defaulted_spec(("sft.learningRate", 1e-5))
    status = failed_sft(attempt=3)
    for _ in range(SPEC["retries"]["limit"]):
        step = planner.plan(edited, status, ROOT)
        status = status_core.record(status_core.record_start(status, step, []), step, failed())

    step = planner.plan(edited, status, ROOT)

    assert (step.stage, step.attempt) == ("sft", 6)
    status = status_core.record(status_core.record_start(status, step, []), step, failed())
    assert planner.plan(edited, status, ROOT) == Failed(1, "sft", "OutOfMemory", "OutOfMemory")


def test_a_permanent_failure_with_an_unchanged_fingerprint_fails_the_run():
    status = failed_sft(permanent=True)

    assert planner.plan(SPEC, status, ROOT) == Failed(1, "sft", "OutOfMemory", "OutOfMemory")


# --- status keeps what the stage ran with ------------------------------------------------------


def test_record_start_and_record_store_the_steps_fingerprint():
    step = planner.plan(SPEC, {}, ROOT)

    started = status_core.record_start({}, step, [])
    finished = status_core.record(started, step, succeeded(step))

    assert find_stage(started, 1, "sft")["fingerprint"] == step.fingerprint
    assert find_stage(finished, 1, "sft")["fingerprint"] == step.fingerprint


def test_starting_a_restart_sets_the_retry_base_to_the_attempts_before_it():
    status = failed_sft(attempt=3)
    step = planner.plan(defaulted_spec(("sft.learningRate", 1e-5)), status, ROOT)

    assert find_stage(status_core.record_start(status, step, []), 1, "sft")["retryBase"] == 3


def test_starting_an_ordinary_retry_sets_no_retry_base():
    status = failed_sft(attempt=1)
    step = planner.plan(SPEC, status, ROOT)

    assert "retryBase" not in find_stage(status_core.record_start(status, step, []), 1, "sft")


# --- shard counts when replicas change mid-run ------------------------------------------------


TWO_REPLICAS = defaulted_spec(("placement.inference.replicas", 2))
THREE_REPLICAS = defaulted_spec(("placement.inference.replicas", 3))


def generate_running_with_two_shards():
    """Iteration 2's generate started with 2 replicas; the spec now says 3."""
    before = drive(TWO_REPLICAS, until=(2, "generate"))
    started = status_core.record_start(before.status, before.decision, [])
    assert find_stage(started, 2, "generate")["shardCount"] == 2
    return started


def resumed_generate():
    status = generate_running_with_two_shards()
    waiting = planner.plan(THREE_REPLICAS, status, ROOT)
    assert waiting == Waiting(2, "generate")
    return status, planner.resume_step(THREE_REPLICAS, status, ROOT, waiting)


def test_a_running_stage_resumes_with_the_shard_count_it_started_with():
    _, step = resumed_generate()

    assert (step.stage, step.attempt, step.shard_count) == ("generate", 1, 2)


def test_judge_reads_and_writes_as_many_shards_as_generate_wrote():
    status, generate = resumed_generate()
    status = status_core.record(status, generate, succeeded(generate))

    judge = planner.plan(THREE_REPLICAS, status, ROOT)

    assert (judge.stage, judge.shard_count, judge.input_shards) == ("judge", 2, {"candidates": 2})


def test_dpo_reads_as_many_pair_shards_as_judge_wrote():
    status, generate = resumed_generate()
    status = status_core.record(status, generate, succeeded(generate))

    dpo = drive(THREE_REPLICAS, status, until=(2, "dpo")).decision

    assert (dpo.stage, dpo.input_shards) == ("dpo", {"pairs": 2})


def test_a_stage_not_yet_started_gets_the_new_shard_count():
    status, generate = resumed_generate()
    status = status_core.record(status, generate, succeeded(generate))

    later = drive(THREE_REPLICAS, status, until=(3, "generate")).decision

    assert (later.iteration, later.stage, later.shard_count) == (3, "generate", 3)


# --- the fingerprints themselves --------------------------------------------------------------


def test_every_stage_of_every_iteration_has_its_own_fingerprint():
    fingerprints = Fingerprints(SPEC, ROOT, {})

    assert len({fingerprints.of(t, stage) for t, stage in EVERY_STAGE}) == len(EVERY_STAGE)


def test_fingerprints_are_stable_for_the_same_spec():
    first, second = Fingerprints(SPEC, ROOT, {}), Fingerprints(defaulted_spec(), ROOT, {})

    assert [first.of(t, stage) for t, stage in EVERY_STAGE] == [second.of(t, stage) for t, stage in EVERY_STAGE]


def test_a_planned_step_carries_its_stages_fingerprint():
    fingerprints = Fingerprints(SPEC, ROOT, {})

    assert [s.fingerprint for s in drive().steps] == [fingerprints.of(t, stage) for t, stage in EVERY_STAGE]


def test_step_for_without_a_fingerprint_computes_it():
    step = planner.step_for(SPEC, ROOT, 2, "judge", 1)

    assert step.fingerprint == Fingerprints(SPEC, ROOT, {}).of(2, "judge")
