"""One real node for the testbed: containerd and kubelet, so pods really run (stdlib only).

Everything the node runs lives in a network namespace the testbed makes (NETNS): a veth
interface holds the node's address, and the CNI bridge its pods' addresses, both in 198.18.0.0/15
(reserved for network tests, not a private range). Nothing there can dial any other address: a
relay (testbed/relay.py) forwards exactly two ports from inside to the host's loopback, the API
server for kubelet and the S3 server for the pods, and answers the pods' DNS queries from a fixed
table (DNS_NAMES). The node is labelled selfreward.io/pool=cpu-real
and tainted, so only pods that ask for it land there.

kubelet and containerd change host state: sysctls (recorded and restored), cgroups, mounts under
the state dir, the namespaces (the node's and its pods'). `stop` undoes all of it. A host-wide lock, held by the relay, keeps a
second testbed from starting a node beside a running one. containerd's image store is kept in the
cache dir across runs, so images imported once (the pause image, the project's images) stay.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from testbed.proc import LOOPBACK, spawn, stop_pidfile, wait_until

NAME = "selfreward-real-0"
POOL = "cpu-real"
POOL_LABEL = "selfreward.io/pool"
TAINT = {"key": "selfreward.io/real-node", "value": "true", "effect": "NoSchedule"}
NETNS = "selfreward-node"
NETNS_PATH = Path("/run/netns") / NETNS
NODE_IP = "198.18.1.1"
POD_SUBNET = "198.18.0.0/24"
# What pods dial for the testbed's S3 server (the relay's port inside the namespace).
S3_PORT = 9000
S3_ENDPOINT = f"http://{NODE_IP}:{S3_PORT}"
# Pods' DNS server (kubelet's clusterDNS, answered by the relay): the S3 server also answers to the
# name a MinIO Service would have in a cluster, so examples/quickstart-cluster.yaml runs unchanged.
DNS_PORT = 53
DNS_NAMES = {"minio.minio.svc.cluster.local": NODE_IP}
API_PORT = 6443
LOCK = Path("/run/lock/selfreward-testbed-node.lock")
SANDBOX_IMAGE = "localhost/selfreward-pause:3.10"
K8S_NAMESPACE = "k8s.io"  # containerd's namespace for the CRI
HOST_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Processes in start order (pid files under <state>/pids); stopped in reverse.
PROCESSES = ("node-relay", "containerd", "kubelet")
REQUIRED = ("containerd", "containerd-shim-runc-v2", "ctr", "ip", "nsenter", "buildah")


@dataclass(frozen=True)
class Node:
    name: str = NAME
    s3_endpoint: str = S3_ENDPOINT


def node_dir(state_dir: Path) -> Path:
    return state_dir / "node"


def containerd_socket(state_dir: Path) -> Path:
    return node_dir(state_dir) / "containerd.sock"


def ctr(state_dir: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(["ctr", "--address", str(containerd_socket(state_dir)), "-n", K8S_NAMESPACE, *args],
                          capture_output=True, text=True, **kwargs)


# --------------------------------------------------------------------------- start

def start(state_dir: Path, cache_dir: Path, dirs: dict[str, Path], *, api_port: int, s3_port: int | None,
          kubelet_kubeconfig: Path, pki: Path, images: dict[str, str], die_with_parent: bool,
          timeout: float) -> Node:
    """Start the node beside a running control plane; return once it is Ready and `images`
    (content-keyed name in buildah's storage -> the name pods use) are in containerd's store."""
    missing = [tool for tool in REQUIRED if not shutil.which(tool)]
    if missing:
        raise RuntimeError(f"real node: missing {', '.join(missing)} (make testbed-build installs them)")
    root = node_dir(state_dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    logs, pids = state_dir / "logs", state_dir / "pids"

    def run(name: str, argv: list[str], env: dict | None = None):
        return spawn(name, argv, logs, pids, env=env, die_with_parent=die_with_parent, cwd=state_dir)

    _claim_host_lock()
    _record_sysctls(root)
    _make_netns()
    routes = [f"{NODE_IP}:{API_PORT}={LOOPBACK}:{api_port}"]
    if s3_port:
        routes.append(f"{NODE_IP}:{S3_PORT}={LOOPBACK}:{s3_port}")
    ready = root / "relay.ready"
    names = [f"--name={name}={address}" for name, address in DNS_NAMES.items()]
    relay = run("node-relay", [sys.executable, "-m", "testbed.relay", "--netns", str(NETNS_PATH), "--lock", str(LOCK),
                               "--ready", str(ready), f"--dns={NODE_IP}:{DNS_PORT}", *names, *routes],
                env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    wait_until(ready.exists, timeout, "node relay", proc=relay, log=logs / "node-relay.log")

    config = _write_containerd_config(root, cache_dir / "containerd")
    containerd = run("containerd", ["nsenter", f"--net={NETNS_PATH}", "containerd", "--config", str(config)])
    wait_until(lambda: ctr(state_dir, "version").returncode == 0, timeout, "containerd", proc=containerd,
               log=logs / "containerd.log")
    _ensure_sandbox_image(state_dir, dirs["pause"] / "pause")
    for image, alias in images.items():
        import_image(state_dir, image, alias)

    kubelet = run("kubelet", ["nsenter", f"--net={NETNS_PATH}", str(dirs["kubelet"] / "kubelet"),
                              *_kubelet_args(root, kubelet_kubeconfig, pki)])
    (root / "node.json").write_text(json.dumps({"name": NAME, "s3_endpoint": S3_ENDPOINT}) + "\n")
    started = time.time()
    wait_until(lambda: _node_ready(state_dir / "kubeconfig", dirs, since=started), timeout, "real node Ready", proc=kubelet,
               interval=0.5, log=logs / "kubelet.log")
    return Node()


def _claim_host_lock() -> None:
    """Fail, touching nothing, when another testbed runs a real node here. The relay takes the
    lock for the node's lifetime right after this check."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise RuntimeError(f"real node: another testbed runs one on this machine ({lock.read().strip()}); "
                               "stop it first (make testbed-down) or start this one without a node") from None


