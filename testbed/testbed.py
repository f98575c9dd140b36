"""Start and stop the test control plane on 127.0.0.1 (stdlib only).

    python3 -m testbed.testbed up      # build if needed, start, print two `export` lines
                                       # (--no-node, or SELFREWARD_TESTBED_NODE=0: no real node)
                                       # with the node: ready for the cluster quickstart in the
                                       # namespace default (testbed/quickstart.py)
    python3 -m testbed.testbed down    # stop everything started by `up` (pid files)
    python3 -m testbed.testbed status

State dir: $SELFREWARD_TESTBED_STATE (default /tmp/selfreward-testbed).
Binary cache: $SELFREWARD_TESTBED_CACHE (default $HOME/.cache/selfreward-testbed), filled by
testbed/build.sh.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import fcntl
import datetime
import hashlib
import hmac
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from testbed import node as real_node
from testbed.proc import LOOPBACK, free_port, http_ok, spawn, stop_pidfile, wait_until

HERE = Path(__file__).resolve().parent
BUILD_SH = HERE / "build.sh"

# Fixed test credentials of the MinIO server (it only ever listens on 127.0.0.1).
S3_ACCESS_KEY = "selfreward-test"
S3_SECRET_KEY = "selfreward-test-secret"
S3_REGION = "us-east-1"


def default_state_dir() -> Path:
    return Path(os.environ.get("SELFREWARD_TESTBED_STATE", "/tmp/selfreward-testbed"))


# --------------------------------------------------------------------------- binaries

def component_dirs() -> dict[str, Path]:
    """Cache dir of every component, whether built or not."""
    out = subprocess.run(["bash", str(BUILD_SH), "--print-dirs"], check=True,
                         capture_output=True, text=True).stdout
    return {name: Path(d) for name, d in (line.split(" ", 1) for line in out.splitlines())}


def ensure_built(*components: str) -> dict[str, Path]:
    """Build the named components (all when none) unless cached; return every component's dir."""
    dirs = component_dirs()
    wanted = components or tuple(dirs)
    if not all((dirs[c] / ".complete").exists() for c in wanted):
        # Build output goes to stderr so `up`'s stdout stays two export lines.
        subprocess.run(["bash", str(BUILD_SH), *wanted], check=True, stdout=sys.stderr)
    return dirs


# --------------------------------------------------------------------------- MinIO

@dataclasses.dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    region: str
    data_dir: Path
    pid_file: Path
    log_file: Path

    def env(self) -> dict[str, str]:
        """The AWS_* variables that point boto3 and the AWS CLI at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }

    def stop(self) -> None:
        stop_pidfile(self.pid_file)

    def create_bucket(self, name: str, timeout: float = 60.0) -> None:
        """Create a bucket, waiting out MinIO's 503s while it initialises after reporting ready."""
        wait_until(lambda: self._put_bucket(name), timeout, f"bucket {name}")

    def _put_bucket(self, name: str) -> bool:
        """PUT a bucket. Exists: fine. MinIO's 503 while it initialises: False (try again)."""
        try:
            self.put(f"/{name}", b"")
        except urllib.error.HTTPError as e:
            if e.code == 503:
                return False
            if e.code != 409:  # BucketAlreadyOwnedByYou
                raise
        return True

    def put_object(self, bucket: str, key: str, body: bytes) -> None:
        self.put(f"/{bucket}/{key}", body)

    def put(self, path: str, body: bytes) -> None:
        """A SigV4-signed PUT (the stdlib only, so `up` needs no boto3)."""
        path = urllib.parse.quote(path, safe="/-_.~")
        now = datetime.datetime.now(datetime.timezone.utc)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        host = self.endpoint.split("://", 1)[1]
        payload_hash = hashlib.sha256(body).hexdigest()
        canonical = "\n".join(["PUT", path, "", f"host:{host}",
                               f"x-amz-content-sha256:{payload_hash}", f"x-amz-date:{amz_date}",
                               "", "host;x-amz-content-sha256;x-amz-date", payload_hash])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        key = ("AWS4" + self.secret_key).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        req = urllib.request.Request(f"{self.endpoint}{path}", data=body, method="PUT", headers={
            "x-amz-date": amz_date, "x-amz-content-sha256": payload_hash,
            "Authorization": (f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
                              "SignedHeaders=host;x-amz-content-sha256;x-amz-date, "
                              f"Signature={signature}")})
        urllib.request.urlopen(req, timeout=60).close()  # noqa: S310 - loopback only


