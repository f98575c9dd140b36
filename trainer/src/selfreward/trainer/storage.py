"""The only module that touches artifact storage: local paths and s3:// (boto3 + s3transfer).

Artifacts are committed manifest-last: a stage writes its files, then `_manifest.json` with the
sha256 of each. A folder without a manifest is incomplete, whatever files it holds, and is never
read as a result. Local writes go through a temporary name and a rename; an S3 PUT is atomic per
object. Credentials come from the environment (AWS_ACCESS_KEY_ID, ...), never from the config.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

MANIFEST = "_manifest.json"
CACHE_ENV = "SELFREWARD_CACHE"


@dataclass(frozen=True)
class StorageOptions:
    endpoint: str | None = None
    region: str | None = None
    addressing_style: str = "auto"


class ArtifactMissing(FileNotFoundError):
    """An input that should exist does not (or has no manifest yet)."""


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


class Storage:
    """Read and write artifacts by URI. One instance per process; the S3 client is made lazily."""

    def __init__(self, options: StorageOptions | None = None):
        self.options = options or StorageOptions()
        self._client = None

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
                config=Config(s3={"addressing_style": style}, retries={"max_attempts": 5, "mode": "standard"}),
            )
        return self._client

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
        except FileNotFoundError as error:
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

    def exists(self, uri: str) -> bool:
        if is_s3(uri):
            bucket, key = _split_s3(uri)
            try:
                self.s3.head_object(Bucket=bucket, Key=key)
                return True
            except self.s3.exceptions.ClientError as error:
                if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return False
                raise
        return Path(uri).exists()

    def list(self, prefix: str) -> Iterator[str]:
        """URIs of every object under `prefix` (recursive)."""
        if is_s3(prefix):
            bucket, key = _split_s3(prefix.rstrip("/") + "/")
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
                for item in page.get("Contents", []):
                    yield f"s3://{bucket}/{item['Key']}"
            return
        root = Path(prefix)
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                if path.is_file() and not path.name.startswith("."):
                    yield str(path)

    # ---- manifests -------------------------------------------------------------------------
    def read_manifest(self, folder: str) -> dict[str, Any] | None:
        """The folder's manifest, or None when the folder is not committed."""
        try:
            return json.loads(self.read_text(join(folder, MANIFEST)))
        except ArtifactMissing:
            return None

    def commit(self, folder: str, files: dict[str, str], **content: Any) -> dict[str, Any]:
        """Write the manifest of `folder` last. `files` maps names in the folder to sha256."""
        manifest = {
            "files": dict(sorted(files.items())),
            "committedAt": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            **content,
        }
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
        expected = manifest["files"].get(name)
        if expected != sha256_bytes(data):
            raise ValueError(f"{join(folder, name)}: sha256 does not match {MANIFEST}")
        return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]

    # ---- model folders ---------------------------------------------------------------------
    def upload_folder(self, local: Path, folder: str) -> dict[str, str]:
        """Copy every file of `local` into `folder`; returns {relative name: sha256}."""
        hashes: dict[str, str] = {}
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            name = path.relative_to(local).as_posix()
            hashes[name] = sha256_file(path)
            target = join(folder, name)
            if is_s3(target):
                bucket, key = _split_s3(target)
                self.s3.upload_file(str(path), bucket, key)
            elif Path(target).resolve() != path.resolve():
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
        return hashes

    def local_folder(self, uri: str) -> Path:
        """A local path holding the model folder at `uri`, downloading it when remote.

        s3:// folders must be committed; they are cached by their manifest's hashes, so a
        second stage in the same process or pod reuses the download.
        """
        if uri.startswith("hf://"):
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(uri[len("hf://") :]))
        if not is_s3(uri):
            path = Path(uri)
            if not path.is_dir():
                raise ArtifactMissing(f"model folder {uri} does not exist")
            return path
        manifest = self.read_manifest(uri)
        if manifest is None:
            raise ArtifactMissing(f"{uri} has no {MANIFEST}: the model is not committed")
        key = sha256_bytes(json.dumps(manifest["files"], sort_keys=True).encode())[:16]
        cache = Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "selfreward")) / "models" / key
        if (cache / ".complete").exists():
            return cache
        bucket, prefix = _split_s3(uri.rstrip("/") + "/")
        for name, digest in manifest["files"].items():
            target = cache / name
            target.parent.mkdir(parents=True, exist_ok=True)
            self.s3.download_file(bucket, prefix + name, str(target))
            if sha256_file(target) != digest:
                raise ValueError(f"{join(uri, name)}: sha256 does not match {MANIFEST}")
        (cache / ".complete").write_text("")
        return cache
