"""Pure builders: the steps the planner chose -> the child Job or PyTorchJob that runs them.

Inference steps (one stage, or a chain of stages that load the same model and have the same
shard count) are Indexed `batch/v1` Jobs: one pod per shard, the shard taken from
JOB_COMPLETION_INDEX. Training steps are `kubeflow.org/v1` PyTorchJobs: a Master and
`replicas - 1` Workers, each starting `processesPerReplica` processes through torchrun with the
rendezvous the training operator gives it (the trl/accelerate launchers ignore it and would
silently train with world size 1).

Every pod runs the stage program with its config in its arguments, holds no service-account
token, runs as a non-root user with nothing it could escalate to, and gets storage credentials
only as references to the Secret the run names. Nothing here calls the API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from selfreward.operator import launch, layout
from selfreward.operator import plan as planner
from selfreward.operator.spec import GROUP, KIND, VERSION
from selfreward.operator.stageconfig import stage_config

RUN_LABEL = "selfreward.io/run"
ITERATION_LABEL = "selfreward.io/iteration"
STAGE_LABEL = "selfreward.io/stage"
ATTEMPT_LABEL = "selfreward.io/attempt"
STAGES_ANNOTATION = "selfreward.io/stages"  # every stage a chained child runs, in order
FINGERPRINTS_ANNOTATION = "selfreward.io/fingerprints"  # {stage: fingerprint} of the steps it runs
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

JOB_CONTAINER = "worker"
TRAINING_CONTAINER = "pytorch"  # the training operator looks for this container name
RENDEZVOUS_PORT = 23456
EXIT_PERMANENT = 2  # the stage programs' exit code for invalid config or data
WORKER_UID = 1000
SCRATCH = "/scratch"


# Placement fields an operator-wide default may fill in where a run names nothing.
DEFAULTABLE = ("image", "resources", "nodeSelector", "tolerations", "affinity", "priorityClassName", "queueName")


@dataclass(frozen=True)
class Defaults:
    """What the operator applies where a run's placement names nothing (the chart's values):
    worker images, and per stage kind ("inference", "training") any of DEFAULTABLE."""

    inference_image: str = "selfreward-inference:0.1.0"
    training_image: str = "selfreward-training:0.1.0"
    placement: dict[str, dict[str, Any]] = field(default_factory=dict)

    def image(self, kind: str) -> str:
        return self.inference_image if kind == "inference" else self.training_image


def placement_for(run: RunRef, kind: str, defaults: Defaults) -> dict[str, Any]:
    """The run's placement of a stage kind, with the operator's defaults where it names nothing."""
    placement = dict(run.spec["placement"][kind])
    for key, value in defaults.placement.get(kind, {}).items():
        if key in DEFAULTABLE and not placement.get(key):
            placement[key] = value
    placement.setdefault("image", "")
    placement["image"] = placement["image"] or defaults.image(kind)
    return placement


@dataclass(frozen=True)
class RunRef:
    """The run a child belongs to: what owner references, labels and configs name."""

    name: str
    namespace: str
    uid: str
    spec: dict[str, Any]


def child_name(run: RunRef, chain: list[planner.Step]) -> str:
    first = chain[0]
    return layout.child_name(run.name, first.iteration, first.stage, first.attempt)


def build(run: RunRef, root: str, chain: list[planner.Step], defaults: Defaults) -> dict[str, Any]:
    """The child that runs `chain` (steps of one kind; inference steps with one shard count)."""
    if chain[0].kind == "training":
        if len(chain) != 1:
            raise ValueError("a training child runs exactly one step")
        return _pytorchjob(run, root, chain[0], defaults)
    if len({step.shard_count for step in chain}) != 1 or any(step.kind != "inference" for step in chain):
        raise ValueError(f"cannot run {[s.stage for s in chain]} in one Job: mixed kinds or shard counts")
    return _job(run, root, chain, defaults)


def labels(run: RunRef, step: planner.Step) -> dict[str, str]:
    return {RUN_LABEL: run.name, ITERATION_LABEL: str(step.iteration), STAGE_LABEL: step.stage,
            ATTEMPT_LABEL: str(step.attempt)}


def _metadata(run: RunRef, chain: list[planner.Step], placement: dict[str, Any]) -> dict[str, Any]:
    child_labels = labels(run, chain[0])
    if placement.get("queueName"):
        child_labels[QUEUE_LABEL] = placement["queueName"]
    return {
        "name": child_name(run, chain),
        "namespace": run.namespace,
        "labels": child_labels,
        "annotations": {STAGES_ANNOTATION: ",".join(step.stage for step in chain),
                        FINGERPRINTS_ANNOTATION: json.dumps({step.stage: step.fingerprint for step in chain}, sort_keys=True)},
        "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": run.name, "uid": run.uid,
                             "controller": True}],
    }


def _stage_command(run: RunRef, root: str, chain: list[planner.Step]) -> list[str]:
    configs = [stage_config(run, root, step, run.uid) for step in chain]
    config = json.dumps(configs if len(configs) > 1 else configs[0], separators=(",", ":"), sort_keys=True)
    return ["-m", "selfreward.trainer", ",".join(step.stage for step in chain), "--config", config]


def _env(spec: dict[str, Any]) -> list[dict[str, Any]]:
    env = [
        {"name": "HOME", "value": SCRATCH},
        {"name": "TMPDIR", "value": "/tmp"},
        {"name": "SELFREWARD_CACHE", "value": f"{SCRATCH}/cache"},
        {"name": "HF_HOME", "value": f"{SCRATCH}/huggingface"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
    ]
    secret = spec["storage"].get("credentialsSecret")
    if secret:
        env += [{"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}
                for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
    return env


def _pod_template(run: RunRef, step: planner.Step, placement: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    container = {
        **container,
        "imagePullPolicy": placement["imagePullPolicy"],
        "env": _env(run.spec),
        "resources": placement.get("resources", {}),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
        },
        "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH}, {"name": "tmp", "mountPath": "/tmp"},
                         {"name": "shm", "mountPath": "/dev/shm"}],
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": WORKER_UID, "runAsGroup": WORKER_UID,
                            "fsGroup": WORKER_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        # Model downloads and caches; shared memory for the engines' and NCCL's inter-process traffic.
        "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}},
                    {"name": "shm", "emptyDir": {"medium": "Memory"}}],
    }
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        if placement.get(key):
            pod_spec[key] = placement[key]
    return {"metadata": {"labels": labels(run, step)}, "spec": pod_spec}


def _job(run: RunRef, root: str, chain: list[planner.Step], defaults: Defaults) -> dict[str, Any]:
    placement = placement_for(run, "inference", defaults)
    shards = chain[0].shard_count
    container = {"name": JOB_CONTAINER, "image": placement["image"],
                 "command": ["python"], "args": _stage_command(run, root, chain)}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(run, chain, placement),
        "spec": {
            "completionMode": "Indexed",
            "completions": shards,
            "parallelism": shards,
            # A failing shard fails alone: its siblings finish and commit, and the next attempt
            # finds them committed. Retries are the operator's (new attempts, with backoff).
            "backoffLimitPerIndex": 0,
            "podReplacementPolicy": "Failed",
            "podFailurePolicy": {"rules": [
                # Eviction, preemption, a node drain: not the stage's fault; the pod is replaced.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {"action": "FailJob", "onExitCodes": {"containerName": JOB_CONTAINER, "operator": "In",
                                                      "values": [EXIT_PERMANENT]}},
            ]},
            "suspend": bool(run.spec["suspend"]),
            "template": _pod_template(run, chain[0], placement, container),
        },
    }


def _pytorchjob(run: RunRef, root: str, step: planner.Step, defaults: Defaults) -> dict[str, Any]:
    placement = placement_for(run, "training", defaults)
    nodes, processes = placement["replicas"], placement["processesPerReplica"]
    command = launch.training_command(launch.KUBEFLOW_LAUNCHER, nodes, processes, launch.KUBEFLOW_RENDEZVOUS,
                                      _stage_command(run, root, [step]))
    container = {"name": TRAINING_CONTAINER, "image": placement["image"],
                 "command": command[:1], "args": command[1:],
                 "ports": [{"name": "pytorchjob-port", "containerPort": RENDEZVOUS_PORT}]}
    template = _pod_template(run, step, placement, container)
    replica_specs = {"Master": {"replicas": 1, "restartPolicy": "Never", "template": template}}
    if nodes > 1:
        replica_specs["Worker"] = {"replicas": nodes - 1, "restartPolicy": "Never", "template": template}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": _metadata(run, [step], placement),
        "spec": {
            # Pods still running when the job ends are removed; finished ones are kept: their
            # termination messages are the results. No backoffLimit: with restartPolicy Never a
            # failed pod fails the job, and a job past its backoffLimit loses all its pods.
            "runPolicy": {"cleanPodPolicy": "Running", "suspend": bool(run.spec["suspend"])},
            "nprocPerNode": str(processes),
            "pytorchReplicaSpecs": replica_specs,
        },
    }


def steps_of(child: dict[str, Any]) -> list[planner.Step]:
    """The steps an existing child runs, read back from it (its configs and annotations): what a
    restarted operator records when it finds the child it was about to create already there,
    even if the spec changed in between."""
    spec = child["spec"]
    template = spec["template"] if child["kind"] == "Job" else spec["pytorchReplicaSpecs"]["Master"]["template"]
    args = template["spec"]["containers"][0]["args"]
    raw = json.loads(args[args.index("--config") + 1])
    fingerprints = json.loads(child["metadata"].get("annotations", {}).get(FINGERPRINTS_ANNOTATION, "{}"))
    return [
        planner.Step(iteration=config["iteration"], stage=config["stage"], attempt=config["attempt"], model=config["inputs"]["model"],
                     inputs=config["inputs"], outputs=config["outputs"], shard_count=config["shardCount"],
                     sections=config["spec"], input_shards=config["inputShards"], fingerprint=fingerprints.get(config["stage"], ""))
        for config in (raw if isinstance(raw, list) else [raw])
    ]