def start_minio(state_dir: Path, die_with_parent: bool = False, timeout: float = 60.0) -> S3Server:
    """Start MinIO on a free 127.0.0.1 port with data under <state_dir>/minio; wait until ready."""
    minio = ensure_built("minio")["minio"] / "minio"
    data_dir = state_dir / "minio"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_dir, pid_dir = state_dir / "logs", state_dir / "pids"
    for attempt in range(3):  # the free port can be taken between probe and bind: retry
        port, console_port = free_port(), free_port()
        endpoint = f"http://{LOOPBACK}:{port}"
        proc = spawn("minio", [str(minio), "server", "--quiet",
                               "--address", f"{LOOPBACK}:{port}",
                               "--console-address", f"{LOOPBACK}:{console_port}",
                               str(data_dir)],
                     log_dir, pid_dir, die_with_parent=die_with_parent, env={
                         "MINIO_ROOT_USER": S3_ACCESS_KEY,
                         "MINIO_ROOT_PASSWORD": S3_SECRET_KEY,
                         "MINIO_SITE_REGION": S3_REGION,
                         "MINIO_BROWSER": "off",
                         "MINIO_UPDATE": "off",
                         "MINIO_CALLHOME_ENABLE": "off",
                     })
        server = S3Server(endpoint, S3_ACCESS_KEY, S3_SECRET_KEY, S3_REGION, data_dir,
                          pid_dir / "minio.pid", log_dir / "minio.log")
        try:
            wait_until(lambda: http_ok(f"{endpoint}/minio/health/ready"), timeout,
                       "minio", proc=proc, log=server.log_file)
            return server
        except RuntimeError:
            if attempt == 2:
                raise
            server.stop()
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- PKI

def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ec_csr(cwd: Path, name: str, subject: str) -> None:
    _openssl("req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=cwd)


def _sign(cwd: Path, name: str, extensions: str) -> None:
    (cwd / f"{name}.ext").write_text(extensions)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "3650", "-sha256", "-extfile", f"{name}.ext",
             "-out", f"{name}.crt", cwd=cwd)


# Client identities: the name RBAC sees (CN) and groups (O).
CLIENTS = {
    "admin": "/O=system:masters/CN=selfreward-testbed-admin",
    "controller-manager": "/CN=system:kube-controller-manager",
    "scheduler": "/CN=system:kube-scheduler",
    # The real node's kubelet, as the Node authorizer and NodeRestriction know it.
    "node": f"/O=system:nodes/CN=system:node:{real_node.NAME}",
}


PKI_MARKER = ".complete-v4"  # bump when ensure_pki makes new files
# The training operator's webhook cert rotator accepts a CA whose SAN is its CA name and a
# serving cert for <service>.<namespace>.svc; given valid ones it leaves them as they are.
TO_WEBHOOK_CA_NAME = "training-operator-ca"
TO_WEBHOOK_DNS = "training-operator.kubeflow.svc"
# Hard-coded in the training operator: its rotator waits for tls.crt to exist here.
TO_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")


