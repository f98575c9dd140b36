"""The simulated cluster behaves like a real one where the operator depends on it: scheduling
onto tainted GPU pools, pods that run and finish, Jobs, garbage collection, RBAC, PodSecurity,
and PyTorchJobs driven by the real Kubeflow training operator."""
from __future__ import annotations

import uuid

import pytest

from tests.fixtures.cluster import GPU_RESOURCE, POOL_LABEL, gpu_placement, wait_for

pytestmark = pytest.mark.kube


def _pod(name: str, gpus: int = 0, placement: dict | None = None,
         annotations: dict | None = None) -> dict:
    container = {"name": "main", "image": "registry.invalid/worker:test", "command": ["true"]}
    if gpus:
        container["resources"] = {"limits": {GPU_RESOURCE: str(gpus)}}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": annotations or {}},
            "spec": {"restartPolicy": "Never", "containers": [container], **(placement or {})}}


def _phase(core, namespace: str, name: str, *phases: str):
    pod = core.read_namespaced_pod(name, namespace)
    return pod if pod.status.phase in phases else None


def test_gpu_pod_is_placed_on_its_pool_and_completes(cluster, namespace):
    core = cluster.core()
    message = '{"stage": "generate", "ok": true}'
    cluster.apply(_pod("gpu", gpus=2, placement=gpu_placement("gpu-inference"), annotations={
        "testbed.selfreward.io/termination-message": message}), namespace=namespace)

    pod = wait_for(lambda: _phase(core, namespace, "gpu", "Succeeded", "Failed"), 60,
                   "pod gpu to finish")
    assert pod.status.phase == "Succeeded"
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.labels[POOL_LABEL] == "gpu-inference"
    assert node.status.allocatable[GPU_RESOURCE] == "8"
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.message) == (0, message)


def test_gpu_pod_without_toleration_is_unschedulable(cluster, namespace):
    core = cluster.core()
    cluster.apply(_pod("no-toleration", gpus=1,
                       placement={"nodeSelector": {POOL_LABEL: "gpu-training"}}),
                  namespace=namespace)

    def unschedulable():
        pod = core.read_namespaced_pod("no-toleration", namespace)
        return any(c.type == "PodScheduled" and c.reason == "Unschedulable"
                   for c in pod.status.conditions or [])

    wait_for(unschedulable, 30, "the scheduler to refuse the pod")
    assert core.read_namespaced_pod("no-toleration", namespace).spec.node_name is None


def test_more_gpus_than_a_node_has_is_unschedulable(cluster, namespace):
    core = cluster.core()
    cluster.apply(_pod("too-big", gpus=9, placement=gpu_placement("gpu-training")),
                  namespace=namespace)
    wait_for(lambda: any(c.reason == "Unschedulable" for c in
                         core.read_namespaced_pod("too-big", namespace).status.conditions or []),
             30, "the scheduler to refuse 9 GPUs")


def test_cpu_pod_lands_on_the_cpu_pool_and_can_fail(cluster, namespace):
    core = cluster.core()
    cluster.apply(_pod("fails", placement={"nodeSelector": {POOL_LABEL: "cpu"}},
                       annotations={"testbed.selfreward.io/exit-code": "3"}), namespace=namespace)
    pod = wait_for(lambda: _phase(core, namespace, "fails", "Succeeded", "Failed"), 60,
                   "pod fails to finish")
    assert pod.status.phase == "Failed"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 3
    assert core.read_node(pod.spec.node_name).metadata.labels[POOL_LABEL] == "cpu"


