"""Training checkpoints as committed artifacts: in the run's storage, manifest last, resumable anywhere.

Every `checkpointEvery` optimizer steps the trainer saves a full checkpoint (weights, optimizer,
scheduler, RNG state) to local scratch; one process per node uploads that node's files to
`iter-NN/checkpoints/checkpoint-<step>/` (with ZeRO each node holds its own processes' shards),
and world rank 0 writes the manifest last, listing every node's files, stamped with the stage's
fingerprint, and removes older checkpoints of the stage. A new attempt, on this machine or in a
pod on another node, resumes from the newest committed checkpoint with the same fingerprint; a
checkpoint torn by a crash mid-upload has no manifest and is never chosen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from selfreward.trainer import nodelocal
from selfreward.trainer.progress import note
from selfreward.trainer.stagekit import failpoint
from selfreward.trainer.storage import MANIFEST, Storage, join

_CHECKPOINT = re.compile(r"/checkpoint-(\d+)/" + re.escape(MANIFEST) + "$")


@dataclass(frozen=True)
class Committed:
    step: int
    uri: str


def folder(root: str, step: int) -> str:
    return join(root, f"checkpoint-{step}")


def committed(storage: Storage, root: str) -> list[Committed]:
    """Checkpoints under `root` with a manifest, oldest first."""
    found = []
    for uri in storage.list(root):
        match = _CHECKPOINT.search(uri)
        if match:
            found.append(Committed(int(match[1]), folder(root, int(match[1]))))
    return sorted(found, key=lambda c: c.step)


def latest(storage: Storage, root: str, fingerprint: str, layout: dict[str, int]) -> Committed | None:
    """The newest committed checkpoint made by this very stage (same fingerprint) that this
    process layout can read (ZeRO partitions optimizer state by process: same stage and count)."""
    for checkpoint in reversed(committed(storage, root)):
        manifest = storage.read_manifest(checkpoint.uri)
        if manifest is None or manifest.get("fingerprint") != fingerprint:
            continue
        if manifest.get("layout", layout) != layout:
            note(manifest.get("stage", "train"), f"checkpoint at step {checkpoint.step} was saved with {manifest['layout']}; "
                 f"this attempt runs with {layout} and cannot read it")
            continue
        return checkpoint
    return None


def download(storage: Storage, checkpoint: Committed, scratch: Path) -> Path:
    """A local copy of a committed checkpoint (in a fresh scratch folder), every file checked
    against its manifest; the training processes of a node download it once."""
    return nodelocal.filled_once(scratch / f"checkpoint-{checkpoint.step}",
                                 lambda target: storage.download_committed(checkpoint.uri, target))


def upload(storage: Storage, root: str, local: Path, step: int) -> dict[str, str]:
    """Upload this node's part of a saved checkpoint (with several nodes, each holds the ZeRO
    shards of its own processes); returns {name: sha256} of what it uploaded."""
    return storage.upload_folder(local, folder(root, step))


def commit(storage: Storage, root: str, parts: list[dict[str, str]], step: int, stage: str,
           layout: dict[str, int]) -> None:
    """Write the manifest of a checkpoint every node has uploaded its part of, then drop every
    other checkpoint of the stage. Nodes may upload the same file (the same bytes), never two
    versions of it."""
    uri = folder(root, step)
    files: dict[str, str] = {}
    for part in parts:
        for name, digest in part.items():
            if files.setdefault(name, digest) != digest:  # two nodes wrote one key: storage kept one of them
                raise ValueError(f"checkpoint {step}: two nodes saved different {name}")
    failpoint(stage, f"checkpoint/{stage}/{step}")
    storage.commit(uri, files, stage=stage, step=step, layout=layout)
    note(stage, f"checkpoint at step {step} committed to {uri}")
    remove_all(storage, root, keep=uri)


def remove_all(storage: Storage, root: str, keep: str | None = None) -> None:
    """Delete the stage's checkpoints (committed or torn), except `keep`."""
    checkpoints = {join(root, uri[len(root) :].strip("/").split("/", 1)[0]) for uri in storage.list(root)}
    for checkpoint in sorted(checkpoints):
        if checkpoint != keep:
            storage.delete_folder(checkpoint)