def ensure_pki(pki: Path) -> None:
    """CA, apiserver serving cert, client certs, the service-account key and the training
    operator's webhook certs: made once per state dir."""
    if (pki / PKI_MARKER).exists():
        return
    shutil.rmtree(pki, ignore_errors=True)
    pki.mkdir(parents=True)
    _openssl("req", "-x509", "-new", "-nodes", "-newkey", "ec",
             "-pkeyopt", "ec_paramgen_curve:prime256v1", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "3650", "-subj", "/CN=selfreward-testbed-ca", cwd=pki)
    _ec_csr(pki, "apiserver", "/CN=kube-apiserver")
    _sign(pki, "apiserver", "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,"
          "DNS:kubernetes.default,DNS:kubernetes.default.svc,"
          "DNS:kubernetes.default.svc.cluster.local\n"
          "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    for name, subject in CLIENTS.items():
        _ec_csr(pki, name, subject)
        _sign(pki, name, "keyUsage=critical,digitalSignature,keyEncipherment\n"
              "extendedKeyUsage=clientAuth\n")
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-out", "sa.key", cwd=pki)
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    to = pki / "training-operator"
    to.mkdir()
    # The rotator reads these keys as PKCS#1 RSA ("RSA PRIVATE KEY").
    for key in ("ca.key", "tls.key"):
        _openssl("genrsa", "-traditional", "-out", key, "2048", cwd=to)
    _openssl("req", "-x509", "-new", "-key", "ca.key", "-out", "ca.crt",
             "-days", "3650", "-subj", f"/CN={TO_WEBHOOK_CA_NAME}",
             "-addext", f"subjectAltName=DNS:{TO_WEBHOOK_CA_NAME}",
             "-addext", "keyUsage=critical,keyCertSign,digitalSignature", cwd=to)
    _openssl("req", "-new", "-key", "tls.key", "-out", "tls.csr", "-subj", f"/CN={TO_WEBHOOK_DNS}",
             cwd=to)
    _sign(to, "tls", f"subjectAltName=DNS:{TO_WEBHOOK_DNS}\n"
          "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    for f in list(pki.iterdir()) + list(to.iterdir()):
        if f.is_file():
            f.chmod(0o600)
    (pki / PKI_MARKER).touch()


def write_kubeconfig(path: Path, server: str, pki: Path, client: str, tls_server_name: str | None = None) -> None:
    """A kubeconfig (JSON is YAML) with the CA and client cert embedded. `tls_server_name`: the
    name to verify the server's certificate against when `server` is a relay's address."""
    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    cluster = {"server": server, "certificate-authority-data": b64("ca.crt")}
    if tls_server_name:
        cluster["tls-server-name"] = tls_server_name
    cfg = {
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": [{"name": "testbed", "cluster": cluster}],
        "users": [{"name": client, "user": {
            "client-certificate-data": b64(f"{client}.crt"),
            "client-key-data": b64(f"{client}.key")}}],
        "contexts": [{"name": "testbed", "context": {"cluster": "testbed", "user": client,
                                                     "namespace": "default"}}],
        "current-context": "testbed",
    }
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    path.chmod(0o600)


# --------------------------------------------------------------------------- the control plane

# kwok node pools: name -> (node count, GPUs per node). GPU pools are tainted and labelled.
POOLS = {"cpu": (2, 0), "gpu-inference": (2, 8), "gpu-training": (2, 8)}
POOL_LABEL = "selfreward.io/pool"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
# The service range only names ClusterIPs; nothing dials them. Fake pods get loopback IPs
# (kwok --cidr) and fake nodes 127.0.0.1, so even an accidental dial stays on this machine.
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "127.1.0.0/16"
TRAINING_OPERATOR_NAMESPACE = "kubeflow"
INIT_CONTAINER_TEMPLATE = HERE.parent / "examples" / "training-operator" / "pytorch-init-container-restricted.yaml"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
              "training-operator", "minio")


@dataclasses.dataclass
class Testbed:
    state_dir: Path
    kubeconfig: Path
    bin_dir: Path
    server: str
    s3: S3Server | None = None
    s3_bucket: str | None = None
    # The real node, when started: its name and the S3 endpoint its pods dial (a relay's address).
    node: str | None = None
    node_s3_endpoint: str | None = None

    def exports(self) -> str:
        return f"export KUBECONFIG={self.kubeconfig}\nexport PATH={self.bin_dir}:$PATH"

    def to_json(self) -> dict:
        d = {"state_dir": str(self.state_dir), "kubeconfig": str(self.kubeconfig),
             "bin_dir": str(self.bin_dir), "server": self.server, "s3_bucket": self.s3_bucket,
             "node": self.node, "node_s3_endpoint": self.node_s3_endpoint}
        if self.s3:
            d["s3"] = {"endpoint": self.s3.endpoint, "access_key": self.s3.access_key,
                       "secret_key": self.s3.secret_key, "region": self.s3.region}
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Testbed":
        state_dir = Path(d["state_dir"])
        s3 = None
        if d.get("s3"):
            s3 = S3Server(**d["s3"], data_dir=state_dir / "minio",
                          pid_file=state_dir / "pids" / "minio.pid",
                          log_file=state_dir / "logs" / "minio.log")
        return cls(state_dir, Path(d["kubeconfig"]), Path(d["bin_dir"]), d["server"], s3,
                   d.get("s3_bucket"), d.get("node"), d.get("node_s3_endpoint"))


class _Api:
    """Minimal admin client on the stdlib, for readiness polls."""

    def __init__(self, server: str, pki: Path):
        self.server = server
        self.ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.server + path, timeout=5, context=self.ctx) as r:  # noqa: S310
            return json.loads(r.read())

    def ok(self, path: str) -> bool:
        return http_ok(self.server + path, ctx=self.ctx)


