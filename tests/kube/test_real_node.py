"""The testbed's real node: kubelet and containerd run pods of the project's own images, as the
operator's worker pods run (restricted namespace, uid 1000, read-only root filesystem, no
service-account token), and those pods reach the S3 server through the node's relay, by the name
the node's DNS gives it, and nothing else. Stopping the node gives the host back as it was.
"""
from __future__ import annotations

import fcntl
import json
from pathlib import Path

import pytest

from selfreward.operator import children
from testbed.quickstart import CREDENTIALS_SECRET, credentials_secret
from tests.fixtures.cluster import RESTRICTED, wait_for
from tests.fixtures.node import CPU_IMAGE, node_placement, on_real_node
from tests.fixtures.s3 import s3_client

pytestmark = pytest.mark.kube


# Runs in the pod: who it is, whether its root filesystem is writable, what its DNS answers, an S3
# round trip through the relay, and whether the control plane's loopback services answer it (they
# must not: the pod's 127.0.0.1 is its own). It dials nothing outside the node's network namespace.
PROBE = r"""
import json, os, socket, urllib.parse, boto3
from botocore.config import Config

def reachable(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False

def resolved(name):
    try:
        return socket.gethostbyname(name)
    except OSError:
        return None

try:
    open("/written", "w")
    root_writable = True
except OSError:
    root_writable = False
s3 = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT"], config=Config(s3={"addressing_style": "path"}))
s3.put_object(Bucket=os.environ["BUCKET"], Key="from-the-pod", Body=str(os.getuid()).encode())
report = {"uid": os.getuid(), "root_writable": root_writable,
          "token": os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token"),
          "apiserver": reachable("127.0.0.1", int(os.environ["API_PORT"])),
          "dns": {"s3": resolved(urllib.parse.urlsplit(os.environ["S3_ENDPOINT"]).hostname), "elsewhere": resolved("example.com")}}
open("/dev/termination-log", "w").write(json.dumps(report))
"""


def probe_pod(name: str, bucket: str, s3_endpoint: str, api_port: int) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": on_real_node({
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": children.WORKER_UID,
                                "runAsGroup": children.WORKER_UID, "fsGroup": children.WORKER_UID,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "probe", "image": CPU_IMAGE, "imagePullPolicy": "Never",
                "command": ["python", "-c", PROBE],
                "env": [{"name": "S3_ENDPOINT", "value": s3_endpoint}, {"name": "BUCKET", "value": bucket},
                        {"name": "API_PORT", "value": str(api_port)},
                        *[{"name": key, "valueFrom": {"secretKeyRef": {"name": CREDENTIALS_SECRET, "key": key}}}
                          for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")],
                        {"name": "AWS_REGION", "value": "us-east-1"}],
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                    "readOnlyRootFilesystem": True, "runAsNonRoot": True},
                "volumeMounts": [{"name": "scratch", "mountPath": children.SCRATCH}],
            }],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
        }),
    }


def finished(cluster, namespace: str, name: str):
    pod = cluster.core().read_namespaced_pod(name, namespace)
    return pod if pod.status.phase in ("Succeeded", "Failed") else None


def test_the_real_node_is_ready_and_takes_only_pods_that_ask_for_it(cluster, real_node):
    node = cluster.core().read_node(real_node.name)
    assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
    placement = node_placement()
    assert placement["nodeSelector"].items() <= node.metadata.labels.items()
    taint = placement["tolerations"][0]
    assert [(t.key, t.value, t.effect) for t in node.spec.taints] == [(taint["key"], taint["value"], taint["effect"])]


def test_a_pod_of_the_cpu_image_runs_restricted_and_reaches_only_the_s3_server(cluster, real_node, node_bucket):
    from testbed import node

    namespace = cluster.create_namespace(labels=RESTRICTED)
    server = real_node.s3
    cluster.apply(credentials_secret(server, namespace))
    api_port = int(cluster.server.rsplit(":", 1)[1])
    [s3_name] = node.DNS_NAMES  # the S3 server by the name a cluster's MinIO Service has
    s3_by_name = f"http://{s3_name}:{node.S3_PORT}"
    cluster.apply(probe_pod("probe", node_bucket, s3_by_name, api_port), namespace=namespace)

    pod = wait_for(lambda: finished(cluster, namespace, "probe"), 180, "the probe pod finished")
    terminated = pod.status.container_statuses[0].state.terminated
    assert pod.status.phase == "Succeeded", terminated.message
    assert pod.spec.node_name == real_node.name
    assert json.loads(terminated.message) == {"uid": children.WORKER_UID, "root_writable": False,
                                              "token": False, "apiserver": False,
                                              "dns": {"s3": node.NODE_IP, "elsewhere": None}}
    body = s3_client(server).get_object(Bucket=node_bucket, Key="from-the-pod")["Body"].read()
    assert body == str(children.WORKER_UID).encode()


def sleeper_pod() -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper"},
            "spec": on_real_node({"restartPolicy": "Never", "automountServiceAccountToken": False,
                                  "containers": [{"name": "sleep", "image": CPU_IMAGE, "imagePullPolicy": "Never",
                                                  "command": ["sleep", "600"]}]})}


def test_stopping_the_node_gives_the_host_back_and_it_starts_again(cluster, real_node):
    """Stopped while a pod runs, as when a test session is cut short."""
    from testbed import node, testbed

    namespace = cluster.create_namespace()
    cluster.apply(sleeper_pod(), namespace=namespace)
    wait_for(lambda: cluster.core().read_namespaced_pod("sleeper", namespace).status.phase == "Running", 120,
             "the sleeper pod running")
    state_dir = cluster.testbed.state_dir
    root = node.node_dir(state_dir)
    recorded = json.loads((root / "host-sysctls.json").read_text())
    netns_of_pods = node.pod_netns(root)
    assert netns_of_pods and shims_of(root)  # the running pod's
    testbed.stop_node(state_dir)

    assert not node.NETNS_PATH.exists() and not any(path.exists() for path in netns_of_pods)
    assert not shims_of(root)
    assert not any(point.startswith(str(node.node_dir(state_dir))) for point in mount_points())
    assert not any((hierarchy / "kubepods").exists() for hierarchy in node.CGROUP_ROOT.iterdir())
    assert {key: (Path("/proc/sys") / key).read_text().strip() for key in recorded} == recorded
    assert not [name for name in node.PROCESSES if (state_dir / "pids" / f"{name}.pid").exists()]
    with open(node.LOCK, "a") as lock:  # free again: another testbed may start a node now
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(lock, fcntl.LOCK_UN)

    cluster.kubectl("delete", "pod", "sleeper", "-n", namespace, "--grace-period=0", "--force", check=False)
    real_node.restart(cluster)
    wait_for(lambda: {c.type: c.status for c in cluster.core().read_node(real_node.name).status.conditions}["Ready"] == "True",
             120, "the node Ready again")


def mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f]


def shims_of(node_root: Path) -> list[str]:
    """Live containerd shims of the node (a zombie's command line is empty: not counted)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes() if proc.name.isdigit() else b""
        except OSError:
            continue
        if b"containerd-shim" in cmdline and str(node_root).encode() in cmdline:
            found.append(proc.name)
    return found
