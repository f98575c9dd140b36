"""The Helm chart on the real control plane: it lints, renders to objects the API server accepts,
installs, grants its ServiceAccount exactly what the operator needs (asked of the API server
itself), lets the operator drive a run with that ServiceAccount's token, upgrades, and uninstalls
leaving the CRD, the runs and their artifacts.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from selfreward.operator.spec import GROUP, PLURAL
from tests.fixtures.cluster import RESTRICTED, wait_for
from tests.fixtures.operator import RUN, OperatorProcess, Player, children, cluster_run, wait_for_phase

pytestmark = pytest.mark.kube
REPO = Path(__file__).resolve().parents[2]
CHART = str(REPO / "charts" / "selfreward")


def render(cluster, *values: str, namespace: str = "selfreward", release: str = "sr") -> list[dict]:
    text = cluster.helm("template", release, CHART, "-n", namespace, *values).stdout
    import yaml

    return [doc for doc in yaml.safe_load_all(text) if doc]


def can(cluster, user: str, verb: str, resource: str, namespace: str | None) -> bool:
    """The API server's answer (a SubjectAccessReview through kubectl); "pods/exec" is a subresource."""
    resource, _, subresource = resource.partition("/")
    args = ["auth", "can-i", verb, resource, "--as", user] + (["--subresource", subresource] if subresource else [])
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    return cluster.kubectl(*args, check=False).stdout.strip() == "yes"


def test_the_chart_lints_clean_also_strictly(cluster):
    for strict in ([], ["--strict"]):
        result = cluster.helm("lint", CHART, *strict)
        assert "0 chart(s) failed" in result.stdout and "[WARNING]" not in result.stdout and "[INFO]" not in result.stdout


def test_unknown_values_are_refused(cluster):
    refused = cluster.helm("template", "sr", CHART, "--set", "colour=blue", check=False)
    assert refused.returncode != 0 and "colour" in refused.stderr


@pytest.mark.parametrize(("values", "reason"), [
    (["--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.service.enabled=false"], "metrics.service.enabled"),
    (["--set", "health.port=8081", "--set", "metrics.port=8081"], "must differ"),
    (["--set", "serviceAccount.create=false"], "serviceAccount.name names the existing ServiceAccount"),
    (["--set", "podLabels.app\\.kubernetes\\.io/instance=other"], "podLabels may not set app.kubernetes.io/instance"),
], ids=["service-monitor-without-service", "one-port-for-two-servers", "no-service-account", "labels-take-the-selector"])
def test_contradictory_values_are_refused_with_the_reason(cluster, values, reason):
    refused = cluster.helm("template", "sr", CHART, *values, check=False)
    assert refused.returncode != 0 and reason in refused.stderr


def test_an_existing_service_account_is_bound_instead_of_a_new_one(cluster):
    docs = render(cluster, "--set", "serviceAccount.create=false", "--set", "serviceAccount.name=platform-operator")
    assert not [doc for doc in docs if doc["kind"] == "ServiceAccount"]
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "platform-operator"
    binding = next(doc for doc in docs if doc["kind"] == "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "platform-operator", "namespace": "selfreward"}]


def test_the_operators_uid_can_be_left_to_the_platform(cluster):
    docs = render(cluster, "--set", "podSecurityContext.runAsUser=null", "--set", "podSecurityContext.runAsGroup=null")
    context = next(doc for doc in docs if doc["kind"] == "Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert context == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def test_a_long_release_name_still_gives_valid_object_names(cluster):
    names = [doc["metadata"]["name"] for doc in render(cluster, "--set", "crds.install=false", release="r" * 53)]
    assert names and all(len(name) <= 63 for name in names)


def test_the_rendered_chart_passes_a_server_side_dry_run(cluster):
    namespace = cluster.create_namespace()
    for values in ([], ["--set", f"watchNamespaces={{{namespace}}}"]):
        manifests = [doc for doc in render(cluster, *values, namespace=namespace) if doc["kind"] != "CustomResourceDefinition"]
        result = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-",
                                 input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}))
        assert "(server dry run)" in result.stdout
    crd = next(doc for doc in render(cluster) if doc["kind"] == "CustomResourceDefinition")
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert "(server dry run)" in cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(crd)).stdout


@pytest.fixture
def release(srr_crd):
    """The chart installed in a namespace enforcing Pod Security restricted, adopting the CRD the
    session applied with kubectl (as a user adopting an existing CRD would label it)."""
    cluster = srr_crd
    name = f"sr-{uuid.uuid4().hex[:6]}"
    namespace = cluster.create_namespace(labels=RESTRICTED)
    crd = f"{PLURAL}.{GROUP}"
    cluster.kubectl("label", "crd", crd, "app.kubernetes.io/managed-by=Helm", "--overwrite")
    cluster.kubectl("annotate", "crd", crd, f"meta.helm.sh/release-name={name}", f"meta.helm.sh/release-namespace={namespace}",
                    "--overwrite")
    yield cluster, name, namespace
    cluster.helm("uninstall", name, "-n", namespace, check=False)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def service_account(name: str, namespace: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}-selfreward"


