"""The cost of orchestration: with many concurrent runs on the testbed, how long from a child
finishing to the next child of its run being created, and how much memory the operator holds.

    .venv/bin/python bench/operator_orchestration.py [--runs 30] [--namespaces 3] [--iterations 3]

Starts its own testbed (real apiserver, Job controller, scheduler, training operator, kwok nodes),
the operator as a process, and the test player that ends worker pods as stage programs would. A
watcher on Jobs and PyTorchJobs timestamps, on this machine's monotonic clock, when each child
appears and when it reaches a terminal condition; the gap from a child's end to its successor's
appearance is what the operator adds to every step. The operator's resident memory is read
from /proc while the runs go on (peak: VmHWM). Writes bench/results/operator-orchestration.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from testbed import testbed as tb  # noqa: E402
from tests.fixtures.cluster import POOL_LABEL, Cluster, wait_for  # noqa: E402
from tests.fixtures.operator import CRD, OperatorProcess, Player, cluster_run, get_run  # noqa: E402


class ChildWatch:
    """Monotonic times at which each child was first seen, and first seen finished."""

    def __init__(self, cluster: Cluster):
        self.cluster = cluster
        self.created: dict[tuple[str, str], float] = {}
        self.run_of: dict[tuple[str, str], str] = {}
        self.finished: dict[tuple[str, str], float] = {}
        self.stop = threading.Event()

    def start(self) -> None:
        for kind in ("jobs", "pytorchjobs"):
            threading.Thread(target=self._watch, args=(kind,), daemon=True).start()

    def _watch(self, kind: str) -> None:
        try:
            self._stream(kind)
        except Exception:  # noqa: BLE001 - the testbed stops under a live stream at the end
            if not self.stop.is_set():
                raise

    def _stream(self, kind: str) -> None:
        from kubernetes import watch

        api = self.cluster.batch() if kind == "jobs" else self.cluster.custom_objects()
        while not self.stop.is_set():
            stream = watch.Watch()
            if kind == "jobs":
                events = stream.stream(api.list_job_for_all_namespaces, label_selector="selfreward.io/run", timeout_seconds=60)
            else:
                events = stream.stream(api.list_cluster_custom_object, "kubeflow.org", "v1", "pytorchjobs",
                                       label_selector="selfreward.io/run", timeout_seconds=60)
            for event in events:
                now = time.monotonic()
                obj = event["object"]
                obj = obj if isinstance(obj, dict) else self.cluster.api_client().sanitize_for_serialization(obj)
                key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
                self.created.setdefault(key, now)
                self.run_of[key] = obj["metadata"]["labels"]["selfreward.io/run"]
                conditions = (obj.get("status") or {}).get("conditions") or []
                if any(c["type"] in ("Complete", "Succeeded", "Failed") and c["status"] == "True" for c in conditions):
                    self.finished.setdefault(key, now)
                if self.stop.is_set():
                    return

    def gaps(self) -> list[float]:
        """For each run, the time from each child's end to the next child's appearance."""
        by_run: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for namespace, name in self.created:
            by_run.setdefault((namespace, self.run_of[namespace, name]), []).append((namespace, name))
        gaps = []
        for keys in by_run.values():
            ordered = sorted(keys, key=self.created.__getitem__)
            for before, after in zip(ordered, ordered[1:]):
                if before in self.finished:
                    gaps.append(self.created[after] - self.finished[before])
        return gaps


def rss_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--namespaces", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "operator-orchestration.json")
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="bench-testbed-"))
    testbed = tb.up(state, with_s3=False, die_with_parent=True)
    try:
        cluster = Cluster(testbed)
        cluster.apply(CRD)
        cluster.wait_for_crd("selfrewardruns.selfreward.io")
        namespaces = [cluster.create_namespace(f"bench-{i}") for i in range(args.namespaces)]
        operator = OperatorProcess(cluster, state).start(namespaces)
        watch = ChildWatch(cluster)
        watch.start()
        runs = [(namespaces[i % len(namespaces)], f"run-{i:02d}") for i in range(args.runs)]
        placement = {"inference": {"replicas": 2, "nodeSelector": {POOL_LABEL: "cpu"}},
                     "training": {"replicas": 2, "nodeSelector": {POOL_LABEL: "cpu"}}}
        samples = []
        started = time.monotonic()
        with Player(cluster, namespaces):
            for namespace, name in runs:
                run = cluster_run(name, spec__iterations=args.iterations)
                run["spec"]["placement"] = placement
                cluster.apply(run, namespace=namespace)
            for namespace, name in runs:
                def succeeded(namespace=namespace, name=name):
                    samples.append(rss_kib(operator.process.pid)["VmRSS"])
                    return get_run(cluster, namespace, name).get("status", {}).get("phase") == "Succeeded"
                wait_for(succeeded, 900, f"{namespace}/{name} to succeed", interval=0.5)
        elapsed = time.monotonic() - started
        memory = rss_kib(operator.process.pid)
        watch.stop.set()
        operator.stop()
        gaps = watch.gaps()
        result = {
            "runs": args.runs, "namespaces": args.namespaces, "iterations": args.iterations,
            "children": len(watch.created), "gapSamples": len(gaps),
            "nextChildSeconds": {"p50": round(percentile(gaps, 0.50), 3), "p90": round(percentile(gaps, 0.90), 3),
                                 "p99": round(percentile(gaps, 0.99), 3), "max": round(max(gaps), 3),
                                 "mean": round(statistics.mean(gaps), 3)},
            "operatorRssMiB": {"peak": round(memory["VmHWM"] / 1024, 1), "last": round(memory["VmRSS"] / 1024, 1),
                               "medianWhileRunning": round(statistics.median(samples) / 1024, 1)},
            "wallSeconds": round(elapsed, 1),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
    finally:
        tb.down(state)


if __name__ == "__main__":
    main()
