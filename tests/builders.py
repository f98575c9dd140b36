"""Shared test builders: minimal valid runs, dotted-path edits, statuses and stage configs.

Tests state only what matters to them; everything else comes from here, so a change to the
minimal run (a new required field) is made once.
"""

from __future__ import annotations

import copy
from typing import Any

from selfreward.operator import layout, spec as specs

RUN_NAME = "demo"
NAMESPACE = "default"
BASE_MODEL = "s3://models/llama-2-7b"
STORAGE = "s3://artifacts/selfreward"
ROOT = layout.run_root(STORAGE, NAMESPACE, RUN_NAME)

_DELETE = object()


def with_field(obj: dict[str, Any], dotted: str, value: Any = _DELETE) -> dict[str, Any]:
    """A copy of `obj` with the field at `dotted` ("spec.judge.samples") set, or removed when no value.

    Missing intermediate objects are created, so `with_field(run_object(), "spec.dpo.beta", 0)`
    works on a run that names no `dpo` section.
    """
    new = copy.deepcopy(obj)
    *parents, last = dotted.split(".")
    node = new
    for name in parents:
        node = node.setdefault(name, {})
    if value is _DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return new


def without_field(obj: dict[str, Any], dotted: str) -> dict[str, Any]:
    return with_field(obj, dotted)


def run_object(**overrides: Any) -> dict[str, Any]:
    """A minimal valid SelfRewardRun; keyword names are dotted paths with `__` for dots.

    `run_object(spec__iterations=5)` sets spec.iterations; a value of None removes the field.
    """
    obj: dict[str, Any] = {
        "apiVersion": f"{specs.GROUP}/{specs.VERSION}",
        "kind": specs.KIND,
        "metadata": {"name": RUN_NAME, "namespace": NAMESPACE},
        "spec": {
            "baseModel": {"uri": BASE_MODEL},
            "storage": {"uri": STORAGE},
            "seed": {
                "instructions": "seed/ift.jsonl",
                "evaluations": "seed/eft.jsonl",
                "evaluationHoldout": "seed/holdout.jsonl",
            },
        },
    }
    for key, value in overrides.items():
        dotted = key.replace("__", ".")
        obj = without_field(obj, dotted) if value is None else with_field(obj, dotted, value)
    return obj


def run_with(*fields: tuple[str, Any]) -> dict[str, Any]:
    """A minimal run with each (dotted path, value) applied in order (value None removes)."""
    obj = run_object()
    for dotted, value in fields:
        obj = without_field(obj, dotted) if value is None else with_field(obj, dotted, value)
    return obj


def defaulted_spec(*fields: tuple[str, Any], **overrides: Any) -> dict[str, Any]:
    """The validated, CRD-defaulted spec of a minimal run with the given changes.

    Positional pairs take paths relative to `spec` ("judge.samples", 5); keywords use `__`.
    """
    obj = run_object(**{f"spec__{k}": v for k, v in overrides.items()})
    for dotted, value in fields:
        path = f"spec.{dotted}"
        obj = without_field(obj, path) if value is None else with_field(obj, path, value)
    return specs.validate(obj)["spec"]


# ---- statuses ----------------------------------------------------------------------------------
def stage(name: str, state: str = "Succeeded", attempt: int = 1, **extra: Any) -> dict[str, Any]:
    return {"name": name, "state": state, "attempt": attempt, **extra}


def status_with(*stages: tuple, **top: Any) -> dict[str, Any]:
    """A status from (iteration, stage, state[, attempt[, extra-dict]]) tuples.

    `status_with((1, "sft", "Succeeded"), (1, "evaluate", "Failed", 2, {"reason": "OOM"}))`.
    Iterations may be given as int or str ("1"). Keywords become top-level status fields.
    """
    iterations: dict[int, dict[str, Any]] = {}
    for entry in stages:
        iteration, name, state, *rest = entry
        attempt = rest[0] if rest else 1
        extra = rest[1] if len(rest) > 1 else {}
        item = iterations.setdefault(int(iteration), {"iteration": int(iteration), "stages": []})
        item["stages"].append(stage(name, state, attempt, **extra))
    return {"iterations": [iterations[k] for k in sorted(iterations)], **top}


def iteration_stages(iteration: int, evaluation: bool = True) -> tuple[str, ...]:
    if iteration == 1:
        return ("sft", "evaluate") if evaluation else ("sft",)
    return ("instruct", "generate", "judge", "dpo") + (("evaluate", "compare") if evaluation else ())


def succeeded_through(last_iteration: int, evaluation: bool = True, then: tuple[tuple, ...] = ()) -> dict[str, Any]:
    """Every stage of iterations 1..last_iteration Succeeded, then the extra `then` stage tuples."""
    done = [(t, name, "Succeeded") for t in range(1, last_iteration + 1) for name in iteration_stages(t, evaluation)]
    return status_with(*done, *then)


def find_stage(status: dict[str, Any], iteration: int, name: str) -> dict[str, Any]:
    entry = next(e for e in status["iterations"] if e["iteration"] == iteration)
    return next(s for s in entry["stages"] if s["name"] == name)


def find_iteration(status: dict[str, Any], iteration: int) -> dict[str, Any]:
    return next(e for e in status["iterations"] if e["iteration"] == iteration)


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


# ---- stage contract ----------------------------------------------------------------------------
def stage_config(**overrides: Any) -> dict[str, Any]:
    """A minimal valid stage-program config (the JSON given to `--config`); None removes a key."""
    config: dict[str, Any] = {
        "stage": "generate",
        "run": RUN_NAME,
        "namespace": NAMESPACE,
        "iteration": 2,
        "inputs": {"model": f"{ROOT}/iter-01/model", "prompts": f"{ROOT}/iter-02/prompts"},
        "outputs": {"candidates": f"{ROOT}/iter-02/candidates"},
        "shardCount": 4,
        "randomSeed": 1234,
        "spec": {"generation": {"candidates": 4}},
    }
    for key, value in overrides.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return config
