"""Pure status building: what happened to a step -> the new status, phase and conditions.

Status has the same shape for both executors (the CR's .status, or the local state file):
observedGeneration, phase, iteration, stage, conditions, and one entry per iteration with its
model URI and, per stage, state, attempt, shards done, child names and metrics.
Functions here return new dicts and never mutate their input.
"""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from selfreward.operator import gates
from selfreward.operator import plan as planner
from selfreward.operator.plan import StageState


class Phase(str, Enum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class ConditionType(str, Enum):
    READY = "Ready"
    PROGRESSING = "Progressing"
    FAILED = "Failed"
    # The names kstatus reads (Flux, Argo CD, kpt): Reconciling is True while work is under way,
    # Stalled (abnormal-true) is True when the run failed and will not go on by itself.
    RECONCILING = "Reconciling"
    STALLED = "Stalled"


class Reason(str, Enum):
    RUN_SUCCEEDED = "RunSucceeded"
    STAGE_RUNNING = "StageRunning"
    RETRIES_EXHAUSTED = "RetriesExhausted"
    SUSPENDED = "Suspended"
    NO_FAILURE = "NoFailure"
    IN_PROGRESS = "InProgress"


def now_text() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stage_entry(status: dict[str, Any], iteration: int, stage: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(iteration entry, stage entry) inside `status`, created when missing; `status` is a copy."""
    iterations = status.setdefault("iterations", [])
    entry = next((e for e in iterations if e["iteration"] == iteration), None)
    if entry is None:
        entry = {"iteration": iteration, "stages": []}
        iterations.append(entry)
        iterations.sort(key=lambda e: e["iteration"])
    item = next((s for s in entry["stages"] if s["name"] == stage), None)
    if item is None:
        item = {"name": stage, "state": StageState.PENDING.value, "attempt": 0}
        entry["stages"].append(item)
    return entry, item


def record_start(status: dict[str, Any], step: planner.Step, children: list[str], at: str | None = None) -> dict[str, Any]:
    new = copy.deepcopy(status)
    entry, item = _stage_entry(new, step.iteration, step.stage)
    fresh_attempt = item.get("attempt") != step.attempt
    item.update(state=StageState.RUNNING.value, attempt=step.attempt, shardCount=step.shard_count, children=children,
                outputs=step.outputs, fingerprint=step.fingerprint)
    if step.restart:
        item["retryBase"] = step.attempt - 1
    if fresh_attempt or "startedAt" not in item:
        item["startedAt"] = at or now_text()
    for key in ("finishedAt", "reason", "message", "permanent"):
        item.pop(key, None)
    if fresh_attempt:
        item["shardsDone"] = []
    item.setdefault("shardsDone", [])
    return new


def record(status: dict[str, Any], step: planner.Step, summary: dict[str, Any], at: str | None = None) -> dict[str, Any]:
    """Record a stage program's summary line."""
    new = copy.deepcopy(status)
    entry, item = _stage_entry(new, step.iteration, step.stage)
    item.update(attempt=step.attempt, shardCount=step.shard_count, finishedAt=at or now_text(), outputs=step.outputs,
                fingerprint=step.fingerprint)
    done = set(item.get("shardsDone", []))
    if summary.get("ok"):
        done |= {shard["index"] for shard in summary.get("shards", [])}
        item.update(state=StageState.SUCCEEDED.value, metrics=derived_metrics(step.stage, summary.get("metrics", {})))
        item["skippedShards"] = sorted(s["index"] for s in summary.get("shards", []) if s.get("skipped"))
        for key in ("reason", "message", "permanent"):
            item.pop(key, None)
    else:
        item.update(
            state=StageState.FAILED.value,
            reason=summary.get("reason") or "StageFailed",
            message=(summary.get("error") or "the stage failed without a message")[:1024],
            permanent=bool(summary.get("permanent")),
        )
        if summary.get("disrupted"):  # evicted, preempted, drained: not the stage's fault, not counted
            item["retryBase"] = item.get("retryBase", 0) + 1
    item["shardsDone"] = sorted(done)
    if step.stage in ("sft", "dpo") and summary.get("ok"):
        entry["model"] = step.outputs["model"]
    return new


def record_not_reached(status: dict[str, Any], step: planner.Step) -> dict[str, Any]:
    """A stage of a chain that never ran because a stage before it failed: pending again. Its
    attempt number stays used (no child name is ever reused) but is not counted as a failure."""
    new = copy.deepcopy(status)
    _, item = _stage_entry(new, step.iteration, step.stage)
    item.update(state=StageState.PENDING.value, finishedAt=now_text(), retryBase=item.get("retryBase", 0) + 1)
    return new


def reset_failed(status: dict[str, Any]) -> dict[str, Any]:
    """Give failed stages a fresh set of retries (the user fixed the cause and runs again).

    Attempt numbers go on from where they were, so no child name is ever used twice.
    """
    new = copy.deepcopy(status)
    for entry in new.get("iterations", []):
        for item in entry.get("stages", []):
            if item.get("state") == StageState.FAILED.value:
                item.update(state=StageState.PENDING.value, permanent=False, retryBase=item.get("attempt", 0))
    return new


def derived_metrics(stage: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """Means from the additive shard metrics (sums and counts)."""
    result = dict(metrics)
    if stage == "judge":
        pairs = metrics.get("pairs", 0)
        result["meanChosenScore"] = round(metrics.get("chosenScoreSum", 0) / pairs, 4) if pairs else None
        result["meanRejectedScore"] = round(metrics.get("rejectedScoreSum", 0) / pairs, 4) if pairs else None
    if stage == "generate" and metrics.get("candidates"):
        result["meanCandidateChars"] = round(metrics["candidateChars"] / metrics["candidates"], 1)
    if stage == "evaluate" and metrics.get("responses"):
        result["meanResponseChars"] = round(metrics["responseChars"] / metrics["responses"], 1)
    if stage == "compare":
        outcomes = {name: metrics.get(f"headToHead{name}", 0) for name in ("Wins", "Losses", "Ties")}
        judged = sum(outcomes.values())
        for name, rate in (("Wins", "winRate"), ("Losses", "lossRate"), ("Ties", "tieRate")):
            result[rate] = round(outcomes[name] / judged, 4) if judged else None
    return {k: v for k, v in result.items() if v is not None}


def set_condition(
    conditions: list[dict[str, Any]], kind: ConditionType, true: bool, reason: Reason | str, message: str,
    generation: int | None, at: str | None = None,
) -> list[dict[str, Any]]:
    """Conditions the Kubernetes way: lastTransitionTime changes only when the status flips."""
    value = "True" if true else "False"
    reason_text = reason.value if isinstance(reason, Reason) else reason
    result = [dict(c) for c in conditions if c["type"] != kind.value]
    previous = next((c for c in conditions if c["type"] == kind.value), None)
    changed = previous is None or previous["status"] != value
    condition = {
        "type": kind.value,
        "status": value,
        "reason": reason_text,
        "message": message,
        "lastTransitionTime": (at or now_text()) if changed else previous["lastTransitionTime"],
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    result.append(condition)
    return sorted(result, key=lambda c: c["type"])


def iteration_phase(entry: dict[str, Any], expected: tuple[str, ...]) -> Phase:
    states = {s["name"]: s["state"] for s in entry.get("stages", [])}
    if all(states.get(stage) == StageState.SUCCEEDED.value for stage in expected):
        return Phase.SUCCEEDED
    return Phase.RUNNING if states else Phase.PENDING


def summarize(
    status: dict[str, Any], decision: planner.Decision, spec: dict[str, Any], generation: int | None = None, at: str | None = None
) -> dict[str, Any]:
    """Top-level phase, iteration, stage and conditions from the iterations and the plan."""
    new = copy.deepcopy(status)
    for entry in new.get("iterations", []):
        entry["phase"] = iteration_phase(entry, planner.stages_of(entry["iteration"], spec)).value
        for item in entry.get("stages", []):
            if item["name"] == "judge" and item["state"] == StageState.SUCCEEDED.value:
                item["gates"] = [result.as_status() for result in gates.check(item.get("metrics", {}), spec["judge"]["gates"])]
        if isinstance(decision, planner.Failed) and entry["iteration"] == decision.iteration:
            entry["phase"] = Phase.FAILED.value
    C = ConditionType
    if isinstance(decision, planner.Done):
        phase, iteration, stage = Phase.SUCCEEDED, _last_iteration(new), ""
        finished = (Reason.RUN_SUCCEEDED, "nothing left to run")
        wanted = {C.READY: (True, Reason.RUN_SUCCEEDED, "every iteration finished"), C.PROGRESSING: (False, *finished),
                  C.RECONCILING: (False, *finished), C.FAILED: (False, Reason.NO_FAILURE, ""), C.STALLED: (False, Reason.NO_FAILURE, "")}
    elif isinstance(decision, planner.Failed):
        phase, iteration, stage = Phase.FAILED, decision.iteration, decision.stage
        message = f"iteration {decision.iteration} stage {decision.stage} failed: {decision.reason}: {decision.message}"[:1024]
        stopped = (False, Reason.RETRIES_EXHAUSTED, message)
        wanted = {C.READY: stopped, C.PROGRESSING: stopped, C.RECONCILING: stopped,
                  C.FAILED: (True, decision.reason, message), C.STALLED: (True, decision.reason, message)}
    elif isinstance(decision, planner.Suspended):
        phase, iteration, stage = Phase.SUSPENDED, new.get("iteration", 0), new.get("stage", "")
        paused = (False, Reason.SUSPENDED, "spec.suspend is true")
        wanted = {C.READY: paused, C.PROGRESSING: paused, C.RECONCILING: paused}
    else:
        phase, iteration, stage = Phase.RUNNING, decision.iteration, decision.stage
        message = f"iteration {iteration}: {stage}"
        running = (True, Reason.STAGE_RUNNING, message)
        wanted = {C.READY: (False, Reason.IN_PROGRESS, message), C.PROGRESSING: running, C.RECONCILING: running,
                  C.FAILED: (False, Reason.NO_FAILURE, ""), C.STALLED: (False, Reason.NO_FAILURE, "")}
    conditions = new.get("conditions", [])
    for kind, (true, reason, message) in wanted.items():
        conditions = set_condition(conditions, kind, true, reason, message, generation, at)
    new.update(phase=phase.value, iteration=iteration, stage=stage, conditions=conditions)
    if generation is not None:
        new["observedGeneration"] = generation
    return new


def _last_iteration(status: dict[str, Any]) -> int:
    return max((e["iteration"] for e in status.get("iterations", [])), default=0)
