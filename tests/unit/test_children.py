"""Spec of the child builders: the steps the planner chose -> the Job or PyTorchJob that runs them."""

import json

import pytest

from selfreward.operator import layout
from selfreward.operator import plan as planner
from selfreward.operator import children
from selfreward.operator.children import Defaults, RunRef, build
from tests.builders import NAMESPACE, ROOT, RUN_NAME, defaulted_spec

UID = "5f0c7a52-3b1e-4d8e-9a43-1c2d3e4f5a6b"
DEFAULTS = Defaults(inference_image="registry.example/inference:1.2.3", training_image="registry.example/training:4.5.6")
SECRET = "artifact-store-credentials"


def run_ref(*fields, **overrides):
    """A run with the given spec changes (paths relative to spec, as defaulted_spec takes them)."""
    return RunRef(RUN_NAME, NAMESPACE, UID, defaulted_spec(*fields, **overrides))


def steps(run, *stages, iteration=2, attempt=1):
    return [planner.step_for(run.spec, ROOT, iteration, stage, attempt) for stage in stages]


def job(*fields, stages=("generate",), iteration=2, attempt=1, **overrides):
    run = run_ref(*fields, **overrides)
    return build(run, ROOT, steps(run, *stages, iteration=iteration, attempt=attempt), DEFAULTS)


def pytorchjob(*fields, stage="sft", iteration=1, attempt=1, **overrides):
    run = run_ref(*fields, **overrides)
    return build(run, ROOT, steps(run, stage, iteration=iteration, attempt=attempt), DEFAULTS)


def templates(child):
    """Every pod template of a child: the Job's one, or the PyTorchJob's per replica type."""
    if child["kind"] == "Job":
        return [child["spec"]["template"]]
    return [replica["template"] for replica in child["spec"]["pytorchReplicaSpecs"].values()]


def pod_spec(child):
    return templates(child)[0]["spec"]


def container(child):
    (only,) = pod_spec(child)["containers"]
    return only


def env(child):
    return {item["name"]: item for item in container(child)["env"]}


def config_arg(child):
    args = container(child)["args"]
    return json.loads(args[args.index("--config") + 1])


# Each kind of child, built from a placement section of its own: (kind, placement section, builder).
KINDS = [
    pytest.param("Job", "inference", job, id="job"),
    pytest.param("PyTorchJob", "training", pytorchjob, id="pytorchjob"),
]


# --- inference steps: Indexed Jobs -------------------------------------------------------------


@pytest.mark.parametrize("replicas", [1, 3, 8])
def test_an_inference_step_is_an_indexed_job_with_one_pod_per_shard(replicas):
    child = job(("placement.inference.replicas", replicas))

    assert (child["apiVersion"], child["kind"]) == ("batch/v1", "Job")
    assert child["spec"]["completionMode"] == "Indexed"
    assert child["spec"]["completions"] == replicas
    assert child["spec"]["parallelism"] == replicas


@pytest.mark.parametrize("stage", ["instruct", "evaluate"])
def test_an_unsharded_inference_stage_runs_in_one_pod_whatever_the_replicas(stage):
    child = job(("placement.inference.replicas", 4), stages=(stage,))

    assert (child["spec"]["completions"], child["spec"]["parallelism"]) == (1, 1)


def test_a_failing_shard_fails_alone_and_retries_are_left_to_the_operator():
    spec = job()["spec"]

    assert spec["backoffLimitPerIndex"] == 0
    assert spec["podReplacementPolicy"] == "Failed"
    assert "backoffLimit" not in spec


def test_disruptions_are_ignored_and_exit_code_2_fails_the_job_at_once():
    rules = job()["spec"]["podFailurePolicy"]["rules"]

    assert rules == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": "worker", "operator": "In", "values": [2]}},
    ]


def test_the_exit_code_rule_names_the_jobs_only_container():
    child = job()

    assert child["spec"]["podFailurePolicy"]["rules"][1]["onExitCodes"]["containerName"] == container(child)["name"]


@pytest.mark.parametrize("suspend", [True, False])
def test_a_job_is_suspended_exactly_when_the_run_is(suspend):
    assert job(suspend=suspend)["spec"]["suspend"] is suspend


def test_a_job_runs_the_stage_program_with_python():
    child = job()

    assert container(child)["name"] == "worker"
    assert container(child)["command"] == ["python"]
    assert container(child)["args"][:3] == ["-m", "selfreward.trainer", "generate"]


