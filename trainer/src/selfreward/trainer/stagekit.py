"""What every stage shares: lineage, shard folders, skip-if-committed-from-the-same-inputs, and
merging shard metrics.

A shard is the unit of commit: `<output>/shard-<i>-of-<n>/` with its `_manifest.json` written
last. Every manifest records the stage's lineage: the program version, the spec sections and
random seed the stage used, and each input's URI and content identity; its hash is the
fingerprint. Rerunning a stage skips every shard whose manifest has the same fingerprint and
reports its recorded metrics, so a crash costs at most the shards that were in flight. A
manifest with another fingerprint was made from something else (an edited spec, seed file or
model): that output is made again, never reused.
"""

from __future__ import annotations

import json
import os
import random
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

from selfreward.trainer.contract import StageConfig
from selfreward.trainer.failures import PermanentFailure
from selfreward.trainer.progress import note
from selfreward.trainer.storage import MANIFEST, ArtifactMissing, Storage, join, sha256_json

Item = TypeVar("Item")
FAILPOINT_ENV = "SELFREWARD_FAILPOINT"  # "<stage>/<shard>" after a shard commit; "checkpoint/<stage>/<step>" mid-checkpoint


class ShardMismatch(PermanentFailure, ValueError):
    """A sharded input does not have the shards its reader was told to expect."""


def program_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("selfreward-trainer")
    except PackageNotFoundError:
        return "unknown"


def lineage_of(config: StageConfig, storage: Storage) -> dict[str, Any]:
    """What this stage is made from, and its fingerprint (the hash of the rest).

    Inputs are recorded with their content identity (Storage.identity), so an input rewritten
    under the same URI (a seed file edited, a model uploaded again, an upstream stage redone)
    changes the fingerprint of everything made from it. A sharded input is recorded by the
    fingerprint of the shards read (what made them), the same whichever shard reads it.
    """

    def described(uri: str) -> dict[str, str]:
        return {"uri": uri, "identity": storage.identity(uri)}

    def described_sharded(name: str, uri: str) -> dict[str, Any]:
        # Shard i when the stage is sharded like its input (judge shard i reads candidates shard i),
        # else every shard.
        count = config.input_shard_count(name)
        read = config.shard_indexes() if count == config.shard_count else list(range(count))
        return {"uri": uri, "identity": sharded_identity(storage, uri, count, read), "shards": count}

    made_from = {
        "program": f"selfreward-trainer {program_version()}",
        "stage": config.stage.value,
        "randomSeed": config.random_seed,
        "spec": config.spec,
        "inputs": {
            name: [described(uri) for uri in value] if isinstance(value, list)
            else described_sharded(name, value) if name in config.input_shards else described(value)
            for name, value in sorted(config.inputs.items())
        },
    }
    return {"fingerprint": sha256_json(made_from), "lineage": made_from}


def sharded_identity(storage: Storage, folder: str, count: int, read: list[int]) -> str:
    """A sharded input (candidates, pairs) as a stage reads it: the fingerprints its shards `read`
    were made with. Not its files: in a Job whose pod i runs generate then judge of shard i, a
    sibling's candidates may not exist yet, and every shard of a consistent artifact carries the
    same fingerprint, so any shards read give the same identity once it is consistent."""
    made = {(storage.read_manifest(shard_folder(folder, index, count)) or {}).get("fingerprint", "") for index in read}
    return sha256_json({"shards": count, "fingerprints": sorted(made)})


def changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """What differs between two lineages, as field paths: ["spec.judge.samples: 3 -> 2", ...]."""
    if not old:
        return ["made before lineage was recorded"]
    found: list[str] = []

    def walk(path: str, before: Any, after: Any) -> None:
        if isinstance(before, dict) and isinstance(after, dict):
            for key in sorted(set(before) | set(after)):
                walk(f"{path}.{key}" if path else key, before.get(key), after.get(key))
        elif before != after:
            shown = (lambda v: str(v)[:12]) if path.endswith("identity") else json_short
            found.append(f"{path}: {shown(before)} -> {shown(after)}")

    walk("", old, new)
    return found


def json_short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def reusable(manifest: dict[str, Any] | None, stamp: dict[str, Any], stage: str, shard: int, what: str) -> bool:
    """A committed output is reused only when it was made from the same inputs; says why not."""
    if manifest is None:
        return False
    if manifest.get("fingerprint") == stamp["fingerprint"]:
        return True
    changed = "; ".join(changes(manifest.get("lineage"), stamp["lineage"])[:5])
    note(stage, f"{what} was made from other inputs ({changed}): making it again", shard=shard)
    return False


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
        if reusable(manifest, storage.lineage, config.stage.value, index, f"shard {index}"):
            note(config.stage.value, f"shard {index} already committed, skipped", shard=index)
            result.shards.append(ShardResult(index, True, manifest.get("metrics", {})))
            continue
        storage.delete_folder(folder)  # what a stale or torn earlier run left there
        result.shards.append(ShardResult(index, False, work(index)))
        failpoint(config.stage.value, f"{config.stage.value}/{index}")
    return result


def failpoint(stage: str, name: str) -> None:
    """For crash tests: stop at `name`, as if the machine froze, until the process is killed."""
    if os.environ.get(FAILPOINT_ENV) == name:
        note(stage, f"failpoint {name} reached, waiting to be killed")
        threading.Event().wait()


def run_single(config: StageConfig, storage: Storage, folder: str, work: Callable[[], dict[str, Any]],
               owner: bool = True) -> StageResult:
    """A stage with one output folder (instruct, sft, dpo, evaluate). Of several processes that
    run it together (training), only the `owner` clears what an earlier run left."""
    manifest = storage.read_manifest(folder)
    if reusable(manifest, storage.lineage, config.stage.value, 0, "the committed output"):
        note(config.stage.value, "already committed, skipped", shard=0)
        return StageResult([ShardResult(0, True, manifest.get("metrics", {}))])
    if owner:
        storage.delete_folder(folder)  # what a stale or torn earlier run left there
    return StageResult([ShardResult(0, False, work())])


def read_sharded(storage: Storage, folder: str, name: str, count: int) -> list[dict[str, Any]]:
    """All rows of the `count` shards of a sharded output; refuses a partial or mixed stage.

    Only `shard-<i>-of-<count>` folders are read, so shards of an earlier run with another
    shard count are ignored; all of them must be committed, from the same inputs.
    """
    manifests = [storage.read_manifest(shard_folder(folder, index, count)) for index in range(count)]
    missing = [index for index, manifest in enumerate(manifests) if manifest is None]
    if len(missing) == count:
        others = sorted({uri.rsplit("/", 2)[-2] for uri in storage.list(folder) if uri.endswith(f"/{MANIFEST}")})
        if others:
            raise ShardMismatch(f"{folder}: expected {count} shards (shard-*-of-{count:05d}) but found only {others[:4]}")
        raise ArtifactMissing(f"{folder}: no committed shards")
    if missing:
        raise ArtifactMissing(f"{folder}: {count - len(missing)} of {count} shards committed, missing {missing}")
    fingerprints = {manifest.get("fingerprint") for manifest in manifests}
    if len(fingerprints) != 1:
        raise ShardMismatch(f"{folder}: its {count} shards were made from different inputs; rerun the stage that makes it")
    return [row for index in range(count) for row in storage.read_committed_jsonl(shard_folder(folder, index, count), name)]
