"""`selfreward run` end to end on this machine: a whole run, a SIGKILL in the middle of the judge
stage and the resume, and bad input refused before anything runs.

The run stores its artifacts in a real S3 server (MinIO); stages run real vLLM (CPU) and TRL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.fixtures.cluster import wait_for
from tests.fixtures.s3 import fresh_bucket, s3_client, s3_env, upload_model_folder
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


# Fewer SFT epochs than the quickstart: these tests check the loop's bookkeeping, not the model.
FAST_SFT = {"sft__epochs": 2, "sft__checkpointEvery": 8}
# Training as on a GPU node, on CPU: two processes under torchrun, DeepSpeed ZeRO-3 (the default
# zeroStage), DPO's reference log-probs precomputed (the default). The global batch stays 8.
TWO_PROCESSES = {"placement__training__processesPerReplica": 2, "sft__microBatchSize": 4, "dpo__microBatchSize": 4}


def processes_running(marker: str) -> list[str]:
    """Command lines on this machine that contain `marker` (a stage program's config names its bucket)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in text and "selfreward.trainer" in text:
            found.append(text[:200])
    return found


def processes_with(value: str) -> list[str]:
    """Command lines of this machine's processes whose environment holds `value` (vLLM names its
    engine process "VLLM::EngineCore": only its environment says which run it belongs to)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if value.encode() in environ.read_bytes():
                found.append((environ.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200])
        except OSError:
            continue
    return found


@dataclass
class ResumedRun:
    """A 2-iteration run killed (SIGKILL) while its judge stage was running, then finished by the
    same command; later tests edit its spec and run it again."""
    run_file: Path
    env: dict
    state: Path
    bucket: str
    storage: str  # the run's storage.uri
    interrupted: dict  # the status the killed run left
    resumed: subprocess.CompletedProcess
    final: dict  # the status once the same command finished it


@pytest.fixture(scope="module")
def module_bucket(s3_server) -> Iterator[str]:
    with fresh_bucket(s3_server) as name:
        yield name


@pytest.fixture(scope="module")
def resumed_run(s3_server, module_bucket, tiny_model, tmp_path_factory) -> ResumedRun:
    tmp_path, bucket = tmp_path_factory.mktemp("resumed-run"), module_bucket
    client = s3_client(s3_server)
    base = upload_model_folder(client, bucket, tiny_model, "models/tiny")
    storage = f"s3://{bucket}/runs"
    run = quickstart_with(
        tmp_path,
        iterations=2,
        baseModel__uri=base,
        storage__uri=storage,
        storage__endpoint=s3_server.endpoint,
        **FAST_SFT,
        **TWO_PROCESSES,
    )
    run_file, state = write_run(tmp_path, run), tmp_path / "state"
    env = s3_env(s3_server) | {"SELFREWARD_WORKDIR": str(tmp_path / "work"), "SELFREWARD_CACHE": str(tmp_path / "cache")}
    first = subprocess.Popen(
        [*SELFREWARD, "--state-dir", str(state), "run", str(run_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, **env, "SELFREWARD_FAILPOINT": "judge/0"},
    )
    shard0 = "runs/default/quickstart/iter-02/judgements/shard-00000-of-00002/_manifest.json"

    def shard0_committed_or_run_ended():
        return first.poll() is not None or client.list_objects_v2(Bucket=bucket, Prefix=shard0)["KeyCount"] == 1

    try:
        wait_for(shard0_committed_or_run_ended, 1200, "judge shard 0 to commit")
        assert first.poll() is None, "the run ended before judge shard 0 was committed"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The judge stage program and its vLLM engine process die with the executor.
    wait_for(lambda: not processes_with(env["SELFREWARD_WORKDIR"]), 60, "the killed run's stage and engine processes to exit")
    interrupted = json.loads((state / "default" / "quickstart" / "status.json").read_text())
    resumed = selfreward("--state-dir", str(state), "run", str(run_file), env=env)
    final = json.loads(selfreward("--state-dir", str(state), "status", str(run_file), "-o", "json").stdout)
    return ResumedRun(run_file, env, state, bucket, storage, interrupted, resumed, final)


def test_sigkill_during_judge_then_the_same_command_finishes(resumed_run, s3_server):
    """Also: the base model is a plain folder uploaded without a manifest, and M1 trains from it."""
    interrupted, final = resumed_run.interrupted, resumed_run.final
    assert stage_of(interrupted, 2, "judge")["state"] == "Running"
    assert resumed_run.resumed.returncode == 0, resumed_run.resumed.stdout[-4000:] + resumed_run.resumed.stderr[-4000:]
    assert "shard 0 already committed, skipped" in resumed_run.resumed.stdout

    assert final["phase"] == "Succeeded"
    assert stage_of(final, 1, "sft") == stage_of(interrupted, 1, "sft")  # committed work was not redone
    assert stage_of(final, 1, "sft")["metrics"]["examples"] == 90
    for stage in (stage_of(final, 1, "sft"), stage_of(final, 2, "dpo")):  # their models loaded in vLLM after
        assert (stage["metrics"]["processes"], stage["metrics"]["zeroStage"]) == (2, 3)
    storage = resumed_run.storage
    models = [e.get("model") for e in final["iterations"]]
    assert models == [f"{storage}/default/quickstart/iter-01/model", f"{storage}/default/quickstart/iter-02/model"]
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


def test_the_html_report_plots_the_runs_series_and_shows_what_it_made(resumed_run, tmp_path):
    import html

    out = tmp_path / "report"
    result = selfreward("--state-dir", str(resumed_run.state), "report", str(resumed_run.run_file), "--html", str(out),
                        env=resumed_run.env)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads((out / "series.json").read_text())
    final = resumed_run.final
    assert data["iterations"] == [1, 2]
    assert data["winRate"][1] == stage_of(final, 2, "compare")["metrics"]["winRate"]
    assert data["meanAnswerChars"] == [stage_of(final, t, "evaluate")["metrics"]["meanResponseChars"] for t in (1, 2)]
    assert len(data["chosenScores"]["2"]) == stage_of(final, 2, "judge")["metrics"]["pairs"]
    assert all(c > r for c, r in zip(data["chosenScores"]["2"], data["rejectedScores"]["2"]))
    page = (out / "index.html").read_text()
    assert all((out / f"{name}.png").stat().st_size > 0 for name in ("scores", "judge", "length", "reward", "headtohead"))
    prompts = [json.loads(line)["prompt"] for line in (SEED / "holdout.jsonl").read_text().splitlines()]
    assert html.escape(prompts[0]) in page  # a head-to-head example: the first held-out prompt


def test_a_spec_edit_reruns_what_it_changed_and_reuses_the_rest(resumed_run, s3_server):
    run_file, env, state, before = resumed_run.run_file, resumed_run.env, resumed_run.state, resumed_run.final
    bucket, storage = resumed_run.bucket, resumed_run.storage
    assert before["phase"] == "Succeeded"
    edited = yaml.safe_load(run_file.read_text())
    edited["spec"]["judge"]["samples"] = 2
    run_file.write_text(yaml.safe_dump(edited))

    second = selfreward("--state-dir", str(state), "run", str(run_file), env=env)

    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    assert "iteration 2 judge: its inputs changed since it ran" in second.stdout
    assert "spec.judge.samples: 3 -> 2" in second.stdout  # the stage program says why it redoes its shards
    after = json.loads(selfreward("--state-dir", str(state), "status", str(run_file), "-o", "json").stdout)
    for unchanged in ((1, "sft"), (2, "instruct"), (2, "generate")):
        assert stage_of(after, *unchanged) == stage_of(before, *unchanged), unchanged
    for rerun in ((1, "evaluate"), (2, "judge"), (2, "dpo"), (2, "evaluate")):  # evaluate judges with K samples too
        assert stage_of(after, *rerun)["attempt"] == stage_of(before, *rerun)["attempt"] + 1, rerun
    judge = stage_of(after, 2, "judge")["metrics"]
    assert judge["judgements"] == judge["candidates"] * 2
    storage_key = "runs/default/quickstart/iter-02/judgements/shard-00000-of-00002/_manifest.json"
    manifest = json.loads(s3_client(s3_server).get_object(Bucket=bucket, Key=storage_key)["Body"].read())
    assert manifest["lineage"]["spec"]["judge"]["samples"] == 2

    lineage = json.loads(selfreward("--state-dir", str(state), "lineage", str(run_file), "-o", "json", env=env).stdout)
    made = {(e["iteration"], e["stage"], e["output"]): e for e in lineage}
    m2 = made[(2, "dpo", "model")]
    assert [(i["name"], i["uri"], i["current"]) for i in m2["inputs"]] == [
        ("model", f"{storage}/default/quickstart/iter-01/model", "matches"),
        ("pairs", f"{storage}/default/quickstart/iter-02/pairs", "matches"),
    ]
    assert [i["uri"] for i in made[(2, "judge", "pairs")]["inputs"]] == [
        f"{storage}/default/quickstart/iter-02/candidates", f"{storage}/default/quickstart/iter-01/model"]
    assert made[(1, "sft", "model")]["inputs"][2]["uri"] == f"s3://{bucket}/models/tiny"


def test_training_resumes_from_its_committed_checkpoint_after_the_scratch_is_deleted(s3_server, s3_bucket, tiny_model, tmp_path):
    run = quickstart_with(
        tmp_path, iterations=1, baseModel__uri=str(tiny_model), storage__uri=f"s3://{s3_bucket}/runs",
        storage__endpoint=s3_server.endpoint, evaluation__enabled=False, **FAST_SFT, **TWO_PROCESSES,
    )
    run_file, state, work = write_run(tmp_path, run), tmp_path / "state", tmp_path / "work"
    env = s3_env(s3_server) | {"SELFREWARD_WORKDIR": str(work)}
    client = s3_client(s3_server)
    checkpoints = "runs/default/quickstart/iter-01/checkpoints/"

    def keys() -> set[str]:
        listed = client.list_objects_v2(Bucket=s3_bucket, Prefix=checkpoints)
        return {item["Key"][len(checkpoints):] for item in listed.get("Contents", [])}

    first = subprocess.Popen(  # 90 examples, batch 8, 2 epochs: 24 steps, checkpoints at 8 and 16
        [*SELFREWARD, "--state-dir", str(state), "run", str(run_file)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, **env, "SELFREWARD_FAILPOINT": "checkpoint/sft/16"},
    )
    try:
        wait_for(lambda: first.poll() is not None or "checkpoint-16/model.safetensors" in keys(), 600,
                 "checkpoint 16 to be half written")
        assert first.poll() is None, "the run ended before checkpoint 16 was written"
        busy = selfreward("--state-dir", str(state), "run", str(run_file), env=env, timeout=120)
        assert busy.returncode == 3
        assert "already running" in busy.stderr and f"pid {first.pid}" in busy.stderr.replace("\n", "")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # torchrun and both training processes die with the executor: none is left to write behind
    # the next attempt's back.
    wait_for(lambda: not processes_running(s3_bucket), 30, "the killed run's training processes to exit")
    torn = keys()
    assert "checkpoint-8/_manifest.json" in torn and "checkpoint-16/_manifest.json" not in torn
    shutil.rmtree(work)

    second = selfreward("--state-dir", str(state), "run", str(run_file), env=env)

    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
    final = json.loads(selfreward("--state-dir", str(state), "status", str(run_file), "-o", "json").stdout)
    sft = stage_of(final, 1, "sft")
    assert (sft["metrics"]["resumedFromStep"], sft["metrics"]["steps"]) == (8, 24)
    assert (sft["metrics"]["processes"], sft["metrics"]["zeroStage"]) == (2, 3)
    assert keys() == set()  # the model is committed; its checkpoints are gone
    saved = [p.name for p in work.rglob("checkpoint-*") if p.parent.name == "trainer"]
    assert saved == ["checkpoint-16"]  # none at the last step: the model is committed instead


def test_a_judge_that_cannot_score_stops_the_run_before_dpo_and_a_raised_limit_lets_it_go_on(tiny_model, tmp_path):
    """The tiny model never writes a score line itself (every score is constrained), so with the
    default parse-failure limit its judge stage fails the gate: the real figure, from real judging."""
    run = quickstart_with(tmp_path, iterations=2, baseModel__uri=str(tiny_model), storage__uri=str(tmp_path / "storage"),
                          evaluation__enabled=False, judge__gates__maxParseFailureRate=0.5, **FAST_SFT)
    run_file, state = write_run(tmp_path, run), tmp_path / "state"

    stopped = selfreward("--state-dir", str(state), "run", str(run_file))

    assert stopped.returncode == 1, stopped.stdout[-4000:] + stopped.stderr[-4000:]
    status = json.loads(selfreward("--state-dir", str(state), "status", str(run_file), "-o", "json").stdout)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    judge = stage_of(status, 2, "judge")
    assert (status["phase"], failed["status"], failed["reason"]) == ("Failed", "True", "JudgeParseFailures")
    figure = f"{judge['metrics']['parseFailures']} of {judge['metrics']['judgements']} judgements"
    assert figure in failed["message"] and "spec.judge.gates.maxParseFailureRate 0.5" in failed["message"]
    assert {g["name"]: g["passed"] for g in judge["gates"]}["parseFailureRate"] is False
    assert all(s["name"] != "dpo" for s in next(e for e in status["iterations"] if e["iteration"] == 2)["stages"])

    run["spec"]["judge"]["gates"]["maxParseFailureRate"] = 1.0
    resumed = selfreward("--state-dir", str(state), "run", str(write_run(tmp_path, run)))

    assert resumed.returncode == 0, resumed.stdout[-4000:] + resumed.stderr[-4000:]
    final = json.loads(selfreward("--state-dir", str(state), "status", str(run_file), "-o", "json").stdout)
    assert final["phase"] == "Succeeded"
    assert stage_of(final, 2, "judge")["attempt"] == 1  # judged once: the limit is not part of what the judge made
    assert stage_of(final, 2, "dpo")["state"] == "Succeeded"


def make_model_folder(client, bucket: str, prefix: str) -> None:
    for name, data in {"config.json": b"{}", "model.safetensors": b"\x00" * 8, "tokenizer.json": b"{}"}.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=data)


@pytest.mark.parametrize("example", ["paper-70b.yaml", "8b-on-h100.yaml"])
def test_the_cluster_examples_validate_with_their_models_present(s3_server, example):
    client = s3_client(s3_server)
    if "my-bucket" not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket="my-bucket")
    run = yaml.safe_load((REPO / "examples" / example).read_text())["spec"]
    for uri in (run["seed"]["instructions"], run["seed"]["evaluations"], run["seed"]["evaluationHoldout"]):
        key = uri.removeprefix("s3://my-bucket/")
        client.upload_file(str(SEED / {"ift": "ift.jsonl", "eft": "eft.jsonl", "eva": "holdout.jsonl"}[_kind(key)]), "my-bucket", key)
    env = s3_env(s3_server)
    missing = selfreward("validate", str(REPO / "examples" / example), env=env, timeout=120)
    assert missing.returncode == 2 and "spec.baseModel.uri" in missing.stderr

    for uri in (run["baseModel"]["uri"], run.get("promptGeneration", {}).get("model")):
        if uri:
            make_model_folder(client, "my-bucket", uri.removeprefix("s3://my-bucket/"))
    valid = selfreward("validate", str(REPO / "examples" / example), env=env, timeout=120)

    assert valid.returncode == 0, valid.stderr


def _kind(key: str) -> str:
    """Which seed file an example's S3 key stands for: IFT, EFT train, or EFT eval (held out)."""
    name = key.rsplit("/", 1)[-1]
    return "eva" if "eval" in name else ("eft" if "eft" in name else "ift")