def test_a_single_step_gets_one_config_object():
    config = config_arg(job(("placement.inference.replicas", 4), attempt=3))

    assert isinstance(config, dict)
    assert (config["stage"], config["iteration"], config["attempt"], config["shardCount"]) == ("generate", 2, 3, 4)
    assert (config["run"], config["namespace"], config["runUid"]) == (RUN_NAME, NAMESPACE, UID)
    assert config["outputs"] == {"candidates": f"{ROOT}/iter-02/candidates"}


def test_a_chain_runs_every_stage_in_one_program_with_a_list_of_configs():
    child = job(("placement.inference.replicas", 2), stages=("generate", "judge"))

    args = container(child)["args"]
    assert args[:3] == ["-m", "selfreward.trainer", "generate,judge"]
    configs = config_arg(child)
    assert isinstance(configs, list)
    assert [(c["stage"], c["shardCount"]) for c in configs] == [("generate", 2), ("judge", 2)]


def test_a_chain_is_named_after_its_first_step_and_lists_its_stages():
    run = run_ref()
    chain = [planner.step_for(run.spec, ROOT, 1, "evaluate", 1), planner.step_for(run.spec, ROOT, 2, "instruct", 1)]

    child = build(run, ROOT, chain, DEFAULTS)

    assert child["metadata"]["name"] == "demo-i01-evaluate-a1"
    assert child["metadata"]["annotations"]["selfreward.io/stages"] == "evaluate,instruct"


def test_the_config_is_compact_json_with_sorted_keys():
    args = container(job())["args"]
    text = args[args.index("--config") + 1]

    assert text == json.dumps(json.loads(text), separators=(",", ":"), sort_keys=True)


@pytest.mark.parametrize(
    ("mixed", "stages"),
    [
        pytest.param("shard counts", (("instruct", 2), ("generate", 2)), id="shard-counts"),
        pytest.param("two training steps", (("sft", 1), ("dpo", 2)), id="two-training"),
        pytest.param("training after inference", (("evaluate", 1), ("instruct", 2), ("dpo", 2)), id="inference-then-training"),
        pytest.param("inference after training", (("sft", 1), ("evaluate", 1)), id="training-then-inference"),
    ],
)
def test_a_chain_that_cannot_share_one_child_is_refused(mixed, stages):
    run = run_ref(("placement.inference.replicas", 2))
    chain = [planner.step_for(run.spec, ROOT, iteration, stage, 1) for stage, iteration in stages]

    with pytest.raises(ValueError):
        build(run, ROOT, chain, DEFAULTS)


# --- training steps: PyTorchJobs ---------------------------------------------------------------


