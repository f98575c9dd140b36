"""testbed/up.sh and down.sh as a developer uses them: two export lines, idempotent up, and
down leaves no process behind."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from testbed import testbed as tb
from testbed.proc import _alive

pytestmark = pytest.mark.kube
ROOT = Path(__file__).resolve().parents[2]


def _script(name: str, state: Path) -> subprocess.CompletedProcess:
    # Without the real node: one runs per machine, and the session's own may be running.
    env = dict(os.environ, SELFREWARD_TESTBED_STATE=str(state), SELFREWARD_TESTBED_NODE="0")
    return subprocess.run(["bash", str(ROOT / "testbed" / name)], env=env, text=True,
                          capture_output=True, timeout=600)


def test_up_prints_exports_is_idempotent_and_down_stops_everything(tmp_path):
    state = tmp_path / "tb"
    try:
        up = _script("up.sh", state)
        assert up.returncode == 0, up.stderr
        lines = up.stdout.splitlines()
        assert lines == [f"export KUBECONFIG={state / 'kubeconfig'}",
                         f"export PATH={state / 'bin'}:$PATH"]
        assert (state / "bin" / "kubectl").exists() and (state / "bin" / "helm").exists()
        pids = {p.stem: int(p.read_text()) for p in (state / "pids").glob("*.pid")}
        assert set(pids) == set(tb.COMPONENTS)

        again = _script("up.sh", state)  # already up: same cluster, nothing restarted
        assert again.stdout == up.stdout
        assert {p.stem: int(p.read_text()) for p in (state / "pids").glob("*.pid")} == pids

        env = dict(os.environ, KUBECONFIG=str(state / "kubeconfig"),
                   PATH=f"{state / 'bin'}:{os.environ['PATH']}")
        nodes = subprocess.run(["kubectl", "get", "nodes", "-o", "name"], env=env, text=True,
                               capture_output=True, check=True).stdout.split()
        assert len(nodes) == sum(n for n, _ in tb.POOLS.values())
        helm = subprocess.run(["helm", "list", "-A", "-o", "json"], env=env, text=True,
                              capture_output=True, check=True)
        assert json.loads(helm.stdout) == []

        info = json.loads((state / "testbed.json").read_text())
        from tests.fixtures.s3 import s3_client

        s3 = tb.Testbed.from_json(info).s3
        s3_client(s3).head_bucket(Bucket=info["s3_bucket"])  # raises if missing
    finally:
        down = _script("down.sh", state)
    assert down.returncode == 0, down.stderr
    assert not [name for name, pid in pids.items() if _alive(pid)]
    assert not list((state / "pids").glob("*.pid"))
