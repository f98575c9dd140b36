"""A run's life on the real control plane beyond the happy path: suspended and resumed, continued
by raising spec.iterations, edited while it runs, its operator killed with SIGKILL in every kind of
stage, and many runs at once. Every assertion reads API objects.
"""

from __future__ import annotations

import json
import threading

import pytest

from tests.fixtures.cluster import POOL_LABEL, wait_for
from tests.fixtures.operator import (
    RUN, OperatorProcess, Play, Player, WorkerPod, children, cluster_run, get_run, run_events, stage, succeed, wait_for_phase,
)

pytestmark = pytest.mark.kube


class Gate:
    """A script that holds the pods of chosen children Running until the test opens their gate."""

    def __init__(self, *held: str):
        self.closed = set(held)
        self.lock = threading.Lock()

    def __call__(self, pod: WorkerPod) -> Play | None:
        with self.lock:
            return None if pod.child in self.closed else succeed(pod)

    def close(self, child: str) -> None:
        with self.lock:
            self.closed.add(child)

    def open(self, child: str) -> None:
        with self.lock:
            self.closed.discard(child)


def patch_spec(cluster, namespace: str, spec: dict, name: str = RUN) -> None:
    cluster.kubectl("patch", "srr", name, "-n", namespace, "--type", "merge", "-p", json.dumps({"spec": spec}))


def held(player: Player, child: str) -> bool:
    return any(pod.child == child for pod in player.held.values())


def test_suspend_suspends_the_running_child_and_resume_finishes_it_in_the_same_attempt(srr_crd, namespace, operator):
    operator.start([namespace])
    gate = Gate("paper-i01-sft-a1")
    with Player(srr_crd, [namespace], gate) as player:
        srr_crd.apply(cluster_run(spec__iterations=1), namespace=namespace)
        wait_for(lambda: held(player, "paper-i01-sft-a1"), 60, "the SFT pods to run")
        patch_spec(srr_crd, namespace, {"suspend": True})
        wait_for(lambda: children(srr_crd, namespace)["paper-i01-sft-a1"]["spec"]["runPolicy"].get("suspend"), 30,
                 "the PyTorchJob to be suspended")
        suspended = wait_for_phase(srr_crd, namespace, RUN, "Suspended")
        assert {c["type"]: c["status"] for c in suspended["status"]["conditions"]}["Reconciling"] == "False"
        assert list(children(srr_crd, namespace)) == ["paper-i01-sft-a1"]
        gate.open("paper-i01-sft-a1")
        patch_spec(srr_crd, namespace, {"suspend": False})
        run = wait_for_phase(srr_crd, namespace, RUN, "Succeeded")
    assert stage(run["status"], 1, "sft")["attempt"] == 1
    assert any(e["reason"] == "RunSuspended" for e in run_events(srr_crd, namespace))


def test_suspending_a_sharded_job_keeps_its_attempt_and_resuming_finishes_it(srr_crd, namespace, operator):
    operator.start([namespace])
    gate = Gate("paper-i02-generate-a1")
    with Player(srr_crd, [namespace], gate) as player:
        srr_crd.apply(cluster_run(spec__iterations=2), namespace=namespace)
        wait_for(lambda: held(player, "paper-i02-generate-a1"), 60, "the generate pods to run")
        patch_spec(srr_crd, namespace, {"suspend": True})
        wait_for(lambda: children(srr_crd, namespace)["paper-i02-generate-a1"]["spec"].get("suspend"), 30,
                 "the Job to be suspended")
        wait_for_phase(srr_crd, namespace, RUN, "Suspended")
        gate.open("paper-i02-generate-a1")
        patch_spec(srr_crd, namespace, {"suspend": False})
        run = wait_for_phase(srr_crd, namespace, RUN, "Succeeded")
    assert (stage(run["status"], 2, "generate")["attempt"], stage(run["status"], 2, "judge")["attempt"]) == (1, 1)
    assert [name for name in children(srr_crd, namespace) if "generate" in name] == ["paper-i02-generate-a1"]


def test_a_run_created_suspended_starts_nothing(srr_crd, namespace, operator):
    operator.start([namespace])
    srr_crd.apply(cluster_run(spec__iterations=1, spec__suspend=True), namespace=namespace)
    wait_for_phase(srr_crd, namespace, RUN, "Suspended")
    assert children(srr_crd, namespace) == {}


def test_raising_iterations_on_a_succeeded_run_continues_from_its_last_model(srr_crd, namespace, operator):
    operator.start([namespace])
    with Player(srr_crd, [namespace]):
        srr_crd.apply(cluster_run(spec__iterations=1), namespace=namespace)
        wait_for_phase(srr_crd, namespace, RUN, "Succeeded")
        patch_spec(srr_crd, namespace, {"iterations": 2})
        wait_for(lambda: get_run(srr_crd, namespace, RUN)["status"]["phase"] == "Running", 30, "the run to go on")
        run = wait_for_phase(srr_crd, namespace, RUN, "Succeeded")
    assert run["status"]["iteration"] == 2 and run["status"]["observedGeneration"] == run["metadata"]["generation"] == 2
    generate = children(srr_crd, namespace)["paper-i02-generate-a1"]
    config = json.loads(generate["spec"]["template"]["spec"]["containers"][0]["args"][-1])
    assert config[0]["inputs"]["model"] == stage(run["status"], 1, "sft")["outputs"]["model"]  # M1 makes M2's data


