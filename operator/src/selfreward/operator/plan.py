"""The pure planner: from a run's spec and status, the next step, or that the run is over.

Both executors (kopf handlers, and `selfreward run` locally) ask `plan` what to do and record
what happened with `status.py`; neither decides anything itself. Iteration 1 trains M1 by SFT;
iteration t > 1 makes prompts, candidates, judgements and pairs with M_(t-1), then trains M_t
by DPO. Each iteration ends by evaluating its model when evaluation is enabled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from selfreward.operator import layout

INFERENCE_STAGES = ("instruct", "generate", "judge", "evaluate")
TRAINING_STAGES = ("sft", "dpo")
SHARDED_STAGES = ("generate", "judge")
# The spec sections each stage program needs (DESIGN principle 3).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "sft": ("sft", "judge"),
    "instruct": ("promptGeneration",),
    "generate": ("generation",),
    "judge": ("judge", "pairs"),
    "dpo": ("dpo",),
    "evaluate": ("judge", "evaluation"),
}


class StageState(str, Enum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


@dataclass(frozen=True)
class Step:
    """Run one stage of one iteration (its pending shards; committed shards are skipped by the program)."""

    iteration: int
    stage: str
    attempt: int
    model: str
    inputs: dict[str, Any]
    outputs: dict[str, str]
    shard_count: int
    sections: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "inference" if self.stage in INFERENCE_STAGES else "training"


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class Suspended:
    pass


@dataclass(frozen=True)
class Failed:
    iteration: int
    stage: str
    reason: str
    message: str


@dataclass(frozen=True)
class Waiting:
    """A stage is running; nothing to start until it reports."""

    iteration: int
    stage: str


Decision = Step | Done | Suspended | Failed | Waiting


def stages_of(iteration: int, spec: dict[str, Any]) -> tuple[str, ...]:
    stages = ("sft",) if iteration == 1 else ("instruct", "generate", "judge", "dpo")
    return stages + (("evaluate",) if spec["evaluation"]["enabled"] else ())


def stage_status(status: dict[str, Any], iteration: int, stage: str) -> dict[str, Any]:
    for entry in status.get("iterations", []):
        if entry["iteration"] == iteration:
            for item in entry.get("stages", []):
                if item["name"] == stage:
                    return item
    return {}


def plan(spec: dict[str, Any], status: dict[str, Any], root: str) -> Decision:
    """The next thing to do. `root` is the run's artifact root (layout.run_root)."""
    for iteration in range(1, spec["iterations"] + 1):
        for stage in stages_of(iteration, spec):
            current = stage_status(status, iteration, stage)
            state = current.get("state", StageState.PENDING.value)
            if state == StageState.SUCCEEDED.value:
                continue
            attempt = current.get("attempt", 0)
            if state == StageState.RUNNING.value:
                return Waiting(iteration, stage)
            if state == StageState.FAILED.value:
                if current.get("permanent") or attempt > spec["retries"]["limit"]:
                    return Failed(iteration, stage, current.get("reason", "StageFailed"), current.get("message", ""))
            if spec["suspend"]:
                return Suspended()
            return step_for(spec, root, iteration, stage, max(attempt, 0) + 1)
    return Done()


def step_for(spec: dict[str, Any], root: str, iteration: int, stage: str, attempt: int) -> Step:
    base = spec["baseModel"]["uri"]
    trains_from = layout.model_uri(root, base, iteration - 1)
    model = layout.model_uri(root, base, iteration) if stage == "evaluate" else trains_from
    folder = lambda name, t=iteration: layout.iteration_folder(root, t, name)  # noqa: E731
    inputs: dict[str, Any] = {"model": model}
    if stage == "sft":
        inputs |= {"instructions": spec["seed"]["instructions"], "evaluations": spec["seed"]["evaluations"]}
    elif stage == "instruct":
        inputs |= {
            "model": spec["promptGeneration"].get("model") or trains_from,
            "instructions": spec["seed"]["instructions"],
            "earlierPrompts": [folder("prompts", t) for t in range(2, iteration)],
        }
    elif stage == "generate":
        inputs["prompts"] = folder("prompts")
    elif stage == "judge":
        inputs["candidates"] = folder("candidates")
    elif stage == "dpo":
        inputs["pairs"] = folder("pairs")
    elif stage == "evaluate":
        inputs["holdout"] = spec["seed"]["evaluationHoldout"]
    shards = spec["placement"]["inference"]["replicas"] if stage in SHARDED_STAGES else 1
    return Step(
        iteration=iteration,
        stage=stage,
        attempt=attempt,
        model=inputs["model"],
        inputs=inputs,
        outputs=layout.stage_outputs(root, iteration, stage),
        shard_count=shards,
        sections={name: spec[name] for name in STAGE_SECTIONS[stage]},
    )


def plan_chain(spec: dict[str, Any], status: dict[str, Any], root: str, record, first: Step | None = None) -> list[Step]:
    """The next step and the inference steps after it that load the same model.

    Running them in one process (or pod) saves a model load per stage. `record(status, step,
    summary)` is status.record, passed in to keep this module free of status-building logic.
    """
    first = first or plan(spec, status, root)
    if not isinstance(first, Step):
        return []
    chain = [first]
    simulated = status
    while chain[-1].kind == "inference":
        simulated = record(simulated, chain[-1], {"ok": True, "shards": [], "metrics": {}})
        following = plan(spec, simulated, root)
        if not isinstance(following, Step) or following.kind != "inference" or following.model != first.model:
            break
        chain.append(following)
    return chain
