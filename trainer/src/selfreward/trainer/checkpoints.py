"""Training checkpoints as committed artifacts: in the run's storage, manifest last, resumable anywhere.

Every `checkpointEvery` optimizer steps the trainer saves a full checkpoint (weights, optimizer,
scheduler, RNG state) to local scratch; world rank 0 then uploads it to
`iter-NN/checkpoints/checkpoint-<step>/` and writes its manifest last, stamped with the stage's
fingerprint, and removes older checkpoints of the stage. A new attempt, on this machine or in a
pod on another node, resumes from the newest committed checkpoint with the same fingerprint; a
checkpoint torn by a crash mid-upload has no manifest and is never chosen.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

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


def latest(storage: Storage, root: str, fingerprint: str) -> Committed | None:
    """The newest committed checkpoint made by this very stage (same fingerprint)."""
    for checkpoint in reversed(committed(storage, root)):
        manifest = storage.read_manifest(checkpoint.uri)
        if manifest is not None and manifest.get("fingerprint") == fingerprint:
            return checkpoint
    return None


def download(storage: Storage, checkpoint: Committed, scratch: Path) -> Path:
    """A fresh local copy of a committed checkpoint, every file checked against its manifest."""
    target = scratch / f"checkpoint-{checkpoint.step}"
    shutil.rmtree(target, ignore_errors=True)
    return storage.download_committed(checkpoint.uri, target)


def commit(storage: Storage, root: str, local: Path, step: int, stage: str) -> None:
    """Upload a saved checkpoint, manifest last, then drop every other checkpoint of the stage."""
    uri = folder(root, step)
    files = storage.upload_folder(local, uri)
    failpoint(stage, f"checkpoint/{stage}/{step}")
    storage.commit(uri, files, stage=stage, step=step)
    note(stage, f"checkpoint at step {step} committed to {uri}")
    remove_all(storage, root, keep=uri)


def remove_all(storage: Storage, root: str, keep: str | None = None) -> None:
    """Delete the stage's checkpoints (committed or torn), except `keep`."""
    checkpoints = {join(root, uri[len(root) :].strip("/").split("/", 1)[0]) for uri in storage.list(root)}
    for checkpoint in sorted(checkpoints):
        if checkpoint != keep:
            storage.delete_folder(checkpoint)