def _insecure_ctx() -> ssl.SSLContext:
    """For the health endpoints of the controller-manager and scheduler (self-signed, loopback)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _node(pool: str, index: int, gpus: int) -> dict:
    name = f"kwok-{pool}-{index}"
    resources = {"cpu": "32" if gpus == 0 else "96", "memory": "128Gi" if gpus == 0 else "1Ti",
                 "ephemeral-storage": "1Ti", "pods": "110"}
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
              "kubernetes.io/arch": "amd64", "type": "kwok", POOL_LABEL: pool}
    spec: dict = {}
    if gpus:
        resources[GPU_RESOURCE] = str(gpus)
        labels["nvidia.com/gpu.present"] = "true"
        spec["taints"] = [GPU_TAINT]
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels,
                         "annotations": {KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1]}},
            "spec": spec, "status": {"allocatable": resources, "capacity": resources}}


def _bootstrap_objects(pki: Path) -> list[dict]:
    """Fake nodes, and what the training operator expects to find in its namespace."""
    to = pki / "training-operator"
    cert_data = {k: base64.b64encode((to / k).read_bytes()).decode()
                 for k in ("ca.crt", "ca.key", "tls.crt", "tls.key")}
    objs = [_node(pool, i, gpus) for pool, (n, gpus) in POOLS.items() for i in range(n)]
    objs += [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": TRAINING_OPERATOR_NAMESPACE}},
        # Its cert rotator checks this Secret and injects the CA into the webhook configuration
        # below. The configuration has no webhooks, so the apiserver never calls the operator.
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
         "metadata": {"name": "training-operator-webhook-cert",
                      "namespace": TRAINING_OPERATOR_NAMESPACE}, "data": cert_data},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
         "metadata": {"name": "validator.training-operator.kubeflow.org"}, "webhooks": []},
    ]
    return objs


def _kubectl(bin_dir: Path, kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    res = subprocess.run([str(bin_dir / "kubectl"), "--kubeconfig", str(kubeconfig), *args],
                         input=stdin, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


def _running(state_dir: Path) -> Testbed | None:
    """The testbed described by <state_dir>/testbed.json if all its processes are up and ready."""
    try:
        tb = Testbed.from_json(json.loads((state_dir / "testbed.json").read_text()))
    except (OSError, ValueError, KeyError):
        return None
    pids = state_dir / "pids"
    wanted = [c for c in COMPONENTS if c != "minio" or tb.s3]
    wanted += list(real_node.PROCESSES) if tb.node else []
    for c in wanted:
        try:
            os.kill(int((pids / f"{c}.pid").read_text()), 0)
        except (OSError, ValueError):
            return None
    if not _Api(tb.server, state_dir / "pki").ok("/readyz"):
        return None
    return tb


@contextlib.contextmanager
def _locked(state_dir: Path):
    """One up/down at a time per state dir."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def up(state_dir: Path | None = None, with_s3: bool = True, die_with_parent: bool = False,
       timeout: float = 120.0, with_node: bool = False) -> Testbed:
    """Build if needed, then start the whole testbed under `state_dir`; return it when ready.

    A testbed already running in `state_dir` is returned as is. Otherwise leftovers are stopped
    and the cluster starts empty (fresh etcd data); the PKI is kept. with_node: also the real
    node (start_node), its pods reaching this testbed's S3 server.
    """
    state_dir = (state_dir or default_state_dir()).resolve()
    with _locked(state_dir):
        tb = _up(state_dir, with_s3, die_with_parent, timeout)
    if with_node and not tb.node:
        tb = start_node(tb, tb.s3, die_with_parent=die_with_parent)
    return tb