def _record_sysctls(root: Path) -> None:
    values = {}
    for key in HOST_SYSCTLS:
        path = Path("/proc/sys") / key
        if path.exists():
            values[key] = path.read_text().strip()
    (root / "host-sysctls.json").write_text(json.dumps(values, indent=2) + "\n")


def _make_netns() -> None:
    _delete_netns()
    subprocess.run(["ip", "netns", "add", NETNS], check=True, capture_output=True)
    for command in (["ip", "link", "set", "lo", "up"],
                    # A veth pair with both ends inside (no dummy driver on every kernel).
                    ["ip", "link", "add", "sr-node", "type", "veth", "peer", "name", "sr-node-peer"],
                    ["ip", "addr", "add", f"{NODE_IP}/32", "dev", "sr-node"],
                    ["ip", "link", "set", "sr-node-peer", "up"],
                    ["ip", "link", "set", "sr-node", "up"],
                    # kubelet wants a default route to pick its interface; nothing answers there.
                    ["ip", "route", "add", "default", "dev", "sr-node"]):
        subprocess.run(["ip", "netns", "exec", NETNS, *command], check=True, capture_output=True)


def _delete_netns() -> None:
    if NETNS_PATH.exists():
        subprocess.run(["ip", "netns", "delete", NETNS], capture_output=True)


def pod_netns(root: Path) -> list[Path]:
    """The pods' network namespaces (containerd's CNI makes them as /run/netns/cni-*) made since
    this node started: the CRI removes one with its sandbox, but not when containerd is stopped
    while the pod runs."""
    started = root / "host-sysctls.json"  # written first thing at start
    if not started.exists():
        return []
    since = started.stat().st_mtime
    return [path for path in NETNS_PATH.parent.glob("cni-*") if path.stat().st_mtime >= since]


def _delete_pod_netns(root: Path) -> None:
    for path in pod_netns(root):
        subprocess.run(["ip", "netns", "delete", path.name], capture_output=True)


