"""`selfreward run` end to end on this machine: a whole run, a SIGKILL in the middle of the judge
stage and the resume, and bad input refused before anything runs.

The run stores its artifacts in a real S3 server (MinIO); stages run real vLLM (CPU) and TRL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fixtures.cluster import wait_for
from tests.fixtures.s3 import s3_client, s3_env
from tests.fixtures.models import REPO, SEED

pytestmark = pytest.mark.e2e
SELFREWARD = [sys.executable, "-m", "selfreward.operator.cli"]


def quickstart_with(tmp_path: Path, **spec_changes) -> dict:
    run = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    run["spec"]["seed"] = {k: str(SEED / Path(v).name) for k, v in run["spec"]["seed"].items()}
    for dotted, value in spec_changes.items():
        node = run["spec"]
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return run


def write_run(tmp_path: Path, run: dict) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    return path


def selfreward(*args: str, env: dict | None = None, timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([*SELFREWARD, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


def stage_of(status: dict, iteration: int, stage: str) -> dict:
    entry = next(e for e in status["iterations"] if e["iteration"] == iteration)
    return next(s for s in entry["stages"] if s["name"] == stage)


@pytest.fixture
def s3_run(s3_server, s3_bucket, tiny_model, tmp_path):
    run = quickstart_with(
        tmp_path,
        iterations=2,
        baseModel__uri=str(tiny_model),
        storage__uri=f"s3://{s3_bucket}/runs",
        storage__endpoint=s3_server.endpoint,
    )
    env = s3_env(s3_server) | {"SELFREWARD_WORKDIR": str(tmp_path / "work")}
    return write_run(tmp_path, run), env, tmp_path / "state"


def test_sigkill_during_judge_then_the_same_command_finishes(s3_run, s3_server, s3_bucket):
    run_file, env, state = s3_run
    status_file = state / "default" / "quickstart" / "status.json"
    first = subprocess.Popen(
        [*SELFREWARD, "--state-dir", str(state), "run", str(run_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, **env, "SELFREWARD_FAILPOINT": "judge/0"},
    )
    client = s3_client(s3_server)
    shard0 = "runs/default/quickstart/iter-02/judgements/shard-00000-of-00002/_manifest.json"

    def shard0_committed_or_run_ended():
        return first.poll() is not None or client.list_objects_v2(Bucket=s3_bucket, Prefix=shard0)["KeyCount"] == 1

    try:
        wait_for(shard0_committed_or_run_ended, 1200, "judge shard 0 to commit")
        assert first.poll() is None, "the run ended before judge shard 0 was committed"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()

    interrupted = json.loads(status_file.read_text())
    assert stage_of(interrupted, 2, "judge")["state"] == "Running"

    second = selfreward("--state-dir", str(state), "run", str(run_file), env=env)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    assert "shard 0 already committed, skipped" in second.stdout

    final = json.loads(selfreward("--state-dir", str(state), "status", str(run_file), "-o", "json").stdout)
    assert final["phase"] == "Succeeded"
    assert stage_of(final, 1, "sft") == stage_of(interrupted, 1, "sft")  # committed work was not redone
    models = [e.get("model") for e in final["iterations"]]
    assert models == [f"s3://{s3_bucket}/runs/default/quickstart/iter-01/model",
                      f"s3://{s3_bucket}/runs/default/quickstart/iter-02/model"]
    iteration2 = {s["name"]: s for s in final["iterations"][1]["stages"]}
    assert iteration2["judge"]["metrics"]["pairs"] > 0
    assert iteration2["judge"]["skippedShards"] == [0]
    assert "pairwiseAccuracy" in iteration2["evaluate"]["metrics"]
    ready = next(c for c in final["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["reason"] == "RunSucceeded"


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"bogus": 1}, "spec.bogus"),
        ({"generation__candidates": 1}, "spec.generation.candidates"),
        ({"dpo__beta": -1}, "spec.dpo.beta"),
    ],
    ids=["unknown-field", "one-candidate", "negative-beta"],
)
def test_invalid_run_is_refused_before_anything_runs(tmp_path, change, path):
    run_file = write_run(tmp_path, quickstart_with(tmp_path, **change))
    result = selfreward("--state-dir", str(tmp_path / "state"), "run", str(run_file), timeout=120)
    assert result.returncode == 2
    assert path in result.stderr
    assert not (tmp_path / "state").exists()


def test_malformed_seed_line_is_refused_with_file_and_line(tmp_path):
    seed = tmp_path / "ift.jsonl"
    lines = (SEED / "ift.jsonl").read_text().splitlines()
    lines[4] = '{"prompt": "unterminated'
    seed.write_text("\n".join(lines) + "\n")
    run = quickstart_with(tmp_path)
    run["spec"]["seed"]["instructions"] = str(seed)
    result = selfreward("--state-dir", str(tmp_path / "state"), "run", str(write_run(tmp_path, run)), timeout=120)
    assert result.returncode == 2
    assert f"{seed}:5:" in result.stderr.replace("\n", "")
    assert not (tmp_path / "state").exists()