@pytest.mark.parametrize(("stage", "iteration"), [pytest.param("sft", 1, id="sft"), pytest.param("dpo", 2, id="dpo")])
def test_a_training_step_is_a_pytorchjob(stage, iteration):
    child = pytorchjob(stage=stage, iteration=iteration)

    assert (child["apiVersion"], child["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert child["metadata"]["name"] == f"demo-i{iteration:02d}-{stage}-a1"


@pytest.mark.parametrize(
    ("replicas", "workers"),
    [pytest.param(1, None, id="one-node"), pytest.param(2, 1, id="two-nodes"), pytest.param(4, 3, id="four-nodes")],
)
def test_a_pytorchjob_has_one_master_and_replicas_minus_one_workers(replicas, workers):
    specs = pytorchjob(("placement.training.replicas", replicas))["spec"]["pytorchReplicaSpecs"]

    assert specs["Master"]["replicas"] == 1
    assert specs.get("Worker", {}).get("replicas") == workers
    assert {replica["restartPolicy"] for replica in specs.values()} == {"Never"}


def test_master_and_workers_run_the_same_pod():
    specs = pytorchjob(("placement.training.replicas", 3))["spec"]["pytorchReplicaSpecs"]

    assert specs["Master"]["template"] == specs["Worker"]["template"]


def test_training_starts_torchrun_in_the_container_the_training_operator_expects():
    child = pytorchjob()

    assert container(child)["name"] == "pytorch"
    assert container(child)["command"] == ["torchrun"]
    assert {"name": "pytorchjob-port", "containerPort": 23456} in container(child)["ports"]


def test_torchrun_gets_the_node_count_processes_and_the_rendezvous_of_the_training_operator():
    child = pytorchjob(("placement.training.replicas", 3), ("placement.training.processesPerReplica", 8))

    args = container(child)["args"]
    assert args[:4] == ["--nnodes", "3", "--nproc-per-node", "8"]
    for option, variable in (("--node-rank", "$(PET_NODE_RANK)"), ("--master-addr", "$(PET_MASTER_ADDR)"),
                             ("--master-port", "$(PET_MASTER_PORT)")):
        assert args[args.index(option) + 1] == variable
    assert child["spec"]["nprocPerNode"] == "8"


def test_torchrun_runs_the_stage_program_module_after_its_own_options():
    args = container(pytorchjob())["args"]

    program = args[args.index("-m"):]
    assert program[:4] == ["-m", "selfreward.trainer", "sft", "--config"]
    assert config_arg(pytorchjob())["stage"] == "sft"
    assert all(arg.startswith("--") or arg.startswith("$(") or arg.isdigit() for arg in args[: args.index("-m")])


def test_a_pytorchjob_keeps_finished_pods_and_has_no_backoff_limit():
    spec = pytorchjob()["spec"]

    assert spec["runPolicy"]["cleanPodPolicy"] == "Running"
    assert "backoffLimit" not in spec["runPolicy"]
    assert "backoffLimit" not in spec


@pytest.mark.parametrize("suspend", [True, False])
def test_a_pytorchjob_is_suspended_exactly_when_the_run_is(suspend):
    assert pytorchjob(suspend=suspend)["spec"]["runPolicy"]["suspend"] is suspend


def test_a_training_config_carries_the_processes_per_replica():
    assert config_arg(pytorchjob(("placement.training.processesPerReplica", 4)))["processes"] == 4


# --- every pod: security, scratch space, credentials ------------------------------------------


@pytest.mark.parametrize(("kind", "section", "make"), KINDS)
def test_pods_hold_no_service_account_token_and_no_service_links(kind, section, make):
    for template in templates(make()):
        assert template["spec"]["automountServiceAccountToken"] is False
        assert template["spec"]["enableServiceLinks"] is False
        assert template["spec"]["restartPolicy"] == "Never"


@pytest.mark.parametrize(("kind", "section", "make"), KINDS)
def test_pods_run_as_non_root_under_the_default_seccomp_profile(kind, section, make):
    security = pod_spec(make())["securityContext"]

    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == security["runAsGroup"] == security["fsGroup"] == 1000
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}


@pytest.mark.parametrize(("kind", "section", "make"), KINDS)
def test_the_stage_container_can_escalate_to_nothing(kind, section, make):
    security = container(make())["securityContext"]

    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["readOnlyRootFilesystem"] is True
    assert security["runAsNonRoot"] is True


@pytest.mark.parametrize(("kind", "section", "make"), KINDS)
def test_a_container_that_dies_leaves_its_log_tail_as_termination_message(kind, section, make):
    assert container(make())["terminationMessagePolicy"] == "FallbackToLogsOnError"


@pytest.mark.parametrize(("kind", "section", "make"), KINDS)
def test_pods_get_scratch_tmp_and_memory_backed_shm(kind, section, make):
    child = make()

    assert pod_spec(child)["volumes"] == [
        {"name": "scratch", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "shm", "emptyDir": {"medium": "Memory"}},
    ]
    mounts = {mount["name"]: mount["mountPath"] for mount in container(child)["volumeMounts"]}
    assert mounts == {"scratch": "/scratch", "tmp": "/tmp", "shm": "/dev/shm"}


@pytest.mark.parametrize(("kind", "section", "make"), KINDS)
def test_home_temp_and_caches_point_at_writable_volumes(kind, section, make):
    variables = env(make())

    assert variables["HOME"]["value"] == "/scratch"
    assert variables["TMPDIR"]["value"] == "/tmp"
    assert variables["SELFREWARD_CACHE"]["value"].startswith("/scratch/")
    assert variables["HF_HOME"]["value"].startswith("/scratch/")


@pytest.mark.parametrize(("kind", "section", "make"), KINDS)
def test_with_a_credentials_secret_pods_read_the_keys_by_reference(kind, section, make):
    variables = env(make(("storage.credentialsSecret", SECRET)))

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert variables[key] == {"name": key, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": key}}}


@pytest.mark.parametrize(("kind", "section", "make"), KINDS)
def test_without_a_credentials_secret_pods_get_no_aws_environment_at_all(kind, section, make):
    child = make()

    assert not [name for name in env(child) if name.startswith("AWS_")]
    assert "AWS_" not in json.dumps(child)
    assert "secretKeyRef" not in json.dumps(child)


@pytest.mark.parametrize(("kind", "section", "make"), KINDS)
def test_the_secret_is_named_only_in_its_key_references(kind, section, make):
    child = make(("storage.credentialsSecret", SECRET), ("storage.endpoint", "http://minio.example:9000"),
                 ("storage.region", "eu-west-1"))

    text = json.dumps(child)
    references = 2 * len(templates(child))  # two keys per pod template
    assert text.count(SECRET) == references
    assert text.count("secretKeyRef") == references
    for item in container(child)["env"]:
        if item["name"].startswith("AWS_"):
            assert "value" not in item


@pytest.mark.parametrize(("kind", "section", "make"), KINDS)
def test_the_stage_config_names_the_storage_endpoint_but_no_credentials(kind, section, make):
    child = make(("storage.credentialsSecret", SECRET), ("storage.endpoint", "http://minio.example:9000"),
                 ("storage.region", "eu-west-1"))

    configs = config_arg(child)
    assert configs["storage"] == {"endpoint": "http://minio.example:9000", "region": "eu-west-1", "addressingStyle": "auto"}
    assert SECRET not in json.dumps(configs)


# --- placement ---------------------------------------------------------------------------------


PLACEMENT = {
    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["zone-a"]}]}]}}},
    "priorityClassName": "batch-high",
}
RESOURCES = {"requests": {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 1}}


