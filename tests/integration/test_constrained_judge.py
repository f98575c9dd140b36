"""The constrained judge on a Llama-2-style tokenizer, with both backends (hf and vLLM CPU).

The tiny model's tokenizer writes "Score: 4" as [..., "▁", "4"] (SentencePiece style: the space
is a token of its own, digits are single tokens), which the old single-token constraint could not
handle. Each backend runs the `judge` stage program in a subprocess (vLLM's engine must start
from a `__main__`-guarded program) on 10 candidates x 3 samples = 30 judgements of a randomly
initialised model: it never writes a score line of its own, so the constraint supplies them.
"""

from __future__ import annotations

import pytest

from selfreward.operator import layout
from selfreward.operator import plan as planner
from selfreward.operator.local import stage_config
from selfreward.trainer.rubric import parse_score
from selfreward.trainer.storage import Storage
from tests.fixtures.models import SEED
from tests.integration.stages import run_stages
from tests.integration.test_hf_backend import make_run

pytestmark = pytest.mark.integration

CANDIDATES = [
    {"id": "p0", "prompt": "Say hello.", "candidates": ["Hello!", "Hi there, friend."]},
    {"id": "p1", "prompt": "Name three fruits.", "candidates": ["Apple, pear, plum.", "Bread."]},
    {"id": "p2", "prompt": "Explain rain to a child.", "candidates": ["Water falls from clouds.", "No."]},
    {"id": "p3", "prompt": "What is 2 + 2?", "candidates": ["4", "It is 5."]},
    {"id": "p4", "prompt": "Give a tip for sleeping well.", "candidates": ["Keep a regular bedtime.", "Eat."]},
]
JUDGEMENTS = sum(len(row["candidates"]) for row in CANDIDATES) * 3


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
    from selfreward.trainer.tiny import make_tiny_model, texts_from_jsonl

    # hidden 128 with 2 heads: head_dim 64, the smallest vLLM's CPU attention accepts.
    return make_tiny_model(
        tmp_path_factory.mktemp("models") / "sp-tiny",
        texts_from_jsonl(sorted(SEED.glob("*.jsonl"))),
        hidden_size=128,
        heads=2,
        tokenizer_style="sentencepiece",
    )


def test_the_model_writes_a_score_as_a_space_token_and_a_digit(sentencepiece_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(sentencepiece_model)
    ids = tokenizer.encode("Fine.\nScore: 4", add_special_tokens=False)

    assert tokenizer.convert_ids_to_tokens(ids)[-2:] == ["▁", "4"]


@pytest.fixture(scope="module", params=["hf", "vllm"])
def judged(request, sentencepiece_model, tmp_path_factory):
    """The judge stage on one backend: (its summary, its judgement rows, its stderr)."""
    storage_root = tmp_path_factory.mktemp(f"storage-{request.param}")
    run = make_run(sentencepiece_model, storage_root, constrainedScore=True, maxTokens=16, samples=3)
    root = layout.run_root(str(storage_root), "default", "hf")
    storage = Storage()
    folder = f"{root}/iter-02/candidates/shard-00000-of-00001"
    storage.commit(folder, storage.write_jsonl_file(folder, "candidates.jsonl", CANDIDATES))
    step = planner.step_for(run.spec, root, 2, "judge", 1)
    step = planner.Step(**{**step.__dict__, "inputs": {**step.inputs, "model": str(sentencepiece_model)}})
    result = run_stages([stage_config(run, root, step)], {"SELFREWARD_BACKEND": request.param})
    assert result.code == 0, result.stderr[-3000:]
    rows = storage.read_committed_jsonl(f"{root}/iter-02/judgements/shard-00000-of-00001", "judgements.jsonl")
    return result.summaries[0], [c for row in rows for c in row["candidates"]], request.param


def test_every_judgement_has_a_valid_score(judged):
    summary, candidates, _ = judged
    scores = [s for c in candidates for s in c["scores"]]

    assert summary["metrics"]["judgements"] == len(scores) == JUDGEMENTS
    assert all(s in range(6) for s in scores)
    assert sum(summary["metrics"][f"score{n}"] for n in range(6)) == JUDGEMENTS


def test_scores_of_a_random_model_are_not_all_the_same(judged):
    _, candidates, _ = judged

    assert len({s for c in candidates for s in c["scores"]}) > 1


def test_each_constrained_judgement_ends_with_its_score_line(judged):
    _, candidates, _ = judged
    rows = [(t, s, k) for c in candidates for t, s, k in zip(c["judgements"], c["scores"], c["constrained"])]

    assert any(constrained for _, _, constrained in rows)  # an untrained model writes no score itself
    for text, score, constrained in rows:
        if constrained:
            assert text.endswith(f"Score: {score}"), text
        assert parse_score(text) == score, text


def test_constrained_scores_and_parse_failures_are_reported_and_agree(judged):
    summary, candidates, _ = judged
    metrics = summary["metrics"]
    constrained = sum(k for c in candidates for k in c["constrained"])
    truncated = sum(t for c in candidates for t in c["truncated"])

    assert metrics["constrainedScores"] == constrained > 0
    # Every judgement the model did not score itself is a parse failure, and got a constrained score.
    assert metrics["parseFailures"] == metrics["constrainedScores"]
    assert metrics["truncatedJudgements"] == truncated
    assert metrics["pairs"] + metrics["ties"] + metrics["gapTooSmall"] + metrics["unscored"] == len(CANDIDATES)
