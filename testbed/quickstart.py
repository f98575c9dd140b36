"""The cluster quickstart on the testbed (stdlib only): what the header of
examples/quickstart-cluster.yaml asks a user to do before `kubectl apply`, done for them, and an
operator that places runs on the real node in the project's CPU image.

`testbed up` (with the real node) calls `prepare` for the namespace `default`, so that

    eval "$(make -s testbed)"
    kubectl apply -f examples/quickstart-cluster.yaml

trains M1..M3 in real pods, the artifacts in the testbed's S3 server under s3://selfreward/runs/.
The example is used as it is: its endpoint, minio.minio.svc.cluster.local, is a name the node's
DNS answers with the relay's address (testbed/node.py DNS_NAMES). The e2e test calls the same
functions for a namespace of its own.
"""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from testbed import node
from testbed.proc import LOOPBACK, free_port, http_ok, spawn, stop_pidfile, wait_until
from testbed.testbed import _kubectl

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "quickstart-cluster.yaml"
SEED = REPO / "examples" / "seed"
CRD = REPO / "crds" / "selfrewardruns.yaml"
# Where the example's header says the model, the seed files and the credentials are.
BUCKET = "selfreward"
MODEL_PREFIX = "models/tiny-llama"
SEED_PREFIX = "seed"
CREDENTIALS_SECRET = "s3-credentials"
# The name pods use for the CPU image (images/build.sh makes it, the node holds it; never pulled).
CPU_IMAGE = "localhost/selfreward-cpu:0.1.0"


def node_placement() -> dict:
    """What a pod (or a run's placement) adds to land on the real node."""
    return {"nodeSelector": {node.POOL_LABEL: node.POOL},
            "tolerations": [{"key": node.TAINT["key"], "operator": "Equal", "value": node.TAINT["value"],
                             "effect": node.TAINT["effect"]}]}


def placement_defaults() -> dict:
    """The operator's --placement-defaults a platform team would give it for this cluster: every
    stage on the real node, in the CPU image."""
    on_node = {"image": CPU_IMAGE, **node_placement()}
    return {"inference": on_node, "training": on_node}


def build_tiny_model(dest: Path, python: str = sys.executable) -> Path:
    """The quickstart's base model, made from the seed texts (no hub is reachable); kept once made."""
    if not (dest / "config.json").exists():
        subprocess.run([python, "-m", "selfreward.trainer.tiny", str(dest), "--corpus",
                        *(str(p) for p in sorted(SEED.glob("*.jsonl")))],
                       check=True, stdout=sys.stderr, stderr=sys.stderr, cwd=REPO)
    return dest


def seed_bucket(s3, model_dir: Path) -> None:
    """Step 1 of the example's header: the bucket, the base model and the seed files."""
    s3.create_bucket(BUCKET)
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        s3.put_object(BUCKET, f"{MODEL_PREFIX}/{path.relative_to(model_dir).as_posix()}", path.read_bytes())
    for seed in sorted(SEED.glob("*.jsonl")):
        s3.put_object(BUCKET, f"{SEED_PREFIX}/{seed.name}", seed.read_bytes())


def credentials_secret(s3, namespace: str) -> dict:
    """Step 2: the worker pods' S3 credentials (the operator never reads them)."""
    return {"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": CREDENTIALS_SECRET, "namespace": namespace},
            "stringData": {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}}


@dataclass
class QuickstartOperator:
    """The operator process `prepare` started (a pid file in the testbed's state dir)."""
    name: str
    pid_file: Path
    log_file: Path
    liveness: str

    def live(self) -> bool:
        return http_ok(self.liveness)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def stop(self) -> None:
        stop_pidfile(self.pid_file)


def start_operator(tb, namespaces: list[str], die_with_parent: bool = False, timeout: float = 60.0,
                   python: str = sys.executable) -> QuickstartOperator:
    """`python -m selfreward.operator` watching `namespaces`, with placement_defaults(); one
    started before for the same namespaces is stopped first."""
    name = "operator-" + "-".join(namespaces)
    work = tb.state_dir / "quickstart"
    work.mkdir(parents=True, exist_ok=True)
    defaults = work / "placement-defaults.yaml"
    defaults.write_text(json.dumps(placement_defaults(), indent=2) + "\n")  # JSON is YAML
    liveness = f"http://{LOOPBACK}:{free_port()}/healthz"
    args = [python, "-m", "selfreward.operator", "--liveness", liveness, "--metrics-port", "0",
            "--placement-defaults", str(defaults)]
    for namespace in namespaces:
        args += ["--namespace", namespace]
    logs, pids = tb.state_dir / "logs", tb.state_dir / "pids"
    stop_pidfile(pids / f"{name}.pid")
    proc = spawn(name, args, logs, pids, env={"KUBECONFIG": str(tb.kubeconfig)},
                 die_with_parent=die_with_parent, cwd=REPO)
    operator = QuickstartOperator(name, pids / f"{name}.pid", logs / f"{name}.log", liveness)
    wait_until(operator.live, timeout, f"{name} live", proc=proc, log=operator.log_file)
    return operator


def kubectl(tb, *args: str, stdin: str | None = None) -> str:
    return _kubectl(tb.bin_dir, tb.kubeconfig, *args, stdin=stdin)


def install_crd(tb) -> None:
    kubectl(tb, "apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kubectl(tb, "wait", "--for=condition=Established", "--timeout=60s", "crd/selfrewardruns.selfreward.io")


def prepare(tb, s3, namespace: str, model_dir: Path, die_with_parent: bool = False) -> QuickstartOperator:
    """Everything before `kubectl apply -f examples/quickstart-cluster.yaml -n <namespace>`."""
    install_crd(tb)
    seed_bucket(s3, model_dir)
    kubectl(tb, "apply", "-f", "-", stdin=json.dumps(credentials_secret(s3, namespace)))
    return start_operator(tb, [namespace], die_with_parent=die_with_parent)
