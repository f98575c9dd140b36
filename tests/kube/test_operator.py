"""The operator on the real control plane: a SelfRewardRun applied with kubectl becomes Indexed Jobs
and PyTorchJobs on the node pools its placement names, run by the real Job controller, scheduler
and training operator, to Succeeded; its status and Events tell the story.

Worker pods are played (tests/fixtures/operator.py): each ends with the exit code and summary
lines its stage program would have written.
"""

from __future__ import annotations

import json

import pytest

from tests.fixtures.cluster import GPU_RESOURCE, POOL_LABEL, wait_for
from tests.fixtures.operator import RUN, OperatorProcess, Player, children, cluster_run, pods, run_events, stage, wait_for_phase

pytestmark = pytest.mark.kube


@pytest.fixture(scope="module")
def paper(srr_crd, tmp_path_factory):
    """The paper's run (M1 by SFT, M2 and M3 by DPO, each evaluated), driven to Succeeded:
    (its namespace, the run as it ended)."""
    namespace = srr_crd.create_namespace()
    operator = OperatorProcess(srr_crd, tmp_path_factory.mktemp("operator")).start([namespace])
    try:
        with Player(srr_crd, [namespace]) as player:
            srr_crd.apply(cluster_run(spec__iterations=3), namespace=namespace)
            run = wait_for_phase(srr_crd, namespace, RUN, "Succeeded", timeout=240)
            player.check()
        yield namespace, run
    finally:
        operator.stop()
        srr_crd.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_a_three_iteration_run_creates_one_child_per_step_of_the_paper(srr_crd, paper):
    namespace, run = paper
    assert sorted(children(srr_crd, namespace)) == sorted([
        "paper-i01-sft-a1", "paper-i01-evaluate-a1",  # evaluating M1 and writing prompts with it: one model load
        "paper-i02-generate-a1", "paper-i02-dpo-a1", "paper-i02-evaluate-a1",
        "paper-i03-generate-a1", "paper-i03-dpo-a1", "paper-i03-evaluate-a1",
    ])
    kinds = {name: child["kind"] for name, child in children(srr_crd, namespace).items()}
    assert {name for name, kind in kinds.items() if kind == "PyTorchJob"} == {
        "paper-i01-sft-a1", "paper-i02-dpo-a1", "paper-i03-dpo-a1"}


def test_children_land_on_the_pools_their_placement_names(srr_crd, paper):
    namespace, run = paper
    nodes = {node["metadata"]["name"]: node["metadata"]["labels"][POOL_LABEL]
             for node in json.loads(srr_crd.kubectl("get", "nodes", "-o", "json").stdout)["items"]}
    placed = {(pod["metadata"]["labels"]["selfreward.io/stage"], nodes[pod["spec"]["nodeName"]])
              for pod in pods(srr_crd, namespace)}
    assert placed == {("sft", "gpu-training"), ("dpo", "gpu-training"), ("evaluate", "gpu-inference"),
                      ("generate", "gpu-inference")}


def test_sharded_stages_run_one_pod_per_shard_and_training_one_pod_per_node(srr_crd, paper):
    namespace, run = paper
    by_child: dict[str, list[dict]] = {}
    for pod in pods(srr_crd, namespace):
        child = pod["metadata"]["labels"].get("batch.kubernetes.io/job-name") or pod["metadata"]["labels"]["training.kubeflow.org/job-name"]
        by_child.setdefault(child, []).append(pod)
    assert sorted(p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
                  for p in by_child["paper-i02-generate-a1"]) == ["0", "1"]
    replicas = children(srr_crd, namespace)["paper-i02-dpo-a1"]["spec"]["pytorchReplicaSpecs"]
    assert (replicas["Master"]["replicas"], replicas["Worker"]["replicas"]) == (1, 1)
    training = by_child["paper-i02-dpo-a1"]  # the Master; a Worker still running when it ended is removed
    assert "master" in [p["metadata"]["labels"]["training.kubeflow.org/replica-type"] for p in training]
    for pod in training:  # torchrun gets the rendezvous the training operator injects
        container = pod["spec"]["containers"][0]
        env = {e["name"] for e in container["env"]}
        assert {"PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"} <= env
        assert container["command"] == ["torchrun"] and container["args"][:4] == ["--nnodes", "2", "--nproc-per-node", "8"]
        assert container["resources"]["limits"][GPU_RESOURCE] == "8"