def _write_containerd_config(root: Path, image_root: Path) -> Path:
    cni_conf = root / "cni"
    cni_conf.mkdir()
    (cni_conf / "10-selfreward.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": "selfreward-node",
        "plugins": [
            {"type": "bridge", "bridge": "sr-pods", "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET}]],
                      "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(root / "cni-ipam")}},
            {"type": "loopback"},
        ]}, indent=2) + "\n")
    image_root.mkdir(parents=True, exist_ok=True)
    config = root / "containerd.toml"
    config.write_text(f"""\
version = 2
root = "{image_root}"
state = "{root / 'containerd-state'}"
[grpc]
  address = "{root / 'containerd.sock'}"
[ttrpc]
  address = "{root / 'containerd.sock.ttrpc'}"
[debug]
  level = "warn"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  # root here may not raise a process's oom_score_adj (no CAP_SYS_RESOURCE).
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
""")
    return config


def _image_present(state_dir: Path, name: str) -> bool:
    listed = ctr(state_dir, "images", "list", "--quiet")
    return name in listed.stdout.split()


def import_image(state_dir: Path, image: str, *aliases: str) -> None:
    """Copy an image from buildah's storage into containerd's store under the same name (once),
    and point `aliases` (e.g. the version tag pods name) at it."""
    name = image if "/" in image.split(":")[0] else f"localhost/{image}"
    if not _image_present(state_dir, name):
        _import(state_dir, name)
    for alias in aliases:
        tagged = ctr(state_dir, "images", "tag", "--force", name, alias)
        if tagged.returncode != 0:
            raise RuntimeError(f"tagging {name} as {alias} in containerd: {tagged.stderr.strip()}")
    # Earlier imports of the same repository (other content keys) only take space now; containerd
    # collects their layers once no image refers to them.
    repository = name.rsplit(":", 1)[0]
    keep = {name, *aliases}
    listed = [line.split() for line in ctr(state_dir, "images", "list").stdout.splitlines()[1:]]
    targets = {fields[0]: fields[2] for fields in listed if len(fields) >= 3}  # REF TYPE DIGEST ...
    stale = {ref for ref in targets if ref.rsplit(":", 1)[0] == repository and ref not in keep}
    named = {target for ref, target in targets.items() if not ref.startswith("sha256:") and ref not in stale}
    # CRI also names each image by its id (sha256:...): those of removed images go with them.
    stale |= {ref for ref, target in targets.items() if ref.startswith("sha256:") and target not in named}
    if stale:
        ctr(state_dir, "images", "remove", *sorted(stale))


def _import(state_dir: Path, name: str) -> None:
    with tempfile.TemporaryDirectory(dir=node_dir(state_dir)) as work:
        archive = Path(work) / "image.tar"
        subprocess.run(["buildah", "push", "--quiet", name, f"docker-archive:{archive}:{name}"],
                       check=True, capture_output=True)
        imported = ctr(state_dir, "images", "import", str(archive))
        if imported.returncode != 0:
            raise RuntimeError(f"importing {name} into containerd: {imported.stderr.strip()}")


def _ensure_sandbox_image(state_dir: Path, pause: Path) -> None:
    if _image_present(state_dir, SANDBOX_IMAGE):
        return
    container = subprocess.run(["buildah", "from", "scratch"], check=True, capture_output=True, text=True).stdout.strip()
    try:
        subprocess.run(["buildah", "copy", "--quiet", container, str(pause), "/pause"], check=True, capture_output=True)
        subprocess.run(["buildah", "config", "--entrypoint", '["/pause"]', "--user", "65535:65535", container],
                       check=True, capture_output=True)
        subprocess.run(["buildah", "commit", "--quiet", container, SANDBOX_IMAGE], check=True, capture_output=True)
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True)
    import_image(state_dir, SANDBOX_IMAGE)


def _kubelet_args(root: Path, kubeconfig: Path, pki: Path) -> list[str]:
    resolv = root / "resolv.conf"
    resolv.write_text("")  # the node itself resolves nothing; pods ask clusterDNS (the relay)
    config = root / "kubelet.yaml"
    config.write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": NODE_IP, "port": 10250, "readOnlyPort": 0,
        "healthzBindAddress": LOOPBACK, "healthzPort": 10248,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": f"unix://{root / 'containerd.sock'}",
        # cgroup v1 on these machines; containerd runs runc with cgroupfs too.
        "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
        "resolvConf": str(resolv), "clusterDomain": "cluster.local", "clusterDNS": [NODE_IP],
        "registerWithTaints": [TAINT], "maxPods": 16,
        # The images are imported, never pulled: keep them whatever the disk says.
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "serializeImagePulls": False, "runtimeRequestTimeout": "10m",
        "staticPodPath": "", "enableServer": True, "podLogsDir": str(root / "pod-logs"),
    }, indent=2) + "\n")
    return [f"--config={config}", f"--kubeconfig={kubeconfig}", f"--root-dir={root / 'kubelet'}",
            f"--cert-dir={root / 'kubelet-pki'}", f"--node-ip={NODE_IP}", f"--hostname-override={NAME}",
            f"--node-labels={POOL_LABEL}={POOL}", "--v=1"]


