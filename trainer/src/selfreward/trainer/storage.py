"""The only module that touches artifact storage: local paths, s3:// (boto3 + s3transfer), hf://.

Artifacts are committed manifest-last: a stage writes its files, then `_manifest.json` with the
sha256 of each, and the lineage of what made them (see stagekit). A folder without a manifest is
incomplete, whatever files it holds, and is never read as a result. Local writes go through a
temporary name and a rename; an S3 PUT is atomic per object. Credentials come from the
environment (AWS_ACCESS_KEY_ID, ...), never from the config.

Models are the one exception to manifest-last: a base model is a plain Hugging Face folder that a
user uploaded with any tool. It is checked for its files (model_folder.py) and verified by sha256
only where a manifest exists.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from contextlib import closing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from selfreward.trainer import model_folder
from selfreward.trainer.failures import PermanentFailure
from selfreward.trainer.nodelocal import exclusive

MANIFEST = "_manifest.json"
CACHE_ENV = "SELFREWARD_CACHE"
HUB_SCHEME = "hf://"
# Parts in flight at once for one folder's transfer, all its files sharing them (a model's
# shards move side by side); also the S3 client's connection pool.
TRANSFER_CONCURRENCY = 16
# Uploads: s3transfer multipart in 32 MiB parts read in 1 MiB pieces (3.0 s instead of 4.7 s
# for 3 GiB with its 8 MiB / 256 KiB defaults, bench/s3_model_loading.py, 2 cores). Downloads:
# ranged GETs of the same part size, each written at its offset in 128 KiB pieces: a write
# holds the file's inode lock while it copies, and with 1 MiB pieces the other parts' threads
# spent more CPU spinning on that lock than copying (2.4 s for 3 GiB at 128 KiB, 4-8 s at 1 MiB).
TRANSFER_PART_BYTES = 32 * 2**20
UPLOAD_READ_BYTES = 2**20
DOWNLOAD_WRITE_BYTES = 128 * 2**10
# A part whose stream breaks off is fetched again, this many times in all.
PART_ATTEMPTS = 5


@dataclass(frozen=True)
class StorageOptions:
    endpoint: str | None = None
    region: str | None = None
    addressing_style: str = "auto"


class ArtifactMissing(FileNotFoundError):
    """An input that should exist does not (or has no manifest yet)."""


class IntegrityError(PermanentFailure, ValueError):
    """A committed file no longer matches the sha256 its manifest recorded."""


class ObjectChanged(OSError):
    """An S3 object was replaced while it was being downloaded: a new attempt lists it again."""


class ModelFolderError(PermanentFailure, ValueError):
    """A model URI does not hold a loadable Hugging Face folder."""


class ModelUnavailable(PermanentFailure, RuntimeError):
    """An hf:// model cannot be fetched: no hub is reachable, or the hub refused."""


def join(base: str, *parts: str) -> str:
    uri = base.rstrip("/")
    for part in parts:
        uri = f"{uri}/{part.strip('/')}"
    return uri


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_files(paths: list[Path]) -> list[str]:
    """sha256 of each file, several at once (hashlib releases the GIL on large reads)."""
    with ThreadPoolExecutor(max_workers=max(1, min(len(paths), os.cpu_count() or 1))) as pool:
        return list(pool.map(sha256_file, paths))


def sha256_json(value: Any) -> str:
    return sha256_bytes(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())


@dataclass(frozen=True)
class ModelListing:
    """A model folder as found: {relative name: size and version tag}, and its manifest if committed."""

    uri: str
    files: dict[str, str]
    manifest: dict[str, Any] | None

    @property
    def identity(self) -> str:
        """Content identity, the rule of Storage.identity: the manifest's hashes when committed,
        else names, sizes and ETags/mtimes; an hf:// model by its URI."""
        if self.uri.startswith(HUB_SCHEME):
            return sha256_json(self.uri)
        return sha256_json(self.manifest["files"] if self.manifest is not None else self.files)


