"""The pure planner: from a run's spec and status, the next step, or that the run is over.

Both executors (kopf handlers, and `selfreward run` locally) ask `plan` what to do and record
what happened with `status.py`; neither decides anything itself. Iteration 1 trains M1 by SFT;
iteration t > 1 makes prompts, candidates, judgements and pairs with M_(t-1), then trains M_t
by DPO, unless the judge's totals fail a judge-quality gate (gates.py). Each iteration ends by
evaluating its model when evaluation is enabled, and from iteration 2 by comparing it with the
model before it head to head (compare).

Every step has a fingerprint: the spec sections and seed its stage uses, its input URIs, the
fingerprints of the stages that make those inputs, and, where the executor can read them, the
content identities of the run's external inputs (seed files, models). Status records the
fingerprint each stage ran with; a stage whose fingerprint changed since (an edited spec, seed
file or base model, or any change upstream of it) is run again, with a new attempt number and a
fresh retry budget. Its stage program then finds its old output made from other inputs and
makes it again (stagekit in the trainer); nothing stale is reused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Mapping

from selfreward.operator import gates, layout

INFERENCE_STAGES = ("instruct", "generate", "judge", "evaluate", "compare")
SHARDED_STAGES = ("generate", "judge")
# The spec each stage program needs (DESIGN principle 3): whole sections, or "section.field" where a
# stage reads only part of one. It is also what a stage's fingerprint covers, so it must be exact:
# SFT formats its judge examples with the judge's template and score range, and nothing else of it.
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "sft": ("sft", "judge.template", "judge.scoreRange"),
    "instruct": ("promptGeneration",),
    "generate": ("generation",),
    "judge": ("judge", "pairs"),
    "dpo": ("dpo",),
    "evaluate": ("judge", "pairs", "generation.temperature", "generation.topP", "generation.maxTokens"),
    "compare": ("judge.constrainedScore", "evaluation.headToHead"),
}


# Fields of a training section that say how to run it, not what it makes: the same model comes out
# (within floating-point tolerance) whatever they are. They travel in the stage config's
# `execution`, outside the fingerprint, so changing one (a ZeRO stage for memory, say) applies to
# the next attempt without redoing the stage or anything made from it.
EXECUTION_FIELDS: dict[str, tuple[str, ...]] = {
    "sft": ("zeroStage", "checkpointEvery", "gradientCheckpointing", "precision"),
    "dpo": ("zeroStage", "checkpointEvery", "gradientCheckpointing", "precision", "reference"),
}


# Fields that only the operator reads: how it judges a stage's result, not how the stage runs.
OPERATOR_FIELDS: dict[str, tuple[str, ...]] = {
    "judge": ("gates",),
}


def stage_sections(spec: dict[str, Any], stage: str) -> dict[str, Any]:
    """The part of the spec a stage's result depends on, as {section: {field: value}} (absent
    fields, execution fields and operator fields left out)."""
    sections: dict[str, Any] = {}
    for path in STAGE_SECTIONS[stage]:
        section, _, name = path.partition(".")
        if not name:
            excluded = EXECUTION_FIELDS.get(section, ()) + OPERATOR_FIELDS.get(section, ())
            sections[section] = {key: value for key, value in spec[section].items() if key not in excluded}
        elif name in spec[section]:
            sections.setdefault(section, {})[name] = spec[section][name]
    return sections


def execution_options(spec: dict[str, Any], stage: str) -> dict[str, Any]:
    """How a training stage runs (EXECUTION_FIELDS of its section); empty for other stages."""
    fields = EXECUTION_FIELDS.get(stage, ())
    return {key: spec[stage][key] for key in fields if key in spec[stage]}


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
    input_shards: dict[str, int] = field(default_factory=dict)
    fingerprint: str = ""
    restart: bool = False  # a new run of a stage whose inputs changed: its retry budget starts again

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


# Every stage in the order they run within an iteration (stages_of picks those an iteration has).
STAGE_ORDER = ("sft", "instruct", "generate", "judge", "dpo", "evaluate", "compare")


def stages_of(iteration: int, spec: dict[str, Any]) -> tuple[str, ...]:
    """sft then evaluate in iteration 1; then the loop, evaluate, and M_t against M_(t-1) head to head."""
    evaluation = spec["evaluation"]
    if iteration == 1:
        return ("sft", "evaluate") if evaluation["enabled"] else ("sft",)
    stages = ("instruct", "generate", "judge", "dpo")
    if not evaluation["enabled"]:
        return stages
    return stages + (("evaluate", "compare") if evaluation["headToHead"]["enabled"] else ("evaluate",))


def stage_status(status: dict[str, Any], iteration: int, stage: str) -> dict[str, Any]:
    for entry in status.get("iterations", []):
        if entry["iteration"] == iteration:
            for item in entry.get("stages", []):
                if item["name"] == stage:
                    return item
    return {}


def plan(spec: dict[str, Any], status: dict[str, Any], root: str, identities: Mapping[str, str] | None = None) -> Decision:
    """The next thing to do. `root` is the run's artifact root (layout.run_root); `identities`
    maps external input URIs (seed files, models) to their content identity, where known."""
    fingerprints = Fingerprints(spec, root, identities or {})
    for iteration in range(1, spec["iterations"] + 1):
        for stage in stages_of(iteration, spec):
            current = stage_status(status, iteration, stage)
            state = current.get("state", StageState.PENDING.value)
            expected = fingerprints.of(iteration, stage)
            recorded = current.get("fingerprint")  # absent in statuses written before fingerprints
            changed = state != StageState.PENDING.value and recorded is not None and recorded != expected
            if state == StageState.SUCCEEDED.value and not changed:
                continue
            attempt = current.get("attempt", 0)
            if state == StageState.RUNNING.value:
                return Waiting(iteration, stage)
            if state == StageState.FAILED.value and not changed:
                if current.get("permanent") or attempt - current.get("retryBase", 0) > spec["retries"]["limit"]:
                    return Failed(iteration, stage, current.get("reason", "StageFailed"), current.get("message", ""))
            if spec["suspend"]:
                return Suspended()
            if stage == "dpo" and (failed := gates.blocking(stage_status(status, iteration, "judge").get("metrics", {}),
                                                             spec["judge"]["gates"])):
                # The judge's pairs are not worth training on (gates.py).
                return Failed(iteration, "judge", failed[0].gate.reason, "; ".join(f.message(iteration) for f in failed))
            return step_for(spec, root, iteration, stage, attempt + 1, status, expected, restart=changed)
    return Done()


def resume_step(spec: dict[str, Any], status: dict[str, Any], root: str, waiting: Waiting,
                identities: Mapping[str, str] | None = None) -> Step:
    """The step of a stage that status says is running: same attempt, same shard count."""
    attempt = stage_status(status, waiting.iteration, waiting.stage).get("attempt", 1)
    expected = Fingerprints(spec, root, identities or {}).of(waiting.iteration, waiting.stage)
    return step_for(spec, root, waiting.iteration, waiting.stage, attempt, status, expected)


def recorded_step(status: dict[str, Any], iteration: int, stage: str) -> Step:
    """The step a stage's status says is running, as it was started: its attempt, shard count,
    outputs and fingerprint, whatever the spec says now (an edit while it runs is seen after)."""
    item = stage_status(status, iteration, stage)
    return Step(iteration=iteration, stage=stage, attempt=item["attempt"], model="", inputs={}, outputs=item.get("outputs", {}),
                shard_count=item.get("shardCount", 1), fingerprint=item.get("fingerprint", ""))


def stage_inputs(spec: dict[str, Any], root: str, iteration: int, stage: str) -> dict[str, Any]:
    """The input URIs of a stage: the model it loads, seed files, earlier stages' outputs."""
    base = spec["baseModel"]["uri"]
    trains_from = layout.model_uri(root, base, iteration - 1)
    folder = lambda name, t=iteration: layout.iteration_folder(root, t, name)  # noqa: E731
    trained = layout.model_uri(root, base, iteration)
    inputs: dict[str, Any] = {"model": trained if stage == "evaluate" else trains_from}
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
    elif stage == "compare":
        inputs |= {
            "model": spec["evaluation"]["headToHead"].get("judge") or trained,
            "responses": folder("evaluation"),
            "previousResponses": folder("evaluation", iteration - 1),
        }
    return inputs


