"""Pure: what changed between two statuses of a run, as the Kubernetes Events to post about it.

One Event per stage start, success, retry and failure, and one when the run succeeds, fails or
is suspended. Each has a key that names the transition exactly (stage, attempt, state); the
API module names the Event after it, so posting the same transition twice (an operator restarted
between its status write and its Events) creates nothing new.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from selfreward.operator.plan import StageState


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str  # PascalCase
    message: str
    key: str


def _stages(status: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    for entry in status.get("iterations", []):
        for item in entry.get("stages", []):
            yield entry["iteration"], item


def between(old: dict[str, Any], new: dict[str, Any]) -> list[Event]:
    """A stage started, succeeded, failed or was retried."""
    before = {(t, item["name"]): (item.get("state"), item.get("attempt")) for t, item in _stages(old)}
    events = []
    for iteration, item in _stages(new):
        name, state, attempt = item["name"], item.get("state"), item.get("attempt", 0)
        if before.get((iteration, name)) == (state, attempt):
            continue
        where = f"iteration {iteration} {name} (attempt {attempt})"
        key = f"{iteration}/{name}/{attempt}/{state}"
        if state == StageState.RUNNING.value:
            children = ", ".join(item.get("children", [])[-1:])
            retried = attempt > 1 + item.get("retryBase", 0)
            events.append(Event("Normal", "StageRetrying" if retried else "StageStarted", f"{where} started: {children}", key))
        elif state == StageState.SUCCEEDED.value:
            events.append(Event("Normal", "StageSucceeded", f"{where} succeeded", key))
        elif state == StageState.FAILED.value:
            message = f"{where} failed: {item.get('reason', 'StageFailed')}: {item.get('message', '')}"
            events.append(Event("Warning", "StageFailed", message[:1024], key))
    return events


def run_changes(old: dict[str, Any], new: dict[str, Any]) -> list[Event]:
    """The run as a whole succeeded, failed or was suspended."""
    events = []
    if new.get("phase") != old.get("phase"):
        phase = new.get("phase")
        generation = new.get("observedGeneration", 0)
        if phase == "Succeeded":
            events.append(Event("Normal", "RunSucceeded", f"every iteration up to {new.get('iteration')} finished",
                                f"run/Succeeded/{new.get('iteration')}"))
        elif phase == "Failed":
            failed = next((c for c in new.get("conditions", []) if c["type"] == "Failed"), {})
            attempt = next((item.get("attempt") for t, item in _stages(new)
                            if t == new.get("iteration") and item["name"] == new.get("stage")), 0)
            events.append(Event("Warning", "RunFailed", failed.get("message", "the run failed")[:1024],
                                f"run/Failed/{new.get('iteration')}/{new.get('stage')}/{attempt}"))
        elif phase == "Suspended":
            events.append(Event("Normal", "RunSuspended", "spec.suspend is true: no new stage starts",
                                f"run/Suspended/{generation}"))
    return events
