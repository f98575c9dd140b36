"""Every stage program on a tiny model, with real vLLM (CPU), real TRL and a real S3 server.

One pipeline per module (engine loads cost tens of seconds on CPU): SFT on the seed data, then
evaluate + instruct + generate + judge of M1 in one process (one vLLM engine), then DPO to M2,
then evaluate of M2 and compare (M2 against M1, judged by M2) in one process.
Each test checks one property of what that pipeline left in S3 or reported.
"""

from __future__ import annotations

import json

import pytest

from selfreward.operator import layout
from selfreward.operator import plan as planner
from selfreward.operator import status as status_core
from selfreward.operator.local import stage_config
from selfreward.operator.spec import load_run
from selfreward.trainer.storage import MANIFEST, Storage, StorageOptions, sha256_bytes
from tests.fixtures.s3 import s3_client, s3_env
from tests.fixtures.models import REPO, SEED
from tests.integration.stages import run_stages

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pipeline(s3_server, tiny_model, tmp_path_factory):
    client = s3_client(s3_server)
    bucket = "pipeline"
    client.create_bucket(Bucket=bucket)
    for name in ("ift.jsonl", "eft.jsonl", "holdout.jsonl"):
        client.upload_file(str(SEED / name), bucket, f"seed/{name}")
    run_file = tmp_path_factory.mktemp("run") / "run.yaml"
    quickstart = (REPO / "examples" / "quickstart.yaml").read_text()
    run_file.write_text(
        quickstart.replace("../.selfreward/models/tiny-llama", str(tiny_model))
        .replace("../.selfreward/storage", f"s3://{bucket}/runs")
        .replace("seed/", f"s3://{bucket}/seed/")
        .replace("  storage:\n", f"  storage:\n    endpoint: {s3_server.endpoint}\n")
    )
    run = load_run(run_file)
    root = layout.run_root(run.spec["storage"]["uri"], run.namespace, run.name)
    env = s3_env(s3_server) | {"SELFREWARD_WORKDIR": str(tmp_path_factory.mktemp("work"))}
    status: dict = {}
    results = {}

    def run_chain(name, steps=None):
        nonlocal status
        chain = planner.plan_chain(run.spec, status, root, status_core.record)[:steps]
        results[name] = run_stages([stage_config(run, root, step) for step in chain], env)
        for step, summary in zip(chain, results[name].summaries):
            status = status_core.record(status, step, summary)
        return chain

    results["sft_chain"] = run_chain("sft")
    results["m1_chain"] = run_chain("m1")
    results["dpo_chain"] = run_chain("dpo")
    results["m2_chain"] = run_chain("m2", steps=2)  # evaluate and compare; not iteration 3
    # The same inference chain again: everything is committed, so everything is skipped.
    results["rerun"] = run_stages([stage_config(run, root, step) for step in results["m1_chain"]], env)
    storage = Storage(StorageOptions(endpoint=s3_server.endpoint, region=s3_server.region))
    with pytest.MonkeyPatch.context() as patch:
        for key, value in s3_env(s3_server).items():
            patch.setenv(key, value)
        yield {"run": run, "root": root, "status": status, "storage": storage, "env": env, **results}


def test_sft_commits_m1_to_s3(pipeline):
    summary = pipeline["sft"].summary("sft")
    assert pipeline["sft"].code == 0, pipeline["sft"].stderr[-3000:]
    assert summary["ok"] and summary["metrics"]["examples"] == 90
    manifest = json.loads(pipeline["storage"].read_text(f"{pipeline['root']}/iter-01/model/{MANIFEST}"))
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(manifest["files"])


def test_inference_stages_share_one_process_and_all_succeed(pipeline):
    m1 = pipeline["m1"]
    assert m1.code == 0, m1.stderr[-3000:]
    assert [s.stage for s in pipeline["m1_chain"]] == ["evaluate", "instruct", "generate", "judge"]
    assert [s["stage"] for s in m1.summaries] == ["evaluate", "instruct", "generate", "judge"]
    assert all(s["ok"] for s in m1.summaries)
    assert m1.stderr.count("Loading safetensors checkpoint shards: 100%") == 1


def test_generate_and_judge_run_every_shard(pipeline):
    m1 = pipeline["m1"]
    for stage in ("generate", "judge"):
        assert [s["index"] for s in m1.summary(stage)["shards"]] == [0, 1]


def test_judge_makes_pairs_whose_chosen_outscores_rejected(pipeline):
    storage, root = pipeline["storage"], pipeline["root"]
    pairs = []
    for shard in range(2):
        folder = f"{root}/iter-02/pairs/shard-{shard:05d}-of-00002"
        pairs += storage.read_committed_jsonl(folder, "pairs.jsonl")
    metrics = pipeline["m1"].summary("judge")["metrics"]
    assert len(pairs) == metrics["pairs"] > 0
    assert all(p["chosenScore"] > p["rejectedScore"] for p in pairs)
    assert metrics["pairs"] + metrics["ties"] + metrics["gapTooSmall"] + metrics["unscored"] == metrics["prompts"]