class Storage:
    """Read and write artifacts by URI. One instance per process; the S3 client is made lazily.

    `lineage` (set with `with_lineage`) is written into every manifest this instance commits:
    the stage's fingerprint and the inputs it was made from.
    """

    def __init__(self, options: StorageOptions | None = None):
        self.options = options or StorageOptions()
        self.lineage: dict[str, Any] | None = None
        self._client = None
        self._verified: dict[str, tuple[str, Path]] = {}  # model URI -> (identity, local folder), per process

    def with_lineage(self, lineage: dict[str, Any] | None) -> "Storage":
        """The same storage (and S3 client), committing manifests stamped with `lineage`."""
        stamped = copy.copy(self)
        stamped.lineage = lineage
        return stamped

    # ---- S3 client -------------------------------------------------------------------------
    @property
    def s3(self):
        if self._client is None:
            import boto3
            from botocore.config import Config

            style = self.options.addressing_style
            if style == "auto" and self.options.endpoint:
                style = "path"
            self._client = boto3.client(
                "s3",
                endpoint_url=self.options.endpoint or None,
                region_name=self.options.region or None,
                config=Config(s3={"addressing_style": style}, retries={"max_attempts": 5, "mode": "standard"},
                              max_pool_connections=TRANSFER_CONCURRENCY),
            )
        return self._client

    def _upload_all(self, submit) -> None:
        """Run `submit(manager)`'s uploads on one s3transfer manager, so every file of a folder
        moves at once; raises the first upload's error once all have ended."""
        from boto3.s3.transfer import TransferConfig, create_transfer_manager

        config = TransferConfig(max_concurrency=TRANSFER_CONCURRENCY, multipart_chunksize=TRANSFER_PART_BYTES,
                                io_chunksize=UPLOAD_READ_BYTES)
        with create_transfer_manager(self.s3, config) as manager:
            futures = submit(manager)
        for future in futures:
            future.result()

    def _get_objects(self, objects: list[tuple[str, str, Path]]) -> None:
        """Download S3 objects, each (uri, listed "size/ETag", local path), as ranged GETs of
        TRANSFER_PART_BYTES: TRANSFER_CONCURRENCY in flight across all of them, each part written
        at its offset as it arrives. Every GET names the listed ETag (If-Match), so an object
        replaced meanwhile fails with ObjectChanged instead of mixing two versions.

        Not s3transfer's download: it funnels every write through one I/O thread and a queue,
        which cost 4.2 s of CPU for 3 GiB on 2 cores against 2.4 s for s5cmd (bench/README.md)."""
        parts, handles = [], []
        try:
            for uri, listed, path in objects:
                size, _, etag = listed.partition("/")
                handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                handles.append(handle)
                os.ftruncate(handle, int(size))
                parts.append([(uri, etag, handle, start, min(int(size), start + TRANSFER_PART_BYTES))
                              for start in range(0, int(size), TRANSFER_PART_BYTES)])
            # Files take turns (each one's first part, then each one's second, ...): the parts in
            # flight spread over the files instead of queueing on one file's inode lock.
            parts = [part for turn in itertools.zip_longest(*parts) for part in turn if part is not None]
            pool = ThreadPoolExecutor(TRANSFER_CONCURRENCY)
            try:
                for future in [pool.submit(self._get_part, *part) for part in parts]:
                    future.result()
            finally:
                pool.shutdown(cancel_futures=True)
        finally:
            for handle in handles:
                os.close(handle)

    def _get_part(self, uri: str, etag: str, handle: int, start: int, end: int) -> None:
        from botocore.exceptions import ClientError, ReadTimeoutError, ResponseStreamingError

        bucket, key = _split_s3(uri)
        for _ in range(PART_ATTEMPTS):
            position = start
            try:
                answer = self.s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}", IfMatch=f'"{etag}"')
                with closing(answer["Body"]) as body:
                    while position < end and (piece := body.read(min(DOWNLOAD_WRITE_BYTES, end - position))):
                        if os.pwrite(handle, piece, position) != len(piece):
                            raise OSError(f"{uri}: short write at byte {position} (disk full?)")
                        position += len(piece)
                if position == end:
                    return
                broke_off = f"the stream ended at byte {position}"
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                    raise ObjectChanged(f"{uri} was replaced while it was being downloaded (no longer ETag {etag})") from error
                raise
            except (ResponseStreamingError, ReadTimeoutError) as error:
                broke_off = str(error)
        raise OSError(f"{uri}: bytes {start}-{end - 1} broke off {PART_ATTEMPTS} times, last: {broke_off}")

    # ---- bytes -----------------------------------------------------------------------------
    def read_bytes(self, uri: str) -> bytes:
        if is_s3(uri):
            bucket, key = _split_s3(uri)
            try:
                return self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except self.s3.exceptions.NoSuchKey as error:
                raise ArtifactMissing(uri) from error
        try:
            return Path(uri).read_bytes()
        except (FileNotFoundError, NotADirectoryError) as error:
            raise ArtifactMissing(uri) from error

    def write_bytes(self, uri: str, data: bytes) -> None:
        if is_s3(uri):
            bucket, key = _split_s3(uri)
            self.s3.put_object(Bucket=bucket, Key=key, Body=data)
            return
        path = Path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp.name, path)

    def read_text(self, uri: str) -> str:
        return self.read_bytes(uri).decode("utf-8")

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))

    def list(self, prefix: str) -> Iterator[str]:
        """URIs of every object under `prefix` (recursive)."""
        for name in self._sizes(prefix):
            yield join(prefix, name)

    def _sizes(self, prefix: str) -> dict[str, str]:
        """{name relative to `prefix`: "size/version"} of every object under it; the version is
        the ETag on S3 and the modification time locally, so a rewritten file changes it."""
        if is_s3(prefix):
            bucket, key = _split_s3(prefix.rstrip("/") + "/")
            found = {}
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                for item in page.get("Contents", []):
                    if not item["Key"].endswith("/"):  # "folder" markers some S3 tools create
                        found[item["Key"][len(key) :]] = f"{item['Size']}/{item['ETag'].strip(chr(34))}"
            return dict(sorted(found.items()))
        root = Path(prefix)
        if not root.is_dir():
            return {}
        return {
            path.relative_to(root).as_posix(): f"{path.stat().st_size}/{path.stat().st_mtime_ns}"
            for path in sorted(root.rglob("*"))
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
        }

    def delete_folder(self, folder: str) -> None:
        """Remove a folder, its manifest first: an interrupted delete leaves an uncommitted folder."""
        manifest = join(folder, MANIFEST)
        if is_s3(folder):
            bucket, key = _split_s3(manifest)
            self.s3.delete_object(Bucket=bucket, Key=key)
            names = [name for name in self._sizes(folder) if name != MANIFEST]
            for start in range(0, len(names), 1000):
                keys = [{"Key": _split_s3(join(folder, name))[1]} for name in names[start : start + 1000]]
                answer = self.s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
                if answer.get("Errors"):
                    first = answer["Errors"][0]
                    raise OSError(f"{folder}: {len(answer['Errors'])} objects not deleted, e.g. {first.get('Key')}: {first.get('Code')}")
            return
        Path(manifest).unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)

    # ---- manifests -------------------------------------------------------------------------
    def read_manifest(self, folder: str) -> dict[str, Any] | None:
        """The folder's manifest, or None when the folder is not committed."""
        try:
            return json.loads(self.read_text(join(folder, MANIFEST)))
        except ArtifactMissing:
            return None

    def commit(self, folder: str, files: dict[str, str], **content: Any) -> dict[str, Any]:
        """Write the manifest of `folder` last. `files` maps names in the folder to sha256. On S3
        the manifest also records each file's ETag as listed now, so that a download can prove a
        file is the committed one without hashing it again."""
        manifest = {
            "files": dict(sorted(files.items())),
            "committedAt": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **(self.lineage or {}),
            **content,
        }
        if is_s3(folder):
            listed = self._sizes(folder)
            manifest["etags"] = {name: _etag(listed[name]) for name in sorted(files) if name in listed}
        self.write_text(join(folder, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return manifest

    def write_jsonl_file(self, folder: str, name: str, rows: list[dict[str, Any]]) -> dict[str, str]:
        """Write rows as `folder/name`; returns {name: sha256} for the manifest."""
        data = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
        self.write_bytes(join(folder, name), data)
        return {name: sha256_bytes(data)}

    def read_committed_jsonl(self, folder: str, name: str) -> list[dict[str, Any]]:
        """Rows of `folder/name`, after checking the folder is committed and the file's hash."""
        manifest = self.read_manifest(folder)
        if manifest is None:
            raise ArtifactMissing(f"{folder} has no {MANIFEST}: its stage has not finished")
        data = self.read_bytes(join(folder, name))
        _verify(join(folder, name), manifest["files"].get(name), sha256_bytes(data))
        return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]

    def identity(self, uri: str) -> str:
        """What `uri` holds now, as a hash: a committed folder by its manifest's file hashes, a file
        by its sha256, a plain folder (an uploaded model) by names, sizes and versions. An hf://
        model is known by its URI alone: pin a revision (hf://org/name@sha) to make it exact."""
        if uri.startswith(HUB_SCHEME):
            return ModelListing(uri, {}, None).identity
        manifest = self.read_manifest(uri)
        files = {name: version for name, version in self._sizes(uri).items() if name != MANIFEST}
        if manifest is not None or files:
            return ModelListing(uri, files, manifest).identity
        try:
            return sha256_bytes(self.read_bytes(uri))
        except ArtifactMissing:
            raise ArtifactMissing(f"{uri}: nothing there (no file, no folder with a {MANIFEST})") from None

    # ---- folders: models and checkpoints -----------------------------------------------------
    def upload_folder(self, local: Path, folder: str) -> dict[str, str]:
        """Copy every file of `local` into `folder`; returns {relative name: sha256}."""
        paths = sorted(p for p in local.rglob("*") if p.is_file())
        names = [path.relative_to(local).as_posix() for path in paths]
        if is_s3(folder):
            digests: list[str] = []

            def upload_while_hashing(manager):
                futures = [manager.upload(str(path), *_split_s3(join(folder, name))) for path, name in zip(paths, names)]
                digests.extend(sha256_files(paths))
                return futures
            self._upload_all(upload_while_hashing)
            return dict(zip(names, digests))
        for path, name in zip(paths, names):
            target = Path(join(folder, name))
            if target.resolve() != path.resolve():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
        return dict(zip(names, sha256_files(paths)))

    def download_committed(self, folder: str, target: Path) -> Path:
        """Copy a committed folder's files to `target`, each checked against its manifest."""
        manifest = self.read_manifest(folder)
        if manifest is None:
            raise ArtifactMissing(f"{folder} has no {MANIFEST}: it is not committed")
        return self._download_checked(folder, manifest, self._sizes(folder) if is_s3(folder) else {}, target)

    def _download_checked(self, folder: str, manifest: dict[str, Any], listed: dict[str, str], target: Path) -> Path:
        """Download a committed folder as `listed`. A file still listed with the ETag its manifest
        recorded at commit is the committed file (every part was fetched If-Match that ETag); any
        other file (local, committed before ETags were recorded, or copied by another tool, which
        may split it into other parts and so change its ETag) is checked by its sha256."""
        names = list(manifest["files"])
        self._download(folder, names, listed, target)
        recorded = manifest.get("etags", {})
        unproven = [name for name in names if name not in recorded or _etag(listed.get(name, "")) != recorded[name]]
        for name, actual in zip(unproven, sha256_files([target / name for name in unproven])):
            _verify(join(folder, name), manifest["files"][name], actual)
        return target

    def _download(self, folder: str, names: list[str], listed: dict[str, str], target: Path) -> None:
        """Copy `names` of `folder` to `target`; on S3 as `listed` ({name: "size/ETag"})."""
        for name in names:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
        if is_s3(folder):
            missing = [name for name in names if name not in listed]
            if missing:
                raise ArtifactMissing(f"{join(folder, missing[0])}: no such object ({len(missing)} of the folder's files are missing)")
            self._get_objects([(join(folder, name), listed[name], target / name) for name in names])
            return
        for name in names:
            shutil.copyfile(join(folder, name), target / name)

    def inspect_model(self, uri: str) -> ModelListing:
        """The model folder at `uri` if it is a loadable Hugging Face folder; ModelFolderError if not."""
        if uri.startswith(HUB_SCHEME):
            return self._inspect_hub_model(uri)
        if not is_s3(uri) and not Path(uri).is_dir():
            raise ModelFolderError(f"model folder {uri} does not exist")
        files = {name: version for name, version in self._sizes(uri).items() if name != MANIFEST}
        manifest = self.read_manifest(uri)
        index = model_folder.index_name(files)
        found = model_folder.problems(files, self.read_text(join(uri, index)) if index else None)
        if found:
            where = "no objects under it" if not files and is_s3(uri) else "; ".join(found)
            raise ModelFolderError(
                f"{uri} is not a Hugging Face model folder: {where}. A model folder holds config.json, "
                "the weights (*.safetensors) and the tokenizer, as save_pretrained writes them"
            )
        return ModelListing(uri, files, manifest)

    def _inspect_hub_model(self, uri: str) -> ModelListing:
        repo, revision = _hub_repo(uri)
        try:
            from huggingface_hub import HfApi

            info = HfApi().model_info(repo, revision=revision)
        except Exception as error:  # offline, unreachable, unknown repo: all say the same to the user
            raise _hub_error(uri, error) from error
        names = [sibling.rfilename for sibling in info.siblings or []]
        found = model_folder.problems(names)
        if found:
            raise ModelFolderError(f"{uri} is not a Hugging Face model folder: " + "; ".join(found))
        return ModelListing(uri, {name: info.sha or "" for name in names}, None)

    def local_folder(self, uri: str) -> Path:
        """A local path holding the model folder at `uri`, downloading it when remote.

        Local folders are used in place (verified by sha256 when committed). Remote folders are
        cached by their identity, so a second stage in the same process or pod reuses the
        download, and a changed upload is fetched again.
        """
        if uri.startswith(HUB_SCHEME):
            return self._hub_folder(uri)
        listing = self.inspect_model(uri)
        known = self._verified.get(uri)
        if known is not None and known[0] == listing.identity:
            return known[1]
        self._verified[uri] = (listing.identity, self._fetch(uri, listing))
        return self._verified[uri][1]

    def _fetch(self, uri: str, listing: ModelListing) -> Path:
        if not is_s3(uri):
            if listing.manifest is not None:
                names = list(listing.manifest["files"])
                for name, actual in zip(names, sha256_files([Path(uri) / name for name in names])):
                    _verify(join(uri, name), listing.manifest["files"][name], actual)
            return Path(uri)
        cache = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "selfreward")) / "models" / listing.identity[:16]
        with exclusive(cache):  # the training processes of a node download it once
            if (cache / ".complete").exists():
                return cache
            if listing.manifest is not None:
                self._download_checked(uri, listing.manifest, listing.files, cache)
            else:
                self._download(uri, list(listing.files), listing.files, cache)
            (cache / ".complete").write_text(uri)
        return cache

    def _hub_folder(self, uri: str) -> Path:
        repo, revision = _hub_repo(uri)
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(repo, revision=revision))
        except Exception as error:  # offline, unreachable, unknown repo: all say the same to the user
            raise _hub_error(uri, error) from error


def _verify(uri: str, expected: str | None, actual: str) -> None:
    if expected != actual:
        raise IntegrityError(
            f"{uri}: sha256 does not match {MANIFEST}: the file changed after it was committed. "
            "Committed artifacts are never edited in place: restore the file, or rerun the run from scratch "
            "under a new storage root"
        )


def _etag(listed: str) -> str:
    """The ETag of a listing's "size/ETag"."""
    return listed.partition("/")[2]


def _hub_repo(uri: str) -> tuple[str, str | None]:
    repo, _, revision = uri[len(HUB_SCHEME) :].partition("@")
    return repo, revision or None


def _hub_error(uri: str, error: Exception) -> ModelUnavailable:
    return ModelUnavailable(
        f"{uri}: the model hub cannot be reached or refused ({type(error).__name__}: {str(error)[:300]}). "
        "Where no hub is reachable, save the model with save_pretrained, upload the folder to S3 "
        "(s3://bucket/prefix) or a local path, and name that in the spec"
    )