def test_the_status_holds_every_stage_metric_and_model(srr_crd, paper):
    namespace, run = paper
    status = run["status"]
    assert status["phase"] == "Succeeded" and status["observedGeneration"] == run["metadata"]["generation"]
    root = f"s3://selfreward-artifacts/runs/{namespace}/{RUN}"
    assert [entry.get("model") for entry in status["iterations"]] == [f"{root}/iter-0{t}/model" for t in (1, 2, 3)]
    for iteration, names in ((1, ("sft", "evaluate")), (2, ("instruct", "generate", "judge", "dpo", "evaluate")),
                             (3, ("instruct", "generate", "judge", "dpo", "evaluate"))):
        for name in names:
            item = stage(status, iteration, name)
            assert item["state"] == "Succeeded" and item["metrics"], (iteration, name, item)
    judge = stage(status, 2, "judge")
    assert judge["shardsDone"] == [0, 1]
    assert judge["metrics"]["pairs"] == 12 and judge["metrics"]["meanChosenScore"] == 4.0  # both shards added up
    assert stage(status, 3, "judge")["outputs"]["pairs"] == f"{root}/iter-03/pairs"
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {"Ready": "True", "Progressing": "False", "Reconciling": "False", "Failed": "False", "Stalled": "False"}


def test_kubectl_get_shows_the_run_columns(srr_crd, paper):
    namespace, run = paper
    table = srr_crd.kubectl("get", "srr", RUN, "-n", namespace).stdout.splitlines()
    assert table[0].split() == ["NAME", "ITERATION", "STAGE", "PHASE", "AGE"]
    assert table[1].split()[:3] == [RUN, "3", "Succeeded"]


def test_every_stage_start_and_success_is_an_event(srr_crd, paper):
    namespace, run = paper
    reasons = [(e["reason"], e["message"]) for e in run_events(srr_crd, namespace)]
    started = [m for r, m in reasons if r == "StageStarted"]
    succeeded = [m for r, m in reasons if r == "StageSucceeded"]
    assert len(started) == len(succeeded) == 14  # sft, evaluate, then 6 stages in each of 2 iterations
    assert "iteration 2 judge (attempt 1) started: paper-i02-generate-a1" in started
    assert ("RunSucceeded", "every iteration up to 3 finished") in reasons


def test_deleting_a_run_deletes_its_children(srr_crd, namespace, operator):
    operator.start([namespace])
    with Player(srr_crd, [namespace]):
        srr_crd.apply(cluster_run(spec__iterations=1), namespace=namespace)
        wait_for_phase(srr_crd, namespace, RUN, "Succeeded")
    assert children(srr_crd, namespace)
    srr_crd.kubectl("delete", "srr", RUN, "-n", namespace)
    wait_for(lambda: not children(srr_crd, namespace), 60, "the garbage collector to delete the children")


def test_the_operator_serves_its_liveness_endpoint(srr_crd, namespace, operator):
    import urllib.request

    operator.start([namespace])

    def healthy():
        with urllib.request.urlopen(operator.liveness, timeout=2) as response:  # noqa: S310 - loopback
            return response.status == 200

    wait_for(healthy, 60, "the liveness endpoint to answer 200")


def test_without_namespaces_the_operator_watches_every_namespace(srr_crd, namespace, operator):
    operator.start([])
    with Player(srr_crd, [namespace]):
        srr_crd.apply(cluster_run(spec__iterations=1), namespace=namespace)
        wait_for_phase(srr_crd, namespace, RUN, "Succeeded")


def test_placement_defaults_fill_in_what_a_run_names_not_and_metrics_count_the_work(srr_crd, namespace, operator, tmp_path):
    import urllib.request

    from testbed.proc import free_port
    from tests.fixtures.cluster import gpu_placement

    defaults = tmp_path / "placement.yaml"
    defaults.write_text(json.dumps({"training": gpu_placement("gpu-training"), "inference": gpu_placement("gpu-inference")}))
    port = free_port()
    operator.start([namespace], "--placement-defaults", str(defaults), "--metrics-port", str(port))
    run = cluster_run(spec__iterations=1)
    run["spec"]["placement"] = {"training": {"nodeSelector": {POOL_LABEL: "cpu"}}}  # the run's own choice wins
    with Player(srr_crd, [namespace]):
        srr_crd.apply(run, namespace=namespace)
        wait_for_phase(srr_crd, namespace, RUN, "Succeeded")
    made = children(srr_crd, namespace)
    training = made["paper-i01-sft-a1"]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]
    inference = made["paper-i01-evaluate-a1"]["spec"]["template"]["spec"]
    assert training["nodeSelector"] == {POOL_LABEL: "cpu"} and training["tolerations"] == gpu_placement("gpu-training")["tolerations"]
    assert inference["nodeSelector"] == {POOL_LABEL: "gpu-inference"}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:  # noqa: S310 - loopback
        text = response.read().decode()
    assert 'selfreward_children_created_total{kind="PyTorchJob"} 1.0' in text
    assert 'selfreward_runs{phase="Succeeded"} 1.0' in text
