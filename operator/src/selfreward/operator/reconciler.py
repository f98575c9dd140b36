"""The Kubernetes executor: one reconcile of one SelfRewardRun.

Like the local executor it asks the planner what to do and records what happened with
`status.py`; where the local executor starts a subprocess and reads its stdout, this one creates
a child Job or PyTorchJob and, once it finished, reads its pods' termination messages. A
reconcile reads the run and its children, records finished children, creates the next child,
and writes status once, only when it changed. Everything it writes is derived from what it read,
so a reconcile interrupted anywhere (the operator killed) is simply done again: a child that
exists is found by its name, a transition already reported posts no second Event.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from selfreward.operator import children as builders
from selfreward.operator import events as run_events
from selfreward.operator import layout
from selfreward.operator import plan as planner
from selfreward.operator import results
from selfreward.operator import status as status_core
from selfreward.operator.kube import Cluster, Invalid

MAX_STEPS_PER_RECONCILE = 64  # a bound, far above what one reconcile can do (each step waits on a child)


@dataclass(frozen=True)
class Outcome:
    """What the caller does next: reconcile again after `wake_in` seconds (a retry's backoff)."""

    wake_in: float | None = None
    status_written: str | None = None  # the resourceVersion of our own status write
    phase: str | None = None  # None: the run is gone
    created: tuple[str, ...] = ()  # kinds of the children this reconcile created
    reported: tuple[str, ...] = ()  # reasons of the Events it posted


def cluster_chain(spec: dict[str, Any], status: dict[str, Any], root: str, first: planner.Step) -> list[planner.Step]:
    """plan_chain, cut where the shard count changes: one Job runs shard i of each stage in pod i."""
    chain = planner.plan_chain(spec, status, root, status_core.record, first=first)
    return list(itertools.takewhile(lambda step: step.shard_count == first.shard_count, chain))


def running_chain(status: dict[str, Any], waiting: planner.Waiting) -> tuple[str, list[planner.Step]]:
    """The child that runs the waiting stage, and every step it runs (all recorded with that
    child), as they were started."""
    child = planner.stage_status(status, waiting.iteration, waiting.stage)["children"][-1]
    steps = []
    for entry in status.get("iterations", []):
        for item in entry.get("stages", []):
            if item.get("state") == planner.StageState.RUNNING.value and (item.get("children") or [None])[-1] == child:
                steps.append(planner.recorded_step(status, entry["iteration"], item["name"]))
    return child, sorted(steps, key=lambda step: (step.iteration, planner.STAGE_ORDER.index(step.stage)))


RETRY_ANNOTATION = "selfreward.io/retry"


def retry_if_asked(status: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """A new value of the run's retry annotation gives its failed stages a fresh set of retries."""
    request = (meta.get("annotations") or {}).get(RETRY_ANNOTATION)
    if not request or request == status.get("retryRequest"):
        return copy.deepcopy(status)
    return {**status_core.reset_failed(status), "retryRequest": request}


def seconds_since(timestamp: str | None, now: datetime) -> float:
    if not timestamp:
        return float("inf")
    then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    return (now - then).total_seconds()


class Reconciler:
    def __init__(self, cluster: Cluster, defaults: builders.Defaults):
        self.cluster = cluster
        self.defaults = defaults

    def reconcile(self, namespace: str, name: str) -> Outcome:
        run = self.cluster.get_run(namespace, name)
        if run is None or run["metadata"].get("deletionTimestamp"):
            return Outcome()  # its children go with it (owner references); its artifacts stay
        meta, spec = run["metadata"], run["spec"]
        before = run.get("status") or {}
        ref = builders.RunRef(meta["name"], meta["namespace"], meta["uid"], spec)
        root = layout.run_root(spec["storage"]["uri"], namespace, name)
        existing = {child["metadata"]["name"]: child for child in self.cluster.list_children(namespace, name)}
        listed = set(existing)

        status, wake_in, events = retry_if_asked(before, meta), None, []
        decision: planner.Decision = planner.Done()
        for _ in range(MAX_STEPS_PER_RECONCILE):
            decision = planner.plan(spec, status, root)
            previous = status
            if isinstance(decision, planner.Waiting):
                status, progressed = self._observe(ref, spec, status, root, decision, existing)
            elif isinstance(decision, planner.Step):
                delay = planner.retry_backoff(spec, status, decision) - seconds_since(
                    planner.stage_status(status, decision.iteration, decision.stage).get("finishedAt"), datetime.now(timezone.utc))
                progressed = delay <= 0
                if progressed:
                    status = self._start(ref, spec, status, root, decision, existing)
                else:
                    wake_in = delay
            else:
                break
            events += run_events.between(previous, status)  # each transition, even one a later step overtakes
            if not progressed:
                break
        shown = planner.Suspended() if spec["suspend"] and isinstance(decision, planner.Waiting) else decision
        status = status_core.summarize(status, shown, spec, meta.get("generation"))
        created = tuple(child["kind"] for name, child in existing.items() if name not in listed)
        if status == before:
            return Outcome(wake_in, phase=status.get("phase"), created=created)
        # Events first: their names are fixed by the transition, so if the status write is lost
        # the next reconcile posts the same ones again and the API server keeps one of each.
        events += run_events.run_changes(before, status)
        for event in events:
            self.cluster.post_event(run, event)
        written = self.cluster.replace_status(run, status)
        return Outcome(wake_in, written["metadata"]["resourceVersion"], status.get("phase"), created,
                       tuple(event.reason for event in events))

    def _start(self, ref: builders.RunRef, spec: dict[str, Any], status: dict[str, Any], root: str,
               first: planner.Step, existing: dict[str, dict[str, Any]]) -> dict[str, Any]:
        chain = cluster_chain(spec, status, root, first)
        child = builders.build(ref, root, chain, self.defaults)
        name = child["metadata"]["name"]
        if name in existing:  # made before a crash or a lost status write: record what it runs
            chain = builders.steps_of(existing[name])
        else:
            try:
                self.cluster.create_child(child)
            except Invalid as error:  # the spec asks for something the API server refuses (a bad quantity, ...)
                return status_core.record(status, first, {"ok": False, "permanent": True, "reason": "InvalidChild",
                                                          "error": f"the API server refused {child['kind']} {name}: {error}"})
            existing[name] = child
        for step in chain:
            status = status_core.record_start(status, step, [name])
        return status

    def _observe(self, ref: builders.RunRef, spec: dict[str, Any], status: dict[str, Any], root: str,
                 waiting: planner.Waiting, existing: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], bool]:
        """Record the running child's results once it finished; (new status, whether anything was recorded)."""
        name, chain = running_chain(status, waiting)
        child = existing.get(name)
        if child is None:
            lost = {"ok": False, "permanent": False, "reason": "ChildMissing",
                    "error": f"child {name} no longer exists (deleted by someone else?): running the stage again"}
            for step in chain:
                status = status_core.record(status, step, lost)
            return status, True
        state = results.child_state(child)
        if not state.finished:
            if spec["suspend"] and not state.suspended:
                self.cluster.set_suspended(child, True)
            elif not spec["suspend"] and state.suspended and builders.QUEUE_LABEL not in child["metadata"].get("labels", {}):
                self.cluster.set_suspended(child, False)  # under Kueue, admission decides when it runs
            return status, False
        for step, summary in zip(chain, results.step_summaries(chain, state, self.cluster.pods_of(child))):
            if summary is None:
                status = status_core.record_not_reached(status, step)
            else:
                status = status_core.record(status, step, summary)
        return status, True
