"""Stage `judge`: the current model scores its own candidates; the shard's pairs are built here too.

Per shard it writes `pairs/shard-*/` (committed first) and `judgements/shard-*/` (committed
last: the judge shard is done when its judgements manifest exists).
"""

from __future__ import annotations

from typing import Any

from selfreward.trainer.contract import StageConfig
from selfreward.trainer.generate import CANDIDATES_FILE
from selfreward.trainer.judging import judge_responses, judgement_counts, score_counts
from selfreward.trainer.pairs import DropReason, JudgedCandidate, mean_score, select_pair
from selfreward.trainer.progress import Progress
from selfreward.trainer.stagekit import ShardMismatch, StageResult, run_shards, sampling_seed, shard_folder
from selfreward.trainer.storage import Storage

JUDGEMENTS_FILE = "judgements.jsonl"
PAIRS_FILE = "pairs.jsonl"


def run(config: StageConfig, storage: Storage, backend_for) -> StageResult:
    judgements_out = config.output("judgements")
    pairs_out = config.output("pairs")
    if config.input_shard_count("candidates") != config.shard_count:
        raise ShardMismatch(
            f"judge runs {config.shard_count} shards but its candidates were generated in "
            f"{config.input_shard_count('candidates')}: judge shard i reads candidates shard i"
        )
    section = config.section("judge")
    min_gap = config.section("pairs")["minScoreGap"]
    min_valid = config.section("pairs")["minValidJudgements"]

    def shard(index: int) -> dict[str, Any]:
        rows = storage.read_committed_jsonl(shard_folder(config.input("candidates"), index, config.shard_count), CANDIDATES_FILE)
        items = [(row["prompt"], text) for row in rows for text in row["candidates"]]
        backend = backend_for(config.input("model"))
        progress = Progress(config.stage.value, index, len(items) * section["samples"], "judgements")
        judged = judge_responses(backend, items, section, sampling_seed(config, index), progress)
        progress.finish()

        judgement_rows, pair_rows, decisions = [], [], []
        position = 0
        for row in rows:
            per_candidate = judged[position : position + len(row["candidates"])]
            position += len(row["candidates"])
            candidates = [
                JudgedCandidate(number, text, tuple(j.score for j in judgements))
                for number, (text, judgements) in enumerate(zip(row["candidates"], per_candidate))
            ]
            decision = select_pair(candidates, min_gap, min_valid)
            decisions.append(decision)
            judgement_rows.append({
                "id": row["id"],
                "prompt": row["prompt"],
                "candidates": [
                    {
                        "text": c.text,
                        "scores": list(c.scores),
                        "mean": mean_score(c.scores, min_valid),
                        "judgements": [j.text for j in js],
                        "constrained": [j.constrained for j in js],
                        "truncated": [j.truncated for j in js],
                    }
                    for c, js in zip(candidates, per_candidate)
                ],
                "pair": "kept" if decision.kept else decision.drop_reason.value,
            })
            if decision.kept:
                pair_rows.append({
                    "id": row["id"],
                    "prompt": row["prompt"],
                    "chosen": decision.chosen.text,
                    "rejected": decision.rejected.text,
                    "chosenScore": decision.chosen.mean_score,
                    "rejectedScore": decision.rejected.mean_score,
                })

        flat = [j for per in judged for j in per]
        low, high = section["scoreRange"]["min"], section["scoreRange"]["max"]
        metrics = {
            "prompts": len(rows),
            "candidates": len(items),
            "judgements": len(flat),
            **judgement_counts(flat),
            "pairs": len(pair_rows),
            "ties": sum(1 for d in decisions if d.drop_reason is DropReason.TIE),
            "gapTooSmall": sum(1 for d in decisions if d.drop_reason is DropReason.SCORE_GAP),
            "unscored": sum(1 for d in decisions if d.drop_reason is DropReason.UNSCORED),
            "chosenScoreSum": sum(p["chosenScore"] for p in pair_rows),
            "rejectedScoreSum": sum(p["rejectedScore"] for p in pair_rows),
            "chosenChars": sum(len(p["chosen"]) for p in pair_rows),
            "rejectedChars": sum(len(p["rejected"]) for p in pair_rows),
            **score_counts(flat, low, high),
        }
        shard_meta = {"index": index, "count": config.shard_count}
        pairs_folder = shard_folder(pairs_out, index, config.shard_count)
        files = storage.write_jsonl_file(pairs_folder, PAIRS_FILE, pair_rows)
        storage.commit(pairs_folder, files, stage="judge", iteration=config.iteration, shard=shard_meta,
                       counts={"pairs": len(pair_rows)})
        folder = shard_folder(judgements_out, index, config.shard_count)
        files = storage.write_jsonl_file(folder, JUDGEMENTS_FILE, judgement_rows)
        storage.commit(folder, files, stage="judge", iteration=config.iteration, shard=shard_meta, metrics=metrics)
        return metrics

    return run_shards(config, storage, judgements_out, shard)
