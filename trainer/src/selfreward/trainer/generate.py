"""Stage `generate`: N candidate responses per prompt from the current model, one shard per pod."""

from __future__ import annotations

from typing import Any

from selfreward.trainer.backends import Sampling
from selfreward.trainer.contract import StageConfig
from selfreward.trainer.instruct import PROMPTS_FILE
from selfreward.trainer.progress import Progress
from selfreward.trainer.stagekit import StageResult, run_shards, sampling_seed, shard_folder, shard_items
from selfreward.trainer.storage import Storage

CANDIDATES_FILE = "candidates.jsonl"


def run(config: StageConfig, storage: Storage, backend_for) -> StageResult:
    output = config.output("candidates")
    prompts = storage.read_committed_jsonl(config.input("prompts"), PROMPTS_FILE)
    section = config.section("generation")

    def shard(index: int) -> dict[str, Any]:
        rows = shard_items(prompts, index, config.shard_count)
        backend = backend_for(config.input("model"))
        sampling = Sampling(
            n=section["candidates"],
            temperature=section["temperature"],
            top_p=section["topP"],
            max_tokens=section["maxTokens"],
            seed=sampling_seed(config, index),
        )
        progress = Progress(config.stage.value, index, len(rows) * sampling.n, "responses")
        samples = backend.generate(backend.render_chat([row["prompt"] for row in rows]), sampling, progress)
        progress.finish()
        out = [
            {**row, "candidates": [c.text for c in completions], "truncated": [c.truncated for c in completions]}
            for row, completions in zip(rows, samples, strict=True)
        ]
        texts = [text for row in out for text in row["candidates"]]
        metrics = {
            "prompts": len(out),
            "candidates": len(texts),
            "emptyCandidates": sum(1 for text in texts if not text.strip()),
            "candidateChars": sum(len(text) for text in texts),
            "truncatedCandidates": sum(c.truncated for completions in samples for c in completions),
        }
        folder = shard_folder(output, index, config.shard_count)
        files = storage.write_jsonl_file(folder, CANDIDATES_FILE, out)
        storage.commit(
            folder, files, stage="generate", iteration=config.iteration,
            shard={"index": index, "count": config.shard_count}, metrics=metrics,
        )
        return metrics

    return run_shards(config, storage, output, shard)