class Fingerprints:
    """Each stage's fingerprint, from the spec alone plus the identities of external inputs."""

    def __init__(self, spec: dict[str, Any], root: str, identities: Mapping[str, str]):
        self.spec, self.root, self.identities = spec, root, identities
        self.producers = {
            uri: (t, stage)
            for t in range(1, spec["iterations"] + 1)
            for stage in stages_of(t, spec)
            for uri in layout.stage_outputs(root, t, stage).values()
        }
        self.known: dict[tuple[int, str], str] = {}

    def of(self, iteration: int, stage: str) -> str:
        key = (iteration, stage)
        if key not in self.known:
            inputs = stage_inputs(self.spec, self.root, iteration, stage)
            made_from = {
                "stage": stage,
                "randomSeed": self.spec["randomSeed"],
                "sections": stage_sections(self.spec, stage),
                "inputs": {
                    name: [self._input(uri) for uri in value] if isinstance(value, list) else self._input(value)
                    for name, value in sorted(inputs.items())
                },
            }
            text = json.dumps(made_from, sort_keys=True, separators=(",", ":"))
            self.known[key] = hashlib.sha256(text.encode()).hexdigest()[:16]
        return self.known[key]

    def _input(self, uri: str) -> dict[str, Any]:
        if uri in self.producers:
            return {"uri": uri, "madeBy": self.of(*self.producers[uri])}
        return {"uri": uri, "identity": self.identities.get(uri, "")}


