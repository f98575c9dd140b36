"""A whole run through the operator on the testbed's real node: examples/quickstart-cluster.yaml,
unchanged, applied with kubectl, its stages in pods of the project's own CPU image (vLLM on CPU,
TRL), its artifacts in S3 under the example's own endpoint name (the node's DNS answers it with
the relay's address), from SFT to M3.

The namespace is made ready by testbed/quickstart.py, exactly as `make testbed` readies the
namespace default for a user: the example's bucket seeded with the model and seed files, the
credentials Secret, and an operator process with the placement defaults a platform team would
give it (the node's selector, toleration and image).

One run serves both tests, in order: while it goes, a running inference pod of iteration 2 is
deleted (the stage must be retried and complete without a second copy of anything); then the
run must finish with M1..M3.
"""
from __future__ import annotations

import json
from typing import Iterator

import pytest

from testbed import quickstart as testbed_quickstart
from tests.fixtures.cluster import RESTRICTED, wait_for
from tests.fixtures.node import CPU_IMAGE
from tests.fixtures.operator import children, get_run, pods, stage
from tests.fixtures.s3 import s3_client

pytestmark = pytest.mark.e2e

RUN = "quickstart"
BUCKET = testbed_quickstart.BUCKET


class QuickstartOnTheNode:
    def __init__(self, cluster, real_node, namespace: str, operator: testbed_quickstart.QuickstartOperator):
        self.cluster, self.real_node = cluster, real_node
        self.namespace, self.operator = namespace, operator

    def run(self) -> dict:
        return get_run(self.cluster, self.namespace, RUN)

    def finished(self) -> dict | None:
        run = self.run()
        return run if run.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

    def keys(self, prefix: str) -> list[str]:
        pages = s3_client(self.real_node.s3).get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=f"runs/{self.namespace}/{RUN}/{prefix}")
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture(scope="module")
def quickstart(cluster, srr_crd, real_node, tiny_model) -> Iterator[QuickstartOnTheNode]:
    """The example applied as it is in a Pod Security restricted namespace readied by
    testbed/quickstart.py."""
    namespace = cluster.create_namespace(labels=RESTRICTED)
    operator = testbed_quickstart.prepare(cluster.testbed, real_node.s3, namespace, tiny_model, die_with_parent=True)
    cluster.kubectl("apply", "-n", namespace, "-f", str(testbed_quickstart.EXAMPLE))
    try:
        yield QuickstartOnTheNode(cluster, real_node, namespace, operator)
    finally:
        operator.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def running_generate_pod(quickstart: QuickstartOnTheNode, iteration: int) -> dict | None:
    """A pod of iteration `iteration`'s generate (+ judge) Job whose program has started."""
    for pod in pods(quickstart.cluster, quickstart.namespace, RUN):
        labels = pod["metadata"]["labels"]
        statuses = pod["status"].get("containerStatuses") or [{}]
        if (labels.get("selfreward.io/stage") == "generate" and labels.get("selfreward.io/iteration") == str(iteration)
                and "running" in statuses[0].get("state", {})):
            return pod
    if quickstart.finished():
        raise AssertionError(f"the run ended before iteration {iteration}'s generate ran")
    return None


def test_an_inference_pod_deleted_mid_stage_is_retried_and_nothing_is_written_twice(quickstart):
    victim = wait_for(lambda: running_generate_pod(quickstart, 2), 1500, "a running generate pod of iteration 2", interval=1)
    quickstart.cluster.kubectl("delete", "pod", "-n", quickstart.namespace, victim["metadata"]["name"], "--wait=false")
    killed_shard = int(victim["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])

    def generate_done():
        status = quickstart.run().get("status", {})
        done = [s for e in status.get("iterations", []) if e["iteration"] == 2 for s in e["stages"]
                if s["name"] in ("generate", "judge") and s["state"] == "Succeeded"]
        return status if len(done) == 2 or status.get("phase") == "Failed" else None

    status = wait_for(generate_done, 1500, "iteration 2's generate and judge to succeed", interval=2)
    generate = stage(status, 2, "generate")
    assert generate["state"] == "Succeeded", json.dumps(status, indent=1)[-4000:]
    # The deleted pod failed its shard and so its attempt; the next attempt redid that shard only.
    assert generate["attempt"] == 2 and generate["children"] == [f"{RUN}-i02-generate-a2"]
    assert generate["skippedShards"] == [1 - killed_shard]

    # Each shard committed exactly once: one manifest per shard, no second copy under another name.
    for artifact in ("candidates", "judgements"):
        manifests = [k for k in quickstart.keys(f"iter-02/{artifact}/") if k.endswith("_manifest.json")]
        shards = [k.split("/")[-2] for k in manifests if k.split("/")[-2].startswith("shard-")]
        assert sorted(shards) == ["shard-00000-of-00002", "shard-00001-of-00002"], manifests
        assert len(manifests) == len(set(manifests))


def test_the_quickstart_trains_m1_to_m3_in_real_pods(quickstart):
    run = wait_for(quickstart.finished, 2400, "the run to finish", interval=5)
    status = run["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[-6000:] + quickstart.operator.log()[-4000:]

    root = f"s3://{BUCKET}/runs/{quickstart.namespace}/{RUN}"
    assert [entry["model"] for entry in status["iterations"]] == [f"{root}/iter-{i:02d}/model" for i in (1, 2, 3)]
    assert stage(status, 1, "sft")["metrics"]["examples"] > 0
    for iteration in (2, 3):
        assert stage(status, iteration, "judge")["metrics"]["pairs"] > 0
        assert stage(status, iteration, "dpo")["metrics"]["pairs"] > 0

    # Every stage ran in a pod on the real node, of the project's image.
    ran = pods(quickstart.cluster, quickstart.namespace, RUN)
    assert ran and {p["spec"]["nodeName"] for p in ran} == {quickstart.real_node.name}
    assert {c["image"] for p in ran for c in p["spec"]["containers"]} == {CPU_IMAGE}
    assert {child["kind"] for child in children(quickstart.cluster, quickstart.namespace, RUN).values()} == {"Job", "PyTorchJob"}

    # What status says was made is in the bucket, each model committed with its manifest.
    for i in (1, 2, 3):
        model = quickstart.keys(f"iter-{i:02d}/model/")
        assert f"runs/{quickstart.namespace}/{RUN}/iter-{i:02d}/model/_manifest.json" in model
        assert any(k.endswith(".safetensors") for k in model)
