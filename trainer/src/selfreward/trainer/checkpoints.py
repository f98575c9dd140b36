"""Training checkpoints as committed artifacts: in the run's storage, manifest last, resumable anywhere.

Every `checkpointEvery` optimizer steps the trainer saves a full checkpoint (weights, optimizer,
scheduler, RNG state) to local scratch; one process per node uploads that node's files to
`iter-NN/checkpoints/checkpoint-<step>/` (with ZeRO each node holds its own processes' shards),
and world rank 0 writes the manifest last, listing every node's files, stamped with the stage's
fingerprint, and removes older checkpoints of the stage. A new attempt, on this machine or in a
pod on another node, resumes from the newest committed checkpoint with the same fingerprint; a
checkpoint torn by a crash mid-upload has no manifest and is never chosen.

Uploads run in the background (`Uploads`) while training goes on: only the local save stays on
the training's critical path. With several nodes, each node's uploader leaves a marker with its
files under `_parts/` when done, and world rank 0's uploader commits once every node's is there,
without a collective outside the training's own thread.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from selfreward.trainer import nodelocal
from selfreward.trainer.progress import note
from selfreward.trainer.stagekit import failpoint
from selfreward.trainer.storage import MANIFEST, Storage, join

PARTS = "_parts"
PART_POLL_SECONDS = 2.0
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


class Uploads:
    """This process's checkpoint uploads, in a background thread, one at a time.

    `start` hard-links the saved checkpoint into `scratch` (the Trainer may delete its own copy
    when it saves the next one) and uploads from there; `finish` waits for the upload and returns
    its error, if any. Every process calls `finish` at the same points (before the next save, at
    the end of training), so the training can tell all of them about a failure together.
    """

    def __init__(self, storage: Storage, root: str, stage: str, layout: dict[str, int], scratch: Path, *,
                 node: int, nodes: int, commits: bool, part_timeout: float):
        self.storage, self.root, self.stage, self.layout, self.scratch = storage, root, stage, layout, scratch
        self.node, self.nodes, self.commits, self.part_timeout = node, nodes, commits, part_timeout
        self._thread: threading.Thread | None = None
        self._error: str | None = None
        self._cleared: str | None = None  # why clearing the checkpoint's folder failed, if it did
        self.upload_seconds = 0.0  # spent uploading and committing, in the background
        self.wait_seconds = 0.0  # the training's own time on checkpoints past the save: links, waits

    def clear(self, step: int) -> None:
        """Remove what an earlier attempt left of checkpoint `step` (a torn upload, its nodes'
        markers), so that only this attempt's parts are committed. World rank 0 calls it before
        the barrier after which the nodes upload."""
        if self.commits:
            try:
                self.storage.delete_folder(folder(self.root, step))
            except Exception as error:  # reported by finish() through start(), like an upload's
                self._cleared = f"{type(error).__name__}: clearing checkpoint {step} before its upload: {error}"

    def start(self, local: Path, step: int) -> None:
        """Upload `local` in the background. Never raises: an error here is reported by
        `finish`, as an upload's is, so that every process learns of it at the same point."""
        if self._thread is not None:
            raise RuntimeError("checkpoint upload started while another is in flight: call finish first")
        started = time.monotonic()
        links = self.scratch / f"checkpoint-{step}"
        self._error, self._cleared = self._cleared, None
        if self._error:
            return
        try:
            shutil.rmtree(links, ignore_errors=True)
            shutil.copytree(local, links, copy_function=os.link)
        except OSError as error:
            self._error = f"{type(error).__name__}: linking checkpoint {step} aside for its upload: {error}"
            shutil.rmtree(links, ignore_errors=True)
            self._tell_the_committer(step)
            return
        self._thread = threading.Thread(target=self._upload, args=(links, step), name=f"checkpoint-{step}", daemon=True)
        self._thread.start()
        self.wait_seconds += time.monotonic() - started

    def finish(self) -> str | None:
        if self._thread is not None:
            started = time.monotonic()
            self._thread.join()
            self._thread = None
            self.wait_seconds += time.monotonic() - started
        return self._error

    def _upload(self, links: Path, step: int) -> None:
        started = time.monotonic()
        try:
            files = upload(self.storage, self.root, links, step)
            if self.nodes > 1:
                self.storage.write_text(join(folder(self.root, step), PARTS, f"node-{self.node}.json"),
                                        json.dumps({"files": files}))
            if self.commits:
                parts = [files] if self.nodes == 1 else self._every_part(step)
                commit(self.storage, self.root, parts, step, self.stage, self.layout)
        except Exception as error:  # reported by finish(), in the training's own thread
            self._error = f"{type(error).__name__}: {error}"
            self._tell_the_committer(step)
        finally:
            shutil.rmtree(links, ignore_errors=True)
            self.upload_seconds += time.monotonic() - started

    def _tell_the_committer(self, step: int) -> None:
        """Leave this node's error as its marker, so that world rank 0 stops waiting for its part."""
        if self.nodes > 1 and not self.commits:
            try:
                self.storage.write_text(join(folder(self.root, step), PARTS, f"node-{self.node}.json"),
                                        json.dumps({"error": self._error}))
            except Exception:  # storage itself is failing: world rank 0 waits out part_timeout
                pass

    def _every_part(self, step: int) -> list[dict[str, str]]:
        """Every node's files of checkpoint `step`, once each node's marker is there."""
        parts = join(folder(self.root, step), PARTS)
        deadline = time.monotonic() + self.part_timeout
        while True:
            markers = sorted(self.storage.list(parts))
            found = [json.loads(self.storage.read_text(uri)) for uri in markers]
            failed = [f"{uri.rsplit('/', 1)[1]}: {part['error']}" for uri, part in zip(markers, found) if "error" in part]
            if failed:
                raise RuntimeError(f"checkpoint {step}: a node could not upload its part ({failed[0]})")
            if len(found) >= self.nodes:
                return [part["files"] for part in found]
            if time.monotonic() > deadline:
                raise TimeoutError(f"checkpoint {step}: {len(found)} of {self.nodes} nodes uploaded their part "
                                   f"within {self.part_timeout:.0f} s")
            time.sleep(PART_POLL_SECONDS)