# The project's images the real node holds: built by images/build.sh (cached by their inputs).
NODE_IMAGES = ("operator", "cpu")
IMAGE_VERSION = "0.1.0"


def project_images(*names: str) -> dict[str, str]:
    """Build (or find cached) the project's images; content-keyed name -> the name pods use."""
    # Build output goes to stderr (minutes the first time), so `up`'s stdout stays two export lines.
    built = subprocess.run(["bash", str(HERE.parent / "images" / "build.sh"), *names],
                           stdout=subprocess.PIPE, text=True)
    if built.returncode != 0:
        raise RuntimeError(f"images/build.sh {' '.join(names)} failed (its output is above)")
    tags = dict(line.split() for line in built.stdout.splitlines() if line.strip())
    return {tags[name]: f"localhost/selfreward-{name}:{IMAGE_VERSION}" for name in names}


def start_node(tb: Testbed, s3: S3Server | None, die_with_parent: bool = False,
               timeout: float = 300.0) -> Testbed:
    """Start the real node (testbed/node.py) beside the running control plane of `tb`; its pods
    reach `s3` through the relay at node.S3_ENDPOINT. Records it in testbed.json."""
    state_dir = tb.state_dir
    with _locked(state_dir):
        dirs = ensure_built("kubernetes", "kubelet", "pause")
        images = project_images(*NODE_IMAGES)
        kubelet_kubeconfig = state_dir / "node.kubeconfig"
        write_kubeconfig(kubelet_kubeconfig, f"https://{real_node.NODE_IP}:{real_node.API_PORT}",
                         state_dir / "pki", "node", tls_server_name="localhost")
        s3_port = int(s3.endpoint.rsplit(":", 1)[1]) if s3 else None
        cache = dirs["kubelet"].parent
        try:
            started = real_node.start(
                state_dir, cache, dirs, api_port=int(tb.server.rsplit(":", 1)[1]), s3_port=s3_port,
                kubelet_kubeconfig=kubelet_kubeconfig, pki=state_dir / "pki", images=images,
                die_with_parent=die_with_parent, timeout=timeout)
        except BaseException:
            real_node.stop(state_dir)
            raise
        tb = dataclasses.replace(tb, node=started.name, node_s3_endpoint=started.s3_endpoint if s3 else None)
        (state_dir / "testbed.json").write_text(json.dumps(tb.to_json(), indent=2) + "\n")
        return tb


def stop_node(state_dir: Path) -> list[str]:
    with _locked(state_dir):
        stopped = real_node.stop(state_dir)
        path = state_dir / "testbed.json"
        if path.exists():
            d = json.loads(path.read_text())
            d.update(node=None, node_s3_endpoint=None)
            path.write_text(json.dumps(d, indent=2) + "\n")
        return stopped