@pytest.mark.parametrize(("kind", "section", "make"), KINDS)
@pytest.mark.parametrize("field", sorted(PLACEMENT))
def test_pod_placement_is_copied_from_the_runs_placement(kind, section, make, field):
    child = make((f"placement.{section}.{field}", PLACEMENT[field]))

    for template in templates(child):
        assert template["spec"][field] == PLACEMENT[field]


@pytest.mark.parametrize(("kind", "section", "make"), KINDS)
def test_unset_placement_leaves_the_pod_spec_without_it(kind, section, make):
    assert not set(PLACEMENT) & set(pod_spec(make()))


@pytest.mark.parametrize(("kind", "section", "make"), KINDS)
def test_container_resources_are_copied_from_the_runs_placement(kind, section, make):
    assert container(make((f"placement.{section}.resources", RESOURCES)))["resources"] == RESOURCES


@pytest.mark.parametrize(("kind", "section", "make"), KINDS)
def test_without_resources_the_container_asks_for_none(kind, section, make):
    assert container(make())["resources"] == {}


@pytest.mark.parametrize(("kind", "section", "make"), KINDS)
def test_each_kind_reads_only_its_own_placement_section(kind, section, make):
    other = "training" if section == "inference" else "inference"

    child = make((f"placement.{other}.nodeSelector", {"pool": "other"}), (f"placement.{other}.queueName", "other-queue"))

    assert "nodeSelector" not in pod_spec(child)
    assert "kueue.x-k8s.io/queue-name" not in child["metadata"]["labels"]


@pytest.mark.parametrize(("kind", "section", "make"), KINDS)
@pytest.mark.parametrize("policy", ["Always", "IfNotPresent", "Never"])
def test_the_image_pull_policy_is_the_placements(kind, section, make, policy):
    assert container(make((f"placement.{section}.imagePullPolicy", policy)))["imagePullPolicy"] == policy


@pytest.mark.parametrize(
    ("make", "section", "image", "expected"),
    [
        pytest.param(job, "inference", None, DEFAULTS.inference_image, id="job-default"),
        pytest.param(job, "inference", "my.registry/vllm:7", "my.registry/vllm:7", id="job-placement"),
        pytest.param(pytorchjob, "training", None, DEFAULTS.training_image, id="pytorchjob-default"),
        pytest.param(pytorchjob, "training", "my.registry/trl:7", "my.registry/trl:7", id="pytorchjob-placement"),
    ],
)
def test_the_image_is_the_placements_or_else_the_operators_default_for_the_kind(make, section, image, expected):
    fields = [(f"placement.{section}.image", image)] if image else []

    assert container(make(*fields))["image"] == expected


# --- metadata: names, labels, owner, queue ----------------------------------------------------


