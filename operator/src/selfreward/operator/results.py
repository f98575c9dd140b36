"""Pure reading of results: a finished child and its pods -> one summary per step it ran.

Each stage program prints its summary line to its pod's termination message (a chain prints
one line per stage). A stage succeeded only when every one of its shards reported success; a
shard that failed reports why, or, when it died before it could (killed, out of memory), the
pod's exit code, reason and log tail (FallbackToLogsOnError) say it. Summaries have the shape
the local executor reads from the program's stdout, so `status.record` treats both alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from selfreward.operator import plan as planner
from selfreward.operator.children import EXIT_PERMANENT, JOB_CONTAINER, TRAINING_CONTAINER
from selfreward.operator.stageconfig import summary_of

INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


@dataclass(frozen=True)
class ChildState:
    finished: bool
    suspended: bool
    reason: str = ""
    message: str = ""


def child_state(child: dict[str, Any]) -> ChildState:
    """Finished when its Job or PyTorchJob reached a terminal condition (Complete / Succeeded / Failed)."""
    conditions = {c["type"]: c for c in child.get("status", {}).get("conditions", []) or [] if c.get("status") == "True"}
    terminal = next((conditions[t] for t in ("Complete", "Succeeded", "Failed") if t in conditions), None)
    if child["kind"] == "Job":
        suspended = bool(child["spec"].get("suspend"))
    else:
        suspended = bool(child["spec"].get("runPolicy", {}).get("suspend"))
    if terminal is None:
        return ChildState(False, suspended)
    return ChildState(True, suspended, terminal.get("reason", terminal["type"]), terminal.get("message", ""))


@dataclass
class PodReport:
    """What one finished pod says: its shard, its summary lines by stage, or how it died."""

    shard: int
    succeeded: bool
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    exit_code: int | None = None
    reason: str = ""
    log_tail: str = ""
    disrupted: bool = False


def pod_report(pod: dict[str, Any]) -> PodReport | None:
    """The report of a pod whose stage container terminated; None while it has not."""
    phase = pod.get("status", {}).get("phase")
    if phase not in ("Succeeded", "Failed"):
        return None
    meta = pod["metadata"]
    annotations = meta.get("annotations") or {}
    shard = int(annotations.get(INDEX_ANNOTATION, "0"))
    statuses = pod["status"].get("containerStatuses") or []
    container = next((s for s in statuses if s["name"] in (JOB_CONTAINER, TRAINING_CONTAINER)), None)
    terminated = ((container or {}).get("state") or {}).get("terminated") or {}
    summaries, tail = _parse_message(terminated.get("message") or "")
    disrupted = any(c.get("type") == "DisruptionTarget" and c.get("status") == "True"
                    for c in pod["status"].get("conditions") or [])
    return PodReport(shard, phase == "Succeeded", summaries, terminated.get("exitCode"),
                     terminated.get("reason") or pod["status"].get("reason") or "", tail, disrupted)


def _parse_message(message: str) -> tuple[dict[str, dict[str, Any]], str]:
    """Summary lines by stage; what is not a summary is a log tail (the kubelet's fallback)."""
    summaries: dict[str, dict[str, Any]] = {}
    other = []
    for line in message.splitlines():
        summary = summary_of(line)
        if summary is not None:
            summaries[summary["stage"]] = summary
        elif line.strip():
            other.append(line)
    return summaries, "\n".join(other)


def _pod_failure(report: PodReport) -> dict[str, Any]:
    """The summary of a pod that died without reporting on a stage."""
    code = report.exit_code
    if report.disrupted:
        reason, message = "Disrupted", "the pod was evicted, preempted or removed by a node drain"
    elif report.reason == "OOMKilled":
        reason, message = "OOMKilled", "the stage container ran out of memory"
    else:
        reason, message = report.reason or "ProcessExited", f"the stage container exited with code {code} before reporting"
    if report.log_tail:
        message += f"; last output:\n{report.log_tail[-800:]}"
    return {"ok": False, "permanent": code == EXIT_PERMANENT, "reason": reason, "error": message,
            "disrupted": report.disrupted}


def _weight(report: PodReport) -> int:
    """Which pod speaks for a shard: one that reported success, else one that reported a failure,
    else one that failed silently; a pod that ended well without reporting (a training worker,
    whose rank 0 is elsewhere) says least."""
    if any(summary.get("ok") for summary in report.summaries.values()):
        return 3
    return 2 if report.summaries else (1 if not report.succeeded else 0)


def latest_by_shard(pods: list[dict[str, Any]]) -> dict[int, PodReport]:
    """One report per shard (a PyTorchJob's pods are all shard 0); among equals, the newest."""
    ordered = sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")
    reports: dict[int, PodReport] = {}
    for pod in ordered:
        report = pod_report(pod)
        if report is not None and (report.shard not in reports or _weight(report) >= _weight(reports[report.shard])):
            reports[report.shard] = report
    return reports


def merge_metrics(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Shard metrics are counts and sums by the stage contract: add them up."""
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            merged[key] = merged.get(key, 0) + value if numeric else merged.get(key, value)
    return merged


def step_summaries(chain: list[planner.Step], state: ChildState, pods: list[dict[str, Any]]) -> list[dict[str, Any] | None]:
    """One summary per step of a finished child; None for a step it never reached because a step
    before it failed (that step goes back to Pending, no attempt spent)."""
    reports = latest_by_shard(pods)
    results: list[dict[str, Any] | None] = []
    earlier_failed = False
    for position, step in enumerate(chain):
        done, failures = [], []
        for shard in range(step.shard_count):
            report = reports.get(shard)
            summary = report.summaries.get(step.stage) if report else None
            if summary is not None and summary.get("ok"):
                done.append(summary)
            elif summary is not None:
                failures.append(summary)
            elif report is not None and not report.succeeded and all(
                    report.summaries.get(s.stage, {}).get("ok") for s in chain[:position]):
                failures.append(_pod_failure(report))  # it died in this stage
        if len(done) == step.shard_count:
            results.append({"ok": True, "stage": step.stage,
                            "shards": [shard for summary in done for shard in summary.get("shards", [])],
                            "metrics": merge_metrics([summary.get("metrics", {}) for summary in done])})
        elif failures:
            counted = [f for f in failures if not f.get("disrupted")] or failures
            first = next((f for f in counted if f.get("permanent")), counted[0])
            results.append({**first, "stage": step.stage, "ok": False})
            earlier_failed = True
        elif earlier_failed:
            results.append(None)
        else:
            results.append({"ok": False, "stage": step.stage, "permanent": False, "reason": state.reason or "ChildFailed",
                            "error": f"the child ended ({state.reason}: {state.message}) before every shard reported"})
            earlier_failed = True
    return results