def _up(state_dir: Path, with_s3: bool, die_with_parent: bool, timeout: float) -> Testbed:
    t0 = time.monotonic()
    existing = _running(state_dir)
    if existing:
        return existing
    _down(state_dir)
    dirs = ensure_built()
    state_dir.mkdir(parents=True, exist_ok=True)
    pki, logs, pids = state_dir / "pki", state_dir / "logs", state_dir / "pids"
    for d in ("etcd", "minio", "logs", "kwok", "run"):
        shutil.rmtree(state_dir / d, ignore_errors=True)
    ensure_pki(pki)

    bin_dir = state_dir / "bin"
    bin_dir.mkdir(exist_ok=True)
    k8s = dirs["kubernetes"]
    tools = {"kubectl": k8s / "kubectl", "kube-apiserver": k8s / "kube-apiserver",
             "kube-controller-manager": k8s / "kube-controller-manager",
             "kube-scheduler": k8s / "kube-scheduler", "etcd": dirs["etcd"] / "etcd",
             "kwok": dirs["kwok"] / "kwok", "helm": dirs["helm"] / "helm",
             "training-operator": dirs["training-operator"] / "training-operator",
             "minio": dirs["minio"] / "minio"}
    for name, target in tools.items():
        link = bin_dir / name
        link.unlink(missing_ok=True)
        link.symlink_to(target)

    def start(name: str, argv: list[str], env: dict | None = None):
        return spawn(name, argv, logs, pids, env=env, die_with_parent=die_with_parent,
                     cwd=state_dir)

    ports = {k: free_port() for k in ("etcd", "etcd-peer", "apiserver", "kcm", "scheduler",
                                      "kwok", "to-metrics", "to-probe", "to-webhook")}
    server = f"https://{LOOPBACK}:{ports['apiserver']}"
    kubeconfig = state_dir / "kubeconfig"
    for client in CLIENTS:
        write_kubeconfig(state_dir / f"{client}.kubeconfig", server, pki, client)
    shutil.copy(state_dir / "admin.kubeconfig", kubeconfig)
    api = _Api(server, pki)
    tb = Testbed(state_dir, kubeconfig, bin_dir, server)
    try:
        etcd_url = f"http://{LOOPBACK}:{ports['etcd']}"
        peer_url = f"http://{LOOPBACK}:{ports['etcd-peer']}"
        etcd = start("etcd", [
            str(tools["etcd"]), "--name=testbed", f"--data-dir={state_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=testbed={peer_url}", "--unsafe-no-fsync=true",
            "--log-level=warn"])
        if with_s3:  # MinIO starts alongside; it needs nothing from the cluster
            tb.s3 = start_minio(state_dir, die_with_parent=die_with_parent, timeout=timeout)
            tb.s3_bucket = "selfreward"
            tb.s3.create_bucket(tb.s3_bucket)
        wait_until(lambda: http_ok(f"{etcd_url}/health"), timeout, "etcd", proc=etcd,
                   log=logs / "etcd.log")

        apiserver = start("kube-apiserver", [
            str(tools["kube-apiserver"]), f"--etcd-servers={etcd_url}",
            f"--bind-address={LOOPBACK}", f"--advertise-address={LOOPBACK}",
            f"--secure-port={ports['apiserver']}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            # Front-proxy settings (no aggregated APIs here): published so the controller-manager
            # and scheduler find a complete extension-apiserver-authentication ConfigMap.
            f"--requestheader-client-ca-file={pki / 'ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction,PodSecurity",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # The `kubernetes` Service gets no endpoints: nothing should reach the apiserver
            # through a cluster IP, and loopback addresses are invalid endpoints anyway.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true", "--profiling=false", "--v=1"])
        wait_until(lambda: api.ok("/readyz"), timeout, "kube-apiserver", proc=apiserver,
                   log=logs / "kube-apiserver.log")

        common = ["--bind-address=" + LOOPBACK, "--leader-elect=false", "--profiling=false",
                  "--v=1"]
        kcm_kc = state_dir / "controller-manager.kubeconfig"
        kcm = start("kube-controller-manager", [
            str(tools["kube-controller-manager"]), f"--kubeconfig={kcm_kc}",
            f"--authentication-kubeconfig={kcm_kc}", f"--authorization-kubeconfig={kcm_kc}",
            f"--secure-port={ports['kcm']}", f"--cert-dir={state_dir / 'run' / 'kcm'}",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", *common])
        sched_kc = state_dir / "scheduler.kubeconfig"
        scheduler = start("kube-scheduler", [
            str(tools["kube-scheduler"]), f"--kubeconfig={sched_kc}",
            f"--authentication-kubeconfig={sched_kc}", f"--authorization-kubeconfig={sched_kc}",
            f"--secure-port={ports['scheduler']}", f"--cert-dir={state_dir / 'run' / 'sched'}",
            *common])

        # Cluster objects the node simulator and training operator need, then the CRD.
        _kubectl(bin_dir, kubeconfig, "apply", "-f", "-",
                 stdin=json.dumps({"apiVersion": "v1", "kind": "List",
                                   "items": _bootstrap_objects(pki)}))
        crd = dirs["training-operator"] / "crds" / "kubeflow.org_pytorchjobs.yaml"
        _kubectl(bin_dir, kubeconfig, "apply", "--server-side", "--force-conflicts",
                 "-f", str(crd))

        kwok_dir = state_dir / "kwok"
        kwok_dir.mkdir()
        stages = sorted((dirs["kwok"] / "stages").glob("*.yaml"))
        stages.append(HERE / "kwok" / "pod-stages.yaml")
        kwok_cfg = kwok_dir / "kwok.yaml"
        kwok_cfg.write_text("\n---\n".join(p.read_text().strip() for p in stages) + "\n")
        kwok = start("kwok", [
            str(tools["kwok"]), f"--kubeconfig={kubeconfig}", f"--config={kwok_cfg}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={'='.join(KWOK_NODE_ANNOTATION)}",
            f"--node-ip={LOOPBACK}", f"--cidr={POD_CIDR}", "--node-lease-duration-seconds=40",
            f"--server-address={LOOPBACK}:{ports['kwok']}"])

        wait_until(lambda: "Established" in _kubectl(
            bin_dir, kubeconfig, "get", "crd", "pytorchjobs.kubeflow.org",
            "-o", "jsonpath={.status.conditions[?(@.status=='True')].type}"),
            timeout, "PyTorchJob CRD established")
        _install_webhook_certs(pki / "training-operator")
        operator = start("training-operator", [
            str(tools["training-operator"]), "--enable-scheme=pytorchjob",
            "--leader-elect=false",
            f"--metrics-bind-address={LOOPBACK}:{ports['to-metrics']}",
            f"--health-probe-bind-address={LOOPBACK}:{ports['to-probe']}",
            f"--webhook-server-port={ports['to-webhook']}",
            # As a platform with Pod Security "restricted" namespaces configures it.
            f"--pytorch-init-container-template-file={INIT_CONTAINER_TEMPLATE}"],
            env={"KUBECONFIG": str(kubeconfig), "MY_POD_NAMESPACE": TRAINING_OPERATOR_NAMESPACE,
                 "TMPDIR": str(TO_CERT_DIR.parent.parent)})

        ictx = _insecure_ctx()
        wait_until(lambda: http_ok(f"https://{LOOPBACK}:{ports['kcm']}/healthz", ictx),
                   timeout, "kube-controller-manager", proc=kcm,
                   log=logs / "kube-controller-manager.log")
        wait_until(lambda: http_ok(f"https://{LOOPBACK}:{ports['scheduler']}/healthz", ictx),
                   timeout, "kube-scheduler", proc=scheduler, log=logs / "kube-scheduler.log")
        # The controller-manager works once it has made the default ServiceAccount.
        wait_until(lambda: api.ok("/api/v1/namespaces/default/serviceaccounts/default"),
                   timeout, "default ServiceAccount", proc=kcm,
                   log=logs / "kube-controller-manager.log")
        wait_until(lambda: _nodes_ready(api), timeout, "kwok nodes Ready", proc=kwok,
                   log=logs / "kwok.log")
        wait_until(lambda: http_ok(f"http://{LOOPBACK}:{ports['to-probe']}/readyz"),
                   timeout, "training-operator", proc=operator, interval=0.5,
                   log=logs / "training-operator.log")
    except BaseException:
        _down(state_dir)
        raise
    (state_dir / "testbed.json").write_text(json.dumps(tb.to_json(), indent=2) + "\n")
    if tb.s3:
        (state_dir / "s3.env").write_text("".join(
            f"export {k}={v}\n" for k, v in tb.s3.env().items()) +
            f"export SELFREWARD_TESTBED_BUCKET={tb.s3_bucket}\n")
    print(f"testbed: up in {time.monotonic() - t0:.1f} s ({state_dir})", file=sys.stderr)
    return tb


def _install_webhook_certs(src: Path) -> None:
    """Put the webhook serving cert where the training operator reads it (atomic renames, so a
    second testbed starting at the same time never leaves a half-written file)."""
    TO_CERT_DIR.mkdir(parents=True, exist_ok=True)
    for name in ("tls.crt", "tls.key"):
        tmp = TO_CERT_DIR / f".{name}.{os.getpid()}"
        shutil.copyfile(src / name, tmp)
        tmp.chmod(0o600)
        os.replace(tmp, TO_CERT_DIR / name)


def _nodes_ready(api: _Api) -> bool:
    """Every fake node is Ready and carries no not-ready/unreachable taint."""
    nodes = api.get("/api/v1/nodes")["items"]
    if len(nodes) < sum(n for n, _ in POOLS.values()):
        return False
    for node in nodes:
        conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
        taints = {t["key"] for t in node.get("spec", {}).get("taints", [])}
        if conds.get("Ready") != "True" or any(t.startswith("node.kubernetes.io/") for t in taints):
            return False
    return True


def down(state_dir: Path | None = None) -> list[str]:
    """Stop every process started in `state_dir` (pid files), in reverse start order."""
    state_dir = (state_dir or default_state_dir()).resolve()
    if not state_dir.exists():
        return []
    with _locked(state_dir):
        return _down(state_dir)


def _down(state_dir: Path) -> list[str]:
    pids = state_dir / "pids"
    stopped = real_node.stop(state_dir)
    for name in reversed(COMPONENTS):
        if stop_pidfile(pids / f"{name}.pid"):
            stopped.append(name)
    for extra in sorted(pids.glob("*.pid")) if pids.exists() else []:
        if stop_pidfile(extra):
            stopped.append(extra.stem)
    (state_dir / "testbed.json").unlink(missing_ok=True)
    return stopped


# --------------------------------------------------------------------------- CLI

def main(argv: list[str]) -> int:
    cmd = argv[1] if len(argv) > 1 else "help"
    if cmd == "build":
        ensure_built(*argv[2:])
        return 0
    if cmd == "up":
        with_node = "--no-node" not in argv[2:] and os.environ.get("SELFREWARD_TESTBED_NODE", "1") != "0"
        tb = up(with_node=with_node)
        if tb.node and tb.s3:
            from testbed import quickstart

            model = quickstart.build_tiny_model(tb.state_dir / "quickstart" / "tiny-llama")
            quickstart.prepare(tb, tb.s3, "default", model)
            print("testbed: the real node is up; `kubectl apply -f examples/quickstart-cluster.yaml` trains on it "
                  "(an operator watches the namespace default)", file=sys.stderr)
        print(tb.exports())
        return 0
    if cmd == "down":
        stopped = down()
        print(f"testbed: stopped {', '.join(stopped) or 'nothing'}", file=sys.stderr)
        return 0
    if cmd == "status":
        tb = _running(default_state_dir())
        if tb is None:
            print("testbed: not running", file=sys.stderr)
            return 1
        print(json.dumps(tb.to_json(), indent=2))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