def _node_ready(kubeconfig: Path, dirs: dict[str, Path], since: float) -> bool:
    """Ready, as reported by this kubelet (a Node object left from an earlier start says Ready
    until the controller-manager notices: its heartbeat must be newer than `since`)."""
    out = subprocess.run([str(dirs["kubernetes"] / "kubectl"), "--kubeconfig", str(kubeconfig), "get", "node", NAME,
                          "-o", "jsonpath={.status.conditions[?(@.type=='Ready')]}"],
                         capture_output=True, text=True)
    if out.returncode != 0 or not out.stdout.strip():
        return False
    ready = json.loads(out.stdout)
    heartbeat = datetime.datetime.fromisoformat(ready["lastHeartbeatTime"].replace("Z", "+00:00")).timestamp()
    return ready["status"] == "True" and heartbeat >= int(since)


# --------------------------------------------------------------------------- stop

def stop(state_dir: Path) -> list[str]:
    """Stop the node started under `state_dir` and undo what it changed on the host."""
    root = node_dir(state_dir)
    pids = state_dir / "pids"
    stopped = []
    if stop_pidfile(pids / "kubelet.pid"):
        stopped.append("kubelet")
    if containerd_socket(state_dir).exists():
        _kill_containers(state_dir)
    if stop_pidfile(pids / "containerd.pid"):
        stopped.append("containerd")
    _kill_shims(root)
    _unmount_under(root)
    _remove_cgroups()
    _delete_pod_netns(root)
    _delete_netns()
    if stop_pidfile(pids / "node-relay.pid"):
        stopped.append("node-relay")
    _restore_sysctls(root)
    return stopped


def _kill_containers(state_dir: Path) -> None:
    tasks = ctr(state_dir, "tasks", "list", "--quiet", timeout=30)
    for task in tasks.stdout.split():
        ctr(state_dir, "tasks", "kill", "--signal", "SIGKILL", task, timeout=30)
    deadline = time.monotonic() + 20
    while (left := ctr(state_dir, "tasks", "list", "--quiet", timeout=30).stdout.split()) and time.monotonic() < deadline:
        for task in left:
            ctr(state_dir, "tasks", "delete", "--force", task, timeout=30)
        time.sleep(0.2)
    # The containers' records too (kubelet would have collected them): each holds its image's
    # snapshot, so an image replaced since could never be collected.
    containers = ctr(state_dir, "containers", "list", "--quiet", timeout=30).stdout.split()
    if containers:
        ctr(state_dir, "containers", "delete", *containers, timeout=60)


def _kill_shims(root: Path) -> None:
    """containerd's shims outlive it; ours name our socket on their command line."""
    marker = str(root).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"containerd-shim" in cmdline and marker in cmdline:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def _unmount_under(root: Path) -> None:
    prefix = str(root.resolve())
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                mounts.append(point)
    for point in sorted(set(mounts), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)


def _remove_cgroups() -> None:
    """kubelet's cgroup tree (kubepods), in every v1 hierarchy, deepest first."""
    if not CGROUP_ROOT.exists():
        return
    for hierarchy in CGROUP_ROOT.iterdir():
        top = hierarchy / "kubepods"
        if not top.is_dir() or hierarchy.is_symlink():
            continue
        for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def _restore_sysctls(root: Path) -> None:
    recorded = root / "host-sysctls.json"
    if not recorded.exists():
        return
    for key, value in json.loads(recorded.read_text()).items():
        with contextlib.suppress(OSError):
            (Path("/proc/sys") / key).write_text(value + "\n")
    recorded.unlink()