def test_placement_edits_apply_to_steps_not_yet_started(srr_crd, namespace, operator):
    operator.start([namespace])
    gate = Gate("paper-i01-sft-a1")
    with Player(srr_crd, [namespace], gate) as player:
        srr_crd.apply(cluster_run(spec__iterations=2), namespace=namespace)
        wait_for(lambda: held(player, "paper-i01-sft-a1"), 60, "the SFT pods to run")
        patch_spec(srr_crd, namespace, {"placement": {"inference": {"replicas": 1}, "training": {"replicas": 1}}})
        gate.open("paper-i01-sft-a1")
        wait_for_phase(srr_crd, namespace, RUN, "Succeeded")
    made = children(srr_crd, namespace)
    assert "Worker" in made["paper-i01-sft-a1"]["spec"]["pytorchReplicaSpecs"]  # started before the edit
    assert "Worker" not in made["paper-i02-dpo-a1"]["spec"]["pytorchReplicaSpecs"]
    # One shard now, so evaluating M1 and making M2's data share one Job (one model load).
    chained = made["paper-i01-evaluate-a1"]
    assert chained["metadata"]["annotations"]["selfreward.io/stages"] == "evaluate,instruct,generate,judge"
    assert chained["spec"]["completions"] == 1 and "paper-i02-generate-a1" not in made


def test_an_operator_killed_in_every_kind_of_stage_finishes_the_run_without_doing_anything_twice(srr_crd, namespace, operator):
    steps = ["paper-i01-sft-a1", "paper-i01-evaluate-a1", "paper-i02-generate-a1", "paper-i02-dpo-a1", "paper-i02-evaluate-a1"]
    gate = Gate(*steps)
    operator.start([namespace])
    with Player(srr_crd, [namespace], gate) as player:
        srr_crd.apply(cluster_run(spec__iterations=2), namespace=namespace)
        for child in steps:
            wait_for(lambda: held(player, child), 60, f"{child} to run")
            if child == steps[0]:
                started = stage(get_run(srr_crd, namespace, RUN)["status"], 1, "sft")["startedAt"]
            operator.kill()
            operator.start([namespace])
            gate.open(child)
        run = wait_for_phase(srr_crd, namespace, RUN, "Succeeded")
        player.check()
    assert sorted(children(srr_crd, namespace)) == sorted(steps)
    stages = [item for entry in run["status"]["iterations"] for item in entry["stages"]]
    # 8 stages in 5 children: compare runs in the pod of iteration 2's evaluate (same model)
    assert len(stages) == 8 and all(item["attempt"] == 1 and item["state"] == "Succeeded" for item in stages)
    assert stage(run["status"], 1, "sft")["startedAt"] == started
    events = [(e["reason"], e["message"]) for e in run_events(srr_crd, namespace)]
    assert len(set(events)) == len(events)  # no transition reported twice
    assert sum(reason == "StageStarted" for reason, _ in events) == 8


def test_thirty_runs_in_three_namespaces_progress_independently(srr_crd, tmp_path):
    namespaces = [srr_crd.create_namespace() for _ in range(3)]
    cpu_only = {"inference": {"nodeSelector": {POOL_LABEL: "cpu"}}, "training": {"nodeSelector": {POOL_LABEL: "cpu"}}}

    def script(pod: WorkerPod) -> Play:
        if pod.name.startswith("broken-") and pod.stages == ["sft"]:
            return Play(2, [pod.failure("sft", "InvalidData", "ift.jsonl line 3: not JSON", permanent=True)])
        return succeed(pod)

    operator = OperatorProcess(srr_crd, tmp_path).start(namespaces)
    try:
        with Player(srr_crd, namespaces, script) as player:
            runs = [(namespace, f"run-{index}") for namespace in namespaces for index in range(10)]
            runs[0] = (namespaces[0], "broken-0")
            for namespace, name in runs:
                run = cluster_run(name, spec__iterations=2)
                run["spec"]["placement"] = cpu_only
                srr_crd.apply(run, namespace=namespace)
            for namespace, name in runs:
                wait_for_phase(srr_crd, namespace, name, "Failed" if name.startswith("broken") else "Succeeded", timeout=300)
            player.check()
        for namespace, name in runs[1:]:  # sft; evaluate+instruct+generate+judge (one shard, one model); dpo; evaluate
            assert len(children(srr_crd, namespace, name)) == 4, name
        assert list(children(srr_crd, namespaces[0], "broken-0")) == ["broken-0-i01-sft-a1"]
    finally:
        operator.stop()
        for namespace in namespaces:
            srr_crd.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
