"""How the operator meets failure on the real control plane: invalid data fails the run at once;
anything else is retried as a new attempt up to retries.limit; a pod evicted or drained is not
the stage's fault and costs no attempt; past the limit the run is Failed, saying where and why.
Every assertion reads API objects: children, the run's status, its Events.
"""

from __future__ import annotations

import pytest

from tests.fixtures.operator import RUN, Play, Player, WorkerPod, children, cluster_run, run_events, stage, succeed, wait_for_phase

pytestmark = pytest.mark.kube


def failing(stage_name: str, attempts: set[int], exit_code: int = 1, shard: int = 0, permanent: bool = False,
            reason: str = "EngineError", error: str = "CUDA error: an illegal memory access was encountered"):
    """A script: `stage_name` fails on `shard` in the given attempts, as its stage program would
    report it; every other pod succeeds."""

    def script(pod: WorkerPod) -> Play:
        if stage_name in pod.stages and pod.shard == shard:
            config = next(c for c in pod.configs if c["stage"] == stage_name)
            if config["attempt"] in attempts:
                done = pod.stages[: pod.stages.index(stage_name)]
                return Play(exit_code, [pod.summary(s) for s in done] + [pod.failure(stage_name, reason, error, permanent)])
        return succeed(pod)

    return script


def drive(cluster, namespace, operator, run: dict, script, phase: str) -> dict:
    operator.start([namespace])
    with Player(cluster, [namespace], script) as player:
        cluster.apply(run, namespace=namespace)
        result = wait_for_phase(cluster, namespace, run["metadata"]["name"], phase, timeout=180)
        player.check()
    return result


def test_invalid_data_fails_the_run_at_once_with_the_message(srr_crd, namespace, operator):
    script = failing("judge", {1}, exit_code=2, shard=1, permanent=True, reason="InvalidData",
                     error="candidates/shard-00001-of-00002/rows.jsonl line 7: missing field 'prompt'")
    run = drive(srr_crd, namespace, operator, cluster_run(spec__iterations=2), script, "Failed")
    judge = stage(run["status"], 2, "judge")
    assert (judge["state"], judge["attempt"], judge["reason"], judge["permanent"]) == ("Failed", 1, "InvalidData", True)
    assert "line 7: missing field 'prompt'" in judge["message"]
    assert [name for name in children(srr_crd, namespace) if "generate" in name] == ["paper-i02-generate-a1"]
    conditions = {c["type"]: c for c in run["status"]["conditions"]}
    assert conditions["Stalled"]["status"] == "True" and conditions["Stalled"]["reason"] == "InvalidData"
    assert conditions["Ready"]["status"] == "False" and "iteration 2 stage judge failed" in conditions["Ready"]["message"]
    reasons = {e["reason"]: e for e in run_events(srr_crd, namespace)}
    assert reasons["RunFailed"]["type"] == "Warning" and "line 7" in reasons["RunFailed"]["message"]
    assert "StageRetrying" not in reasons


def test_a_transient_failure_is_retried_as_a_new_attempt(srr_crd, namespace, operator):
    run = drive(srr_crd, namespace, operator, cluster_run(spec__iterations=2), failing("generate", {1, 2}), "Succeeded")
    generate = stage(run["status"], 2, "generate")
    assert (generate["state"], generate["attempt"]) == ("Succeeded", 3)
    assert sorted(n for n in children(srr_crd, namespace) if "generate" in n) == [
        "paper-i02-generate-a1", "paper-i02-generate-a2", "paper-i02-generate-a3"]
    events = [(e["reason"], e["message"]) for e in run_events(srr_crd, namespace)]
    assert sum(reason == "StageRetrying" and "iteration 2 generate" in message for reason, message in events) == 2
    assert any(reason == "StageFailed" and "CUDA error" in message for reason, message in events)