@pytest.mark.parametrize(("kind", "section", "make"), KINDS)
def test_a_child_with_a_queue_name_is_labelled_for_kueue(kind, section, make):
    child = make((f"placement.{section}.queueName", "team-a-gpus"))

    assert child["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a-gpus"
    for template in templates(child):
        assert "kueue.x-k8s.io/queue-name" not in template["metadata"]["labels"]


@pytest.mark.parametrize(("kind", "section", "make"), KINDS)
def test_a_child_without_a_queue_name_has_no_kueue_label(kind, section, make):
    assert "kueue.x-k8s.io/queue-name" not in json.dumps(make())


@pytest.mark.parametrize(
    ("make", "iteration", "stage"),
    [pytest.param(job, 2, "generate", id="job"), pytest.param(pytorchjob, 1, "sft", id="pytorchjob")],
)
def test_the_child_and_its_pods_are_labelled_with_run_iteration_stage_and_attempt(make, iteration, stage):
    child = make(attempt=3)

    expected = {"selfreward.io/run": RUN_NAME, "selfreward.io/iteration": str(iteration),
                "selfreward.io/stage": stage, "selfreward.io/attempt": "3"}
    assert child["metadata"]["labels"] == expected
    for template in templates(child):
        assert template["metadata"]["labels"] == expected


def test_a_chain_is_labelled_with_its_first_stage():
    child = job(("placement.inference.replicas", 2), stages=("generate", "judge"))

    assert child["metadata"]["labels"]["selfreward.io/stage"] == "generate"
    assert child["spec"]["template"]["metadata"]["labels"]["selfreward.io/stage"] == "generate"


@pytest.mark.parametrize(("kind", "section", "make"), KINDS)
def test_the_run_owns_and_controls_its_child(kind, section, make):
    metadata = make()["metadata"]

    assert metadata["namespace"] == NAMESPACE
    assert metadata["ownerReferences"] == [
        {"apiVersion": "selfreward.io/v1alpha1", "kind": "SelfRewardRun", "name": RUN_NAME, "uid": UID, "controller": True}
    ]


@pytest.mark.parametrize(("kind", "section", "make"), KINDS)
def test_the_child_is_named_after_its_step(kind, section, make):
    child = make(attempt=4)
    step = (2, "generate") if kind == "Job" else (1, "sft")

    assert child["metadata"]["name"] == layout.child_name(RUN_NAME, *step, 4)


@pytest.mark.parametrize(
    ("stage", "limit"),
    [
        pytest.param("sft", 51, id="sft"),
        pytest.param("dpo", 51, id="dpo"),
        pytest.param("instruct", 63, id="instruct"),
        pytest.param("generate", 63, id="generate"),
        pytest.param("judge", 63, id="judge"),
        pytest.param("evaluate", 63, id="evaluate"),
    ],
)
@pytest.mark.parametrize("length", [20, 45, 63, 253])
def test_training_children_leave_room_for_the_training_operators_pod_suffix(stage, limit, length):
    name = layout.child_name("r" * length, 12, stage, 10)

    assert len(name) <= limit
    assert name.endswith(f"-i12-{stage}-a10")


def test_a_training_child_name_that_fits_is_kept_whole():
    run = "r" * (51 - len("-i01-sft-a1"))

    assert layout.child_name(run, 1, "sft", 1) == run + "-i01-sft-a1"


def test_two_long_run_names_get_different_training_children():
    prefix = "team-alpha-llama-2-70b-self-rewarding-"

    assert layout.child_name(prefix + "one", 2, "dpo", 1) != layout.child_name(prefix + "two", 2, "dpo", 1)


# --- purity ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "section", "make"), KINDS)
def test_building_twice_gives_the_same_child(kind, section, make):
    assert make(("storage.credentialsSecret", SECRET)) == make(("storage.credentialsSecret", SECRET))


def test_building_leaves_the_run_spec_unchanged():
    run = run_ref(("placement.inference.tolerations", PLACEMENT["tolerations"]))
    before = json.dumps(run.spec, sort_keys=True)

    build(run, ROOT, steps(run, "generate"), DEFAULTS)

    assert json.dumps(run.spec, sort_keys=True) == before


@pytest.mark.parametrize(("kind", "stages"), [("Job", ("generate", "judge")), ("PyTorchJob", ("dpo",))])
def test_a_child_tells_which_steps_it_runs(kind, stages):
    run = run_ref(("placement.inference.replicas", 3))
    chain = steps(run, *stages, attempt=2)
    read_back = children.steps_of(children.build(run, ROOT, chain, DEFAULTS))

    def recorded(step):
        return (step.iteration, step.stage, step.attempt, step.shard_count, step.outputs, step.inputs, step.fingerprint)

    assert [recorded(step) for step in read_back] == [recorded(step) for step in chain]
    assert all(step.fingerprint for step in read_back)