def shard_count(spec: dict[str, Any], status: dict[str, Any], iteration: int, stage: str, restart: bool = False) -> int:
    """Shards of a sharded stage: a stage keeps the count it started with (a change of
    placement.inference.replicas applies to stages not yet started), and judge shard i reads
    candidates shard i, so judge always has generate's count."""
    if stage == "judge":
        return shard_count(spec, status, iteration, "generate")
    current = stage_status(status, iteration, stage)
    started = current.get("state") in (StageState.RUNNING.value, StageState.FAILED.value, StageState.SUCCEEDED.value)
    if started and not restart and current.get("shardCount"):
        return current["shardCount"]
    return spec["placement"]["inference"]["replicas"]


def step_for(spec: dict[str, Any], root: str, iteration: int, stage: str, attempt: int,
             status: dict[str, Any] | None = None, fingerprint: str = "", restart: bool = False) -> Step:
    """The step that runs `stage` of `iteration`; `status` supplies the shard counts stages started with."""
    status = status or {}
    fingerprint = fingerprint or Fingerprints(spec, root, {}).of(iteration, stage)
    inputs = stage_inputs(spec, root, iteration, stage)
    input_shards = {}
    if stage == "judge":
        input_shards["candidates"] = shard_count(spec, status, iteration, "generate")
    elif stage == "dpo":
        input_shards["pairs"] = shard_count(spec, status, iteration, "judge")
    return Step(
        iteration=iteration,
        stage=stage,
        attempt=attempt,
        model=inputs["model"],
        inputs=inputs,
        outputs=layout.stage_outputs(root, iteration, stage),
        shard_count=shard_count(spec, status, iteration, stage, restart) if stage in SHARDED_STAGES else 1,
        sections=stage_sections(spec, stage),
        input_shards=input_shards,
        fingerprint=fingerprint,
        restart=restart,
    )


def plan_chain(spec: dict[str, Any], status: dict[str, Any], root: str, record, first: Step | None = None,
               identities: Mapping[str, str] | None = None) -> list[Step]:
    """The next step and the inference steps after it that load the same model.

    Running them in one process (or pod) saves a model load per stage. `record(status, step,
    summary)` is status.record, passed in to keep this module free of status-building logic.
    """
    first = first or plan(spec, status, root, identities)
    if not isinstance(first, Step):
        return []
    chain = [first]
    simulated = status
    while chain[-1].kind == "inference":
        simulated = record(simulated, chain[-1], {"ok": True, "shards": [], "metrics": {}})
        following = plan(spec, simulated, root, identities)
        if not isinstance(following, Step) or following.kind != "inference" or following.model != first.model:
            break
        chain.append(following)
    return chain


MAX_BACKOFF_SECONDS = 86400


def retry_backoff(spec: dict[str, Any], status: dict[str, Any], step: Step) -> float:
    """How long after its last failure `step` may start: 0 for a first attempt or a restart;
    for a retry, retries.backoffSeconds doubled for each failure counted so far (at most a day)."""
    previous = stage_status(status, step.iteration, step.stage)
    if step.restart or previous.get("state") != StageState.FAILED.value:
        return 0.0
    failures = previous.get("attempt", 0) - previous.get("retryBase", 0)
    return float(min(spec["retries"]["backoffSeconds"] * 2 ** max(failures - 1, 0), MAX_BACKOFF_SECONDS))
