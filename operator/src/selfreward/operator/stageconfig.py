"""The stage program's --config for one step, built the same way by both executors, and the
summary line it prints back, read the same way by both.

This is the operator's half of the stage contract (selfreward.trainer.contract is the other):
explicit input and output URIs, the spec sections the stage's result depends on, how to run
it (`execution`: ZeRO stage, checkpoints, memory options), the shard count, the storage endpoint. Never
credentials: stage programs read those from their environment.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from selfreward.operator import plan as planner


class RunLike(Protocol):
    name: str
    namespace: str
    spec: dict[str, Any]


def stage_config(run: RunLike, root: str, step: planner.Step, uid: str = "") -> dict[str, Any]:
    storage = run.spec["storage"]
    placement = run.spec["placement"][step.kind]
    config = {
        "stage": step.stage,
        "run": run.name,
        "runUid": uid,
        "namespace": run.namespace,
        "iteration": step.iteration,
        "attempt": step.attempt,
        "inputs": step.inputs,
        "outputs": step.outputs,
        "shardCount": step.shard_count,
        "inputShards": step.input_shards,
        "randomSeed": run.spec["randomSeed"],
        "processes": placement["processesPerReplica"],
        "spec": step.sections,
        "storage": {k: storage[k] for k in ("endpoint", "region", "addressingStyle") if storage.get(k)},
    }
    execution = planner.execution_options(run.spec, step.stage)
    if execution:
        config["execution"] = execution
    return config


def summary_of(line: str) -> dict[str, Any] | None:
    """A stage program's summary line as a dict; None for any other line (a log line)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) and "ok" in value and "stage" in value else None
