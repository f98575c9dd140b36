"""One state machine, two executors (DESIGN principle 2): the same run.yaml, run on this machine by
`selfreward run`'s executor and on the testbed by the operator, takes the same steps - the same
stages, attempts, shard counts, fingerprints and outputs - and records the same metrics.

Neither side runs a model here: locally a stand-in stage program prints what the real one would,
on the cluster the player ends the pods the same way; both fail the first judge attempt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from selfreward.operator import spec as specs
from selfreward.operator.local import LocalExecutor, View
from tests.fixtures.operator import RUN, Play, Player, WorkerPod, cluster_run, succeed, wait_for_phase

pytestmark = pytest.mark.kube
REPO = Path(__file__).resolve().parents[2]

STAND_IN = f"""#!{sys.executable}
# Stands in for `python -m selfreward.trainer <stages> --config <json>`: prints each stage's
# summary as the real program would; the first judge attempt fails (exit 1, retryable).
import json, sys
sys.path.insert(0, {str(REPO)!r})
from tests.fixtures.operator import METRICS
configs = json.loads(sys.argv[sys.argv.index("--config") + 1])
for config in configs if isinstance(configs, list) else [configs]:
    base = {{"stage": config["stage"], "iteration": config["iteration"], "attempt": config["attempt"]}}
    if config["stage"] == "judge" and config["attempt"] == 1:
        print(json.dumps({{**base, "ok": False, "permanent": False, "reason": "EngineError", "error": "engine died"}}))
        sys.exit(1)
    shards = range(config["shardCount"])
    metrics = {{k: v * len(shards) for k, v in METRICS[config["stage"]].items()}}
    print(json.dumps({{**base, "ok": True, "shards": [{{"index": i, "skipped": False}} for i in shards],
                      "metrics": metrics, "outputs": config["outputs"]}}), flush=True)
"""


def first_judge_fails(pod: WorkerPod) -> Play:
    if "judge" in pod.stages and pod.configs[-1]["attempt"] == 1:
        return Play(1, [pod.summary("generate"), pod.failure("judge", "EngineError", "engine died", False)])
    return succeed(pod)


def steps_taken(status: dict) -> dict:
    keep = ("state", "attempt", "shardCount", "fingerprint", "outputs", "metrics")
    return {(entry["iteration"], item["name"]): {k: item.get(k) for k in keep}
            for entry in status["iterations"] for item in entry["stages"]}


def test_the_local_executor_and_the_operator_take_the_same_steps(srr_crd, namespace, operator, tmp_path):
    run = cluster_run(spec__iterations=2)
    stand_in = tmp_path / "stage-program"
    stand_in.write_text(STAND_IN)
    os.chmod(stand_in, 0o755)
    document = specs.RunDocument(RUN, namespace, specs.validate({**run, "metadata": {"name": RUN}})["spec"], tmp_path / "run.yaml")
    local = LocalExecutor(document, tmp_path / "state", View(), python=str(stand_in)).execute()
    assert local["phase"] == "Succeeded"

    operator.start([namespace])
    with Player(srr_crd, [namespace], first_judge_fails) as player:
        srr_crd.apply(run, namespace=namespace)
        on_cluster = wait_for_phase(srr_crd, namespace, RUN, "Succeeded")
        player.check()

    assert steps_taken(local) == steps_taken(on_cluster["status"])
    assert steps_taken(local)[(2, "judge")]["attempt"] == 2