def token_kubeconfig(cluster, name: str, namespace: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount (a token from kubectl create token)."""
    token = cluster.kubectl("create", "token", f"{name}-selfreward", "-n", namespace, "--duration=1h").stdout.strip()
    admin = json.loads(Path(cluster.kubeconfig).read_text())
    admin["users"] = [{"name": "operator", "user": {"token": token}}]
    admin["contexts"][0]["context"]["user"] = "operator"
    path.write_text(json.dumps(admin))
    return path


# (verb, resource, allowed): what the operator needs, and what it must never be able to do.
PERMISSIONS = [
    ("watch", "selfrewardruns.selfreward.io", True),
    ("update", "selfrewardruns.selfreward.io/status", True),
    ("patch", "jobs.batch", True),  # suspend and resume
    ("create", "jobs.batch", True),
    ("patch", "pytorchjobs.kubeflow.org", True),
    ("list", "pods", True),
    ("create", "events", True),
    ("update", "selfrewardruns.selfreward.io", False),  # the spec is the user's
    ("delete", "jobs.batch", False),  # owner references delete children, not the operator
    ("get", "secrets", False),
    ("list", "secrets", False),
    ("create", "pods/exec", False),
    ("create", "pods", False),
    ("delete", "pods", False),
    ("list", "nodes", False),
    ("create", "roles.rbac.authorization.k8s.io", False),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", False),
    ("delete", "namespaces", False),
    ("create", "deployments.apps", False),
    ("delete", "selfrewardruns.selfreward.io", False),
]


@pytest.mark.parametrize(("verb", "resource", "allowed"), PERMISSIONS, ids=[f"{v}-{r}" for v, r, _ in PERMISSIONS])
def test_cluster_wide_the_service_account_can_do_exactly_what_the_operator_needs(release, namespace, verb, resource, allowed):
    cluster, name, release_namespace = release
    cluster.helm("install", name, CHART, "-n", release_namespace, "--wait=false")
    assert can(cluster, service_account(name, release_namespace), verb, resource, namespace) is allowed


def test_namespaced_the_service_account_holds_nothing_outside_the_listed_namespaces(release, namespace):
    cluster, name, release_namespace = release
    other = cluster.create_namespace()
    cluster.helm("install", name, CHART, "-n", release_namespace, "--set", f"watchNamespaces={{{namespace}}}")
    user = service_account(name, release_namespace)
    for verb, resource, allowed in PERMISSIONS:
        assert can(cluster, user, verb, resource, namespace) is allowed, (verb, resource)
        assert not can(cluster, user, verb, resource, other), (verb, resource, other)
    assert not can(cluster, user, "list", "selfrewardruns.selfreward.io", None)  # nothing cluster-wide
    cluster.kubectl("delete", "namespace", other, "--wait=false")


def test_the_installed_operator_runs_restricted_and_drives_a_run_with_its_own_token(release, tmp_path):
    cluster, name, release_namespace = release
    runs = cluster.create_namespace(labels=RESTRICTED)
    cluster.helm("install", name, CHART, "-n", release_namespace, "--set", f"watchNamespaces={{{runs}}}")
    deployment = json.loads(cluster.kubectl("get", "deployment", f"{name}-selfreward", "-n", release_namespace, "-o", "json").stdout)
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    wait_for(lambda: json.loads(cluster.kubectl("get", "pods", "-n", release_namespace, "-o", "json").stdout)["items"], 60,
             "the restricted namespace to admit the operator pod")

    # The Deployment's pod sits on a fake node; the same program runs here with the same identity.
    operator = OperatorProcess(cluster, tmp_path, kubeconfig=token_kubeconfig(cluster, name, release_namespace, tmp_path / "kubeconfig"))
    operator.start([runs])
    try:
        with Player(cluster, [runs]) as player:
            cluster.apply(cluster_run(spec__iterations=2), namespace=runs)
            wait_for_phase(cluster, runs, RUN, "Succeeded", timeout=180)
            player.check()
    finally:
        operator.stop()
    assert len(children(cluster, runs)) == 5  # every worker pod was admitted under restricted
    assert "Forbidden" not in operator.log()


def test_upgrade_rolls_the_operator_and_uninstall_leaves_the_crd_and_the_runs(release):
    cluster, name, release_namespace = release
    runs = cluster.create_namespace()
    cluster.helm("install", name, CHART, "-n", release_namespace, "--set", f"watchNamespaces={{{runs}}}")
    cluster.apply(cluster_run(spec__iterations=1, spec__suspend=True), namespace=runs)

    def template_hash():
        deployment = json.loads(cluster.kubectl("get", "deployment", f"{name}-selfreward", "-n", release_namespace, "-o", "json").stdout)
        return deployment["metadata"]["generation"], deployment["spec"]["template"]

    generation, template = template_hash()
    cluster.helm("upgrade", name, CHART, "-n", release_namespace, "--reuse-values",
                 "--set", "logLevel=debug", "--set", "workers.placementDefaults.training.priorityClassName=batch-low")
    new_generation, new_template = template_hash()
    assert new_generation > generation  # a new pod template: the Deployment rolls (Recreate)
    env = {e["name"]: e.get("value") for e in new_template["spec"]["containers"][0]["env"]}
    assert env["SELFREWARD_LOG_LEVEL"] == "debug"
    assert new_template["metadata"]["annotations"]["checksum/config"] != template["metadata"]["annotations"]["checksum/config"]

    cluster.helm("uninstall", name, "-n", release_namespace)
    left = cluster.kubectl("get", "deployments,serviceaccounts,configmaps,services,roles,rolebindings", "-n", release_namespace,
                           "-l", f"app.kubernetes.io/instance={name}", "-o", "name").stdout
    assert left.strip() == ""
    assert cluster.kubectl("get", "roles,rolebindings", "-n", runs, "-l", f"app.kubernetes.io/instance={name}", "-o", "name").stdout.strip() == ""
    assert cluster.kubectl("get", "crd", f"{PLURAL}.{GROUP}", "-o", "name").stdout.strip()
    assert cluster.kubectl("get", "srr", RUN, "-n", runs, "-o", "name").stdout.strip() == f"selfrewardrun.{GROUP}/{RUN}"