def test_constrained_judge_scores_every_judgement_and_counts_the_ones_it_constrained(pipeline):
    metrics = pipeline["m1"].summary("judge")["metrics"]
    assert metrics["judgements"] == metrics["candidates"] * 3
    # Every judgement has a score: the model's own, or a constrained one where it gave none.
    assert sum(metrics[f"score{n}"] for n in range(6)) == metrics["judgements"]
    # A parse failure is still counted; with the constraint each one got a constrained score.
    assert metrics["parseFailures"] == metrics["constrainedScores"] <= metrics["judgements"]
    assert 0 <= metrics["truncatedJudgements"] <= metrics["judgements"]


def test_every_manifest_matches_its_files(pipeline):
    storage, root = pipeline["storage"], pipeline["root"]
    manifests = [uri for uri in storage.list(f"{root}/iter-02") if uri.endswith(MANIFEST)]
    assert len(manifests) >= 7  # prompts, 2 candidates, 2 judgements, 2 pairs (+ model)
    for uri in manifests:
        folder = uri.rsplit("/", 1)[0]
        for name, digest in json.loads(storage.read_text(uri))["files"].items():
            assert sha256_bytes(storage.read_bytes(f"{folder}/{name}")) == digest, f"{folder}/{name}"


def test_evaluate_reports_reward_model_metrics(pipeline):
    metrics = pipeline["m1"].summary("evaluate")["metrics"]
    assert metrics["prompts"] == 12 and metrics["pairsEvaluated"] == 36
    assert 0 <= metrics["pairwiseAccuracy"] <= 1


def test_dpo_trains_m2_from_the_pairs(pipeline):
    dpo = pipeline["dpo"]
    assert dpo.code == 0, dpo.stderr[-3000:]
    summary = dpo.summary("dpo")
    assert summary["metrics"]["pairs"] == pipeline["m1"].summary("judge")["metrics"]["pairs"]
    assert summary["metrics"]["steps"] >= 1 and summary["metrics"]["trainLoss"] > 0
    assert pipeline["storage"].read_manifest(f"{pipeline['root']}/iter-02/model") is not None


def test_rerun_skips_every_committed_shard_without_loading_a_model(pipeline):
    rerun = pipeline["rerun"]
    assert rerun.code == 0
    assert all(shard["skipped"] for s in rerun.summaries for shard in s["shards"])
    assert "Loading safetensors" not in rerun.stderr
    assert rerun.summary("judge")["metrics"] == pipeline["m1"].summary("judge")["metrics"]


def test_a_stage_refuses_an_uncommitted_input(pipeline, tmp_path):
    run, root = pipeline["run"], pipeline["root"]
    step = planner.step_for(run.spec, root, 9, "generate", 1)  # iteration 9 has no prompts
    result = run_stages([stage_config(run, root, step)], pipeline["env"])
    assert result.code == 1
    assert "nothing there" in result.summaries[0]["error"]
    assert result.summaries[0]["permanent"] is False


def test_evaluate_answers_each_held_out_prompt_once(pipeline):
    storage, root = pipeline["storage"], pipeline["root"]
    answers = storage.read_committed_jsonl(f"{root}/iter-01/evaluation", "responses.jsonl")
    metrics = pipeline["m1"].summary("evaluate")["metrics"]
    holdout = [json.loads(line)["prompt"] for line in (SEED / "holdout.jsonl").read_text().splitlines()]
    assert [a["prompt"] for a in answers] == holdout
    assert metrics["responses"] == 12 and metrics["responseChars"] == sum(len(a["response"]) for a in answers)


def test_m2_is_evaluated_and_compared_with_m1_in_one_process(pipeline):
    m2 = pipeline["m2"]
    assert m2.code == 0, m2.stderr[-3000:]
    assert [(s.iteration, s.stage) for s in pipeline["m2_chain"]] == [(2, "evaluate"), (2, "compare")]
    assert all(s["ok"] for s in m2.summaries)
    assert m2.stderr.count("Loading safetensors checkpoint shards: 100%") == 1


def test_compare_judges_each_prompt_in_both_orders_and_its_counts_are_its_outcomes(pipeline):
    from selfreward.trainer.pairwise import outcome

    storage, root = pipeline["storage"], pipeline["root"]
    rows = storage.read_committed_jsonl(f"{root}/iter-02/comparison", "verdicts.jsonl")
    new = storage.read_committed_jsonl(f"{root}/iter-02/evaluation", "responses.jsonl")
    old = storage.read_committed_jsonl(f"{root}/iter-01/evaluation", "responses.jsonl")
    metrics = pipeline["m2"].summary("compare")["metrics"]
    assert [(r["new"], r["old"]) for r in rows] == [(a["response"], b["response"]) for a, b in zip(new, old)]
    assert all(len(r["judgements"]) == 2 and set(r["verdicts"]) <= {"A", "B", "tie"} for r in rows)
    assert [r["outcome"] for r in rows] == [outcome(*r["verdicts"]) for r in rows]
    counted = {k: sum(r["outcome"] == v for r in rows) for k, v in
               (("headToHeadWins", "win"), ("headToHeadLosses", "loss"), ("headToHeadTies", "tie"), ("headToHeadUnjudged", "unjudged"))}
    assert {k: metrics[k] for k in counted} == counted
    assert sum(counted.values()) == 12 and metrics["comparisons"] == 24
    # The tiny model writes no verdict line itself: the constraint supplies every verdict, counted.
    assert metrics["constrainedVerdicts"] == sum(c for r in rows for c in r["constrained"]) == metrics["verdictParseFailures"]