def test_past_the_retry_limit_the_run_fails_with_the_stage_reason_and_last_message(srr_crd, namespace, operator):
    run = cluster_run(spec__iterations=1, spec__retries={"limit": 1, "backoffSeconds": 0})
    ended = drive(srr_crd, namespace, operator, run, failing("sft", {1, 2}, error="NCCL timeout in allreduce"), "Failed")
    sft = stage(ended["status"], 1, "sft")
    assert (sft["state"], sft["attempt"], sft["reason"]) == ("Failed", 2, "EngineError")
    assert ended["status"]["stage"] == "sft" and "NCCL timeout" in sft["message"]
    assert sorted(children(srr_crd, namespace)) == ["paper-i01-sft-a1", "paper-i01-sft-a2"]


def test_a_pod_that_dies_without_reporting_is_retried_with_its_exit_code(srr_crd, namespace, operator):
    def killed_once(pod: WorkerPod) -> Play:
        if pod.stages == ["sft"] and pod.attempt == 1:
            return Play(137, [])  # SIGKILL before any summary: no termination message
        return succeed(pod)

    run = drive(srr_crd, namespace, operator, cluster_run(spec__iterations=1), killed_once, "Succeeded")
    events = [e["message"] for e in run_events(srr_crd, namespace) if e["reason"] == "StageFailed"]
    assert len(events) == 1 and "exited with code 137 before reporting" in events[0]
    assert stage(run["status"], 1, "sft")["attempt"] == 2


def test_an_evicted_shard_is_replaced_by_the_job_and_costs_no_attempt(srr_crd, namespace, operator):
    evicted = []

    def evict_first_generate(pod: WorkerPod) -> Play:
        if "generate" in pod.stages and pod.shard == 1 and not evicted:
            evicted.append(pod.name)
            return Play(137, [], disrupted=True)
        return succeed(pod)

    run = drive(srr_crd, namespace, operator, cluster_run(spec__iterations=2, spec__retries={"limit": 0, "backoffSeconds": 0}),
                evict_first_generate, "Succeeded")
    assert evicted and stage(run["status"], 2, "generate")["attempt"] == 1
    assert [n for n in children(srr_crd, namespace) if "generate" in n] == ["paper-i02-generate-a1"]


def test_an_evicted_training_pod_reruns_the_stage_without_spending_a_retry(srr_crd, namespace, operator):
    """As the kubelet evicts under node pressure: the pod ends Failed with DisruptionTarget. (An
    eviction through the API deletes the pod instead; the training operator then recreates it.)"""
    def evict_first_sft(pod: WorkerPod) -> Play:
        if pod.stages == ["sft"] and pod.attempt == 1:
            return Play(137, [], disrupted=True)
        return succeed(pod)

    run = drive(srr_crd, namespace, operator, cluster_run(spec__iterations=1, spec__retries={"limit": 0, "backoffSeconds": 0}),
                evict_first_sft, "Succeeded")
    sft = stage(run["status"], 1, "sft")
    assert (sft["state"], sft["attempt"]) == ("Succeeded", 2)
    assert sorted(children(srr_crd, namespace)) == ["paper-i01-evaluate-a1", "paper-i01-sft-a1", "paper-i01-sft-a2"]


def test_a_failed_run_is_retried_when_its_retry_annotation_changes(srr_crd, namespace, operator):
    fixed = []

    def broken_until_fixed(pod: WorkerPod) -> Play:
        if pod.stages == ["sft"] and not fixed:
            return Play(2, [pod.failure("sft", "InvalidData", "ift.jsonl line 3: not JSON", permanent=True)])
        return succeed(pod)

    operator.start([namespace])
    with Player(srr_crd, [namespace], broken_until_fixed) as player:
        srr_crd.apply(cluster_run(spec__iterations=1), namespace=namespace)
        wait_for_phase(srr_crd, namespace, RUN, "Failed")
        fixed.append(True)  # the user fixes the seed file, then asks for a retry
        srr_crd.kubectl("annotate", "srr", RUN, "-n", namespace, "selfreward.io/retry=fixed-seed")
        run = wait_for_phase(srr_crd, namespace, RUN, "Succeeded")
        player.check()
    assert run["status"]["retryRequest"] == "fixed-seed"
    assert stage(run["status"], 1, "sft")["attempt"] == 2
    assert sorted(children(srr_crd, namespace)) == ["paper-i01-evaluate-a1", "paper-i01-sft-a1", "paper-i01-sft-a2"]
