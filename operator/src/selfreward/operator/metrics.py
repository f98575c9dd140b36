"""The operator's Prometheus metrics: how often and how long it reconciles, what it creates, and
how many runs are in each phase. Served on --metrics-port (the chart's metrics Service)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECONCILES = Counter("selfreward_reconciles_total", "Reconciles of a run, by result.", ["result"])
RECONCILE_SECONDS = Histogram("selfreward_reconcile_seconds", "Time one reconcile takes.",
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
CHILDREN_CREATED = Counter("selfreward_children_created_total", "Jobs and PyTorchJobs created.", ["kind"])
TRANSITIONS = Counter("selfreward_transitions_total", "Stage and run transitions, by Event reason.", ["reason"])
RUNS = Gauge("selfreward_runs", "Runs this operator reconciles, by phase.", ["phase"])
PHASES = ("Pending", "Running", "Suspended", "Succeeded", "Failed")


class RunPhases:
    """The last phase seen of each run, summed into the RUNS gauge."""

    def __init__(self):
        self.phases: dict[tuple[str, str], str] = {}

    def set(self, key: tuple[str, str], phase: str | None) -> None:
        if phase is None:
            self.phases.pop(key, None)
        else:
            self.phases[key] = phase
        for name in PHASES:
            RUNS.labels(name).set(sum(1 for value in self.phases.values() if value == name))


def serve(port: int) -> None:
    if port:
        start_http_server(port)
