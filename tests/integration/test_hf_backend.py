"""The transformers fallback backend, on a local folder: what a machine without vLLM runs."""

from __future__ import annotations

import json

import pytest

from selfreward.operator import layout
from selfreward.operator import plan as planner
from selfreward.operator.local import stage_config
from selfreward.operator.spec import validate
from selfreward.trainer.storage import Storage
from tests.fixtures.models import SEED
from tests.integration.stages import run_stages

pytestmark = pytest.mark.integration
HF = {"SELFREWARD_BACKEND": "hf"}


def make_run(tiny_model, storage_root, **judge):
    from selfreward.operator.spec import RunDocument

    obj = validate({
        "apiVersion": "selfreward.io/v1alpha1",
        "kind": "SelfRewardRun",
        "metadata": {"name": "hf"},
        "spec": {
            "baseModel": {"uri": str(tiny_model)},
            "storage": {"uri": str(storage_root)},
            "seed": {"instructions": str(SEED / "ift.jsonl"), "evaluations": str(SEED / "eft.jsonl"),
                     "evaluationHoldout": str(SEED / "holdout.jsonl")},
            "generation": {"maxTokens": 24},
            "judge": {"maxTokens": 24, **judge},
        },
    })
    return RunDocument("hf", "default", obj["spec"], storage_root)


def write_prompts(storage: Storage, folder: str, prompts: list[str]) -> None:
    rows = [{"id": f"p{i}", "prompt": p} for i, p in enumerate(prompts)]
    storage.commit(folder, storage.write_jsonl_file(folder, "prompts.jsonl", rows))


@pytest.fixture
def local_run(tiny_model, tmp_path):
    def build(**judge):
        run = make_run(tiny_model, tmp_path / "storage", **judge)
        root = layout.run_root(str(tmp_path / "storage"), "default", "hf")
        # M1 stands in as the tiny base model: iteration 2 reads it from iter-01/model.
        return run, root

    return build


def test_hf_backend_samples_every_candidate(local_run, tiny_model):
    run, root = local_run()
    storage = Storage()
    write_prompts(storage, f"{root}/iter-02/prompts", ["Name three fruits.", "Explain rain to a child.", "Say hello."])
    step = planner.step_for(run.spec, root, 2, "generate", 1)
    step = planner.Step(**{**step.__dict__, "inputs": {**step.inputs, "model": str(tiny_model)}})
    result = run_stages([stage_config(run, root, step)], HF)
    assert result.code == 0, result.stderr[-2000:]
    rows = storage.read_committed_jsonl(f"{root}/iter-02/candidates/shard-00000-of-00001", "candidates.jsonl")
    assert [len(r["candidates"]) for r in rows] == [4, 4, 4]
    assert result.summaries[0]["metrics"]["candidates"] == 12
    # A completion cut off at maxTokens is flagged per candidate and counted.
    assert [len(r["truncated"]) for r in rows] == [4, 4, 4]
    assert result.summaries[0]["metrics"]["truncatedCandidates"] == sum(t for r in rows for t in r["truncated"])


def test_unconstrained_judge_counts_parse_failures_and_guesses_nothing(local_run, tiny_model):
    run, root = local_run(constrainedScore=False)
    storage = Storage()
    folder = f"{root}/iter-02/candidates/shard-00000-of-00001"
    rows = [{"id": "p0", "prompt": "Say hello.", "candidates": ["Hello!", "Hi there.", "Greetings.", "Hey."]}]
    storage.commit(folder, storage.write_jsonl_file(folder, "candidates.jsonl", rows))
    step = planner.step_for(run.spec, root, 2, "judge", 1)
    step = planner.Step(**{**step.__dict__, "inputs": {**step.inputs, "model": str(tiny_model)}})
    result = run_stages([stage_config(run, root, step)], HF)
    assert result.code == 0, result.stderr[-2000:]
    metrics = result.summaries[0]["metrics"]
    judged = storage.read_committed_jsonl(f"{root}/iter-02/judgements/shard-00000-of-00001", "judgements.jsonl")
    texts = [t for c in judged[0]["candidates"] for t in c["judgements"]]
    # An untrained model writes no score line: every judgement is a parse failure, none is guessed.
    from selfreward.trainer.rubric import parse_score

    assert metrics["parseFailures"] == sum(1 for t in texts if parse_score(t) is None) == 12
    assert metrics["constrainedScores"] == 0
    assert not any(k for c in judged[0]["candidates"] for k in c["constrained"])
    assert metrics["pairs"] == 0 and metrics["unscored"] == 1


def test_dpo_refuses_an_empty_pair_set_permanently(local_run, tiny_model):
    run, root = local_run()
    storage = Storage()
    folder = f"{root}/iter-02/pairs/shard-00000-of-00001"
    storage.commit(folder, storage.write_jsonl_file(folder, "pairs.jsonl", []))
    step = planner.step_for(run.spec, root, 2, "dpo", 1)
    step = planner.Step(**{**step.__dict__, "inputs": {**step.inputs, "model": str(tiny_model)}})
    result = run_stages([stage_config(run, root, step)])
    assert result.code == 2  # the same pairs would come back: no retry, a message saying what to change
    assert (result.summaries[0]["reason"], result.summaries[0]["permanent"]) == ("NothingToTrain", True)
    assert "minScoreGap" in result.summaries[0]["error"]
    assert storage.read_manifest(f"{root}/iter-02/model") is None


def test_invalid_config_exits_2_with_the_field(tmp_path):
    result = run_stages([{"stage": "generate", "run": "x"}])
    assert result.code == 2
    assert "config[0].namespace: Field required" in result.summaries[0]["error"]
    assert json.loads(json.dumps(result.summaries[0]))["permanent"] is True
