"""Thin kopf handlers: any watch event of a run or of one of its children asks for that run to be
reconciled; a per-run queue runs one reconcile at a time and folds a burst of events into one.

kopf watches runs, Jobs and PyTorchJobs (children only, selected by label on the server) and
calls these handlers; reconciling reacts to those events, it does not poll. The only timer is a
retry's backoff, and a reconcile that failed on an API error is tried again after a delay.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

import kopf

from selfreward.operator import metrics
from selfreward.operator.children import RUN_LABEL
from selfreward.operator.kube import Cluster, Conflict, api_client
from selfreward.operator.reconciler import Outcome, Reconciler
from selfreward.operator.spec import GROUP, PLURAL, VERSION

logger = logging.getLogger(__name__)
Key = tuple[str, str]  # (namespace, run name)
MAX_ERROR_DELAY = 60.0


class RunQueue:
    """One worker per run with work to do; events for a run that is being reconciled mark it
    dirty, and the worker reconciles it once more when the current reconcile ends."""

    def __init__(self, reconcile: Callable[[str, str], Outcome]):
        self.reconcile = reconcile
        self.dirty: set[Key] = set()
        self.workers: dict[Key, asyncio.Task] = {}
        self.timers: dict[Key, asyncio.TimerHandle] = {}
        self.own_writes: dict[Key, str] = {}
        self.errors: dict[Key, int] = {}  # consecutive failed reconciles of a run, for the backoff
        self.phases = metrics.RunPhases()

    def poke(self, key: Key, resource_version: str | None = None) -> None:
        if resource_version is not None and self.own_writes.get(key) == resource_version:
            return  # the event of our own status write: nothing new to see
        self.dirty.add(key)
        if key not in self.workers:
            self.workers[key] = asyncio.get_running_loop().create_task(self._work(key))

    def forget(self, key: Key) -> None:
        self.phases.set(key, None)
        self.dirty.discard(key)
        self.own_writes.pop(key, None)
        self.errors.pop(key, None)
        timer = self.timers.pop(key, None)
        if timer:
            timer.cancel()

    def _count(self, key: Key, outcome: Outcome) -> None:
        metrics.RECONCILES.labels("ok").inc()
        for kind in outcome.created:
            metrics.CHILDREN_CREATED.labels(kind).inc()
        for reason in outcome.reported:
            metrics.TRANSITIONS.labels(reason).inc()
        self.phases.set(key, outcome.phase)

    def _wake_in(self, key: Key, seconds: float) -> None:
        if key in self.timers:
            self.timers.pop(key).cancel()
        self.timers[key] = asyncio.get_running_loop().call_later(seconds, self.poke, key)

    async def _work(self, key: Key) -> None:
        try:
            while key in self.dirty:
                self.dirty.discard(key)
                try:
                    with metrics.RECONCILE_SECONDS.time():
                        outcome = await asyncio.to_thread(self.reconcile, *key)
                except Conflict:
                    metrics.RECONCILES.labels("conflict").inc()
                    self.dirty.add(key)  # changed under us: read it again (its own event will poke too)
                    continue
                except Exception as error:  # the API server unreachable, a 5xx, a refused request: try again later
                    metrics.RECONCILES.labels("error").inc()
                    self.errors[key] = self.errors.get(key, 0) + 1
                    delay = min(2.0 ** self.errors[key], MAX_ERROR_DELAY)
                    logger.error("reconciling %s/%s failed (%s), trying again in %.0f s", *key, error, delay)
                    self._wake_in(key, delay)
                    continue
                self.errors.pop(key, None)
                self._count(key, outcome)
                if outcome.status_written:
                    self.own_writes[key] = outcome.status_written
                if outcome.wake_in:
                    self._wake_in(key, outcome.wake_in)
        finally:
            self.workers.pop(key, None)


@kopf.on.startup(id="setup")
def setup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_) -> None:
    settings.posting.enabled = False  # Events are the reconciler's, one per transition
    # Least privilege: no permission to watch CRDs or namespaces is needed; the resources are
    # looked up once at start (install the training operator before this one, or restart it).
    settings.scanning.disabled = True
    settings.watching.label_selectors["batch", "jobs"] = RUN_LABEL
    settings.watching.label_selectors["kubeflow.org", "pytorchjobs"] = RUN_LABEL
    memo.queue = RunQueue(Reconciler(Cluster(api_client()), memo.defaults).reconcile)


@kopf.on.event(GROUP, VERSION, PLURAL, id="run")
async def run_event(event: kopf.RawEvent, namespace: str, name: str, memo: kopf.Memo, **_) -> None:
    if event["type"] == "DELETED":
        memo.queue.forget((namespace, name))
    else:
        memo.queue.poke((namespace, name), event["object"]["metadata"].get("resourceVersion"))


@kopf.on.event("batch", "v1", "jobs", labels={RUN_LABEL: kopf.PRESENT}, id="job")
async def job_event(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_) -> None:
    memo.queue.poke((namespace, labels[RUN_LABEL]))


@kopf.on.event("kubeflow.org", "v1", "pytorchjobs", labels={RUN_LABEL: kopf.PRESENT}, id="pytorchjob")
async def pytorchjob_event(namespace: str, labels: kopf.Labels, memo: kopf.Memo, **_) -> None:
    memo.queue.poke((namespace, labels[RUN_LABEL]))
