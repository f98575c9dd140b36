"""What every stage shares: shard folders, skip-if-committed, and merging shard metrics.

A shard is the unit of commit: `<output>/shard-<i>-of-<n>/` with its `_manifest.json` written
last. Rerunning a stage skips every shard whose manifest exists and reports its recorded metrics,
so a crash costs at most the shards that were in flight.
"""

from __future__ import annotations

import os
import random
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

from selfreward.trainer.contract import StageConfig
from selfreward.trainer.progress import note
from selfreward.trainer.storage import MANIFEST, Storage, join

Item = TypeVar("Item")
FAILPOINT_ENV = "SELFREWARD_FAILPOINT"  # "<stage>/<shard>": block after committing that shard


@dataclass
class ShardResult:
    index: int
    skipped: bool
    metrics: dict[str, Any]


@dataclass
class StageResult:
    shards: list[ShardResult] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        return merge_metrics([shard.metrics for shard in self.shards])


def shard_folder(output: str, index: int, count: int) -> str:
    return join(output, f"shard-{index:05d}-of-{count:05d}")


def shard_items(items: Sequence[Item], index: int, count: int) -> list[Item]:
    """Round-robin assignment: stable for a given count, balanced within one item."""
    return list(items[index::count])


def merge_metrics(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Sum numeric metrics over shards (shard metrics are counts and sums by contract)."""
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                merged[key] = merged.get(key, 0) + value
            else:
                merged.setdefault(key, value)
    return merged


def rng_for(config: StageConfig, *salt: object) -> random.Random:
    return random.Random(f"{config.random_seed}/{config.iteration}/{config.stage.value}/" + "/".join(map(str, salt)))


def sampling_seed(config: StageConfig, shard: int) -> int:
    return (config.random_seed * 1_000_003 + config.iteration * 10_007 + shard * 101) % (2**31)


def run_shards(
    config: StageConfig,
    storage: Storage,
    commit_folder: str,
    work: Callable[[int], dict[str, Any]],
) -> StageResult:
    """Run `work(shard)` for each pending shard; `commit_folder` is the output whose manifest marks it done."""
    result = StageResult()
    for index in config.shard_indexes():
        folder = shard_folder(commit_folder, index, config.shard_count)
        manifest = storage.read_manifest(folder)
        if manifest is not None:
            note(config.stage.value, f"shard {index} already committed, skipped", shard=index)
            result.shards.append(ShardResult(index, True, manifest.get("metrics", {})))
            continue
        result.shards.append(ShardResult(index, False, work(index)))
        _failpoint(config.stage.value, index)
    return result


def _failpoint(stage: str, shard: int) -> None:
    """For crash tests: stop here, as if the machine froze, until the process is killed."""
    if os.environ.get(FAILPOINT_ENV) == f"{stage}/{shard}":
        note(stage, f"failpoint {stage}/{shard} reached, waiting to be killed", shard=shard)
        threading.Event().wait()


def run_single(config: StageConfig, storage: Storage, folder: str, work: Callable[[], dict[str, Any]]) -> StageResult:
    """A stage with one output folder (instruct, sft, dpo, evaluate)."""
    manifest = storage.read_manifest(folder)
    if manifest is not None:
        note(config.stage.value, "already committed, skipped", shard=0)
        return StageResult([ShardResult(0, True, manifest.get("metrics", {}))])
    return StageResult([ShardResult(0, False, work())])


def read_sharded(storage: Storage, folder: str, name: str) -> list[dict[str, Any]]:
    """All rows of a sharded output, every shard committed; refuses a partial stage."""
    shards = sorted({uri.rsplit("/", 2)[-2] for uri in storage.list(folder) if uri.endswith(f"/{MANIFEST}")})
    if not shards:
        raise FileNotFoundError(f"{folder}: no committed shards")
    counts = {shard.rsplit("-of-", 1)[-1] for shard in shards}
    expected = int(next(iter(counts)))
    if len(counts) != 1 or len(shards) != expected:
        raise FileNotFoundError(f"{folder}: {len(shards)} of {expected} shards committed")
    return [row for shard in shards for row in storage.read_committed_jsonl(join(folder, shard), name)]