def test_job_completes_and_is_garbage_collected_with_its_owner(cluster, namespace):
    core, batch = cluster.core(), cluster.batch()
    owner = core.create_namespaced_config_map(namespace, {
        "metadata": {"name": "owner"}, "data": {"k": "v"}})
    cluster.apply({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "child", "ownerReferences": [{
            "apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
            "uid": owner.metadata.uid}]},
        "spec": {"completions": 2, "parallelism": 2, "completionMode": "Indexed",
                 "backoffLimit": 0,
                 "template": {"spec": {**_pod("x")["spec"], **gpu_placement("gpu-inference")}}},
    }, namespace=namespace)

    def complete():
        job = batch.read_namespaced_job("child", namespace)
        return job if any(c.type == "Complete" and c.status == "True"
                          for c in job.status.conditions or []) else None

    job = wait_for(complete, 60, "Job child to complete")
    assert job.status.succeeded == 2
    pods = core.list_namespaced_pod(namespace, label_selector="job-name=child").items
    assert sorted(p.metadata.annotations["batch.kubernetes.io/job-completion-index"]
                  for p in pods) == ["0", "1"]

    core.delete_namespaced_config_map("owner", namespace)

    def gone():
        jobs = batch.list_namespaced_job(namespace).items
        left = core.list_namespaced_pod(namespace, label_selector="job-name=child").items
        return not jobs and not left

    wait_for(gone, 60, "the garbage collector to delete the Job and its pods")


def test_rbac_denies_a_serviceaccount_without_a_role(cluster, namespace):
    who = f"--as=system:serviceaccount:{namespace}:default"
    res = cluster.kubectl("get", "pods", "-n", namespace, who, check=False)
    assert res.returncode != 0 and "forbidden" in res.stderr.lower()
    cluster.kubectl("create", "role", "reader", "-n", namespace, "--verb=list",
                    "--resource=pods")
    cluster.kubectl("create", "rolebinding", "reader", "-n", namespace, "--role=reader",
                    f"--serviceaccount={namespace}:default")
    wait_for(lambda: cluster.kubectl("get", "pods", "-n", namespace, who,
                                     check=False).returncode == 0, 10, "the binding to apply")


def test_pod_security_admission_enforces_restricted(cluster):
    ns = cluster.create_namespace(labels={"pod-security.kubernetes.io/enforce": "restricted"})
    try:
        res = cluster.kubectl("apply", "-n", ns, "-f", "-", check=False,
                              input=__import__("json").dumps(_pod("root")))
        assert res.returncode != 0 and "violates PodSecurity" in res.stderr
        hardened = _pod("hardened")
        hardened["spec"]["securityContext"] = {"runAsNonRoot": True, "runAsUser": 1000,
                                               "seccompProfile": {"type": "RuntimeDefault"}}
        hardened["spec"]["containers"][0]["securityContext"] = {
            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
        hardened["spec"]["automountServiceAccountToken"] = False
        cluster.apply(hardened, namespace=ns)
    finally:
        cluster.kubectl("delete", "namespace", ns, "--wait=false")


def test_pytorchjob_succeeds_through_the_training_operator(cluster, namespace):
    name = f"ptj-{uuid.uuid4().hex[:6]}"
    replica = {"replicas": 1, "restartPolicy": "OnFailure", "template": {"spec": {
        "containers": [{"name": "pytorch", "image": "registry.invalid/train:test",
                        "command": ["python", "-m", "selfreward.trainer", "dpo"],
                        "resources": {"limits": {GPU_RESOURCE: "8"}}}],
        **gpu_placement("gpu-training")}}}
    cluster.apply({"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
                   "metadata": {"name": name},
                   "spec": {"pytorchReplicaSpecs": {"Master": replica, "Worker": replica}}},
                  namespace=namespace)
    custom = cluster.custom_objects()

    def condition(kind: str):
        obj = custom.get_namespaced_custom_object("kubeflow.org", "v1", namespace,
                                                  "pytorchjobs", name)
        conds = {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}
        return obj if conds.get(kind) == "True" else None

    wait_for(lambda: condition("Succeeded") or condition("Failed"), 120,
             f"PyTorchJob {name} to finish")
    assert condition("Succeeded"), "PyTorchJob finished but did not succeed"

    pods = cluster.core().list_namespaced_pod(
        namespace, label_selector=f"training.kubeflow.org/job-name={name}").items
    roles = sorted(p.metadata.labels["training.kubeflow.org/replica-type"] for p in pods)
    assert roles == ["master", "worker"]
    nodes = {p.spec.node_name for p in pods}
    assert len(nodes) == 2, "8 GPUs each: master and worker need separate nodes"
    assert all(n.startswith("kwok-gpu-training-") for n in nodes)
    env = {e.name: e.value for e in pods[0].spec.containers[0].env or []}
    assert env.get("WORLD_SIZE") == "2" and "MASTER_ADDR" in env
