"""storage.py against a real S3 server (MinIO): the manifest-last commit and its checks."""

from __future__ import annotations

import json
import random

import pytest

from selfreward.trainer import storage
from selfreward.trainer.storage import (
    ArtifactMissing, IntegrityError, ModelFolderError, ObjectChanged, Storage, StorageOptions, sha256_file,
)
from tests.fixtures.s3 import s3_client

pytestmark = pytest.mark.integration


@pytest.fixture
def s3(s3_server, monkeypatch):
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return Storage(StorageOptions(endpoint=s3_server.endpoint, region=s3_server.region))


def test_committed_rows_round_trip(s3, s3_bucket):
    folder = f"s3://{s3_bucket}/run/iter-02/prompts"
    files = s3.write_jsonl_file(folder, "prompts.jsonl", [{"id": "a", "prompt": "x"}])
    s3.commit(folder, files, metrics={"promptsKept": 1})
    assert s3.read_committed_jsonl(folder, "prompts.jsonl") == [{"id": "a", "prompt": "x"}]
    assert s3.read_manifest(folder)["metrics"] == {"promptsKept": 1}


def test_a_folder_without_manifest_is_not_read(s3, s3_bucket):
    folder = f"s3://{s3_bucket}/run/iter-02/prompts"
    s3.write_jsonl_file(folder, "prompts.jsonl", [{"id": "a"}])
    with pytest.raises(ArtifactMissing, match="no _manifest.json"):
        s3.read_committed_jsonl(folder, "prompts.jsonl")


def test_a_file_changed_after_commit_is_refused(s3, s3_bucket):
    folder = f"s3://{s3_bucket}/run/x"
    s3.commit(folder, s3.write_jsonl_file(folder, "rows.jsonl", [{"a": 1}]))
    s3.write_text(f"{folder}/rows.jsonl", '{"a": 2}\n')
    with pytest.raises(ValueError, match="sha256"):
        s3.read_committed_jsonl(folder, "rows.jsonl")


def test_model_folder_uploads_and_downloads_by_manifest(s3, s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("SELFREWARD_CACHE", str(tmp_path / "cache"))
    local = tmp_path / "model"
    (local / "sub").mkdir(parents=True)
    (local / "config.json").write_text("{}")
    (local / "tokenizer.json").write_text("{}")
    (local / "model.safetensors").write_bytes(b"\x02" * 16)
    (local / "sub" / "weights.bin").write_bytes(b"\x00" * 1024)
    folder = f"s3://{s3_bucket}/run/iter-01/model"
    s3.commit(folder, s3.upload_folder(local, folder))
    copy = s3.local_folder(folder)
    assert (copy / "config.json").read_text() == "{}"
    assert (copy / "sub" / "weights.bin").read_bytes() == b"\x00" * 1024


def test_a_sharded_model_moves_whole_with_every_file_at_once(s3, s3_bucket, tmp_path, monkeypatch):
    # Several shards of several parts each go through one transfer manager; the parts arrive in
    # any order, and each file downloaded must still match the sha256 its manifest recorded.
    monkeypatch.setenv("SELFREWARD_CACHE", str(tmp_path / "cache"))
    local = tmp_path / "model"
    local.mkdir()
    size = storage.TRANSFER_PART_BYTES + 2**20  # two parts each
    shards = {f"model-0000{i}-of-00003.safetensors": random.Random(i).randbytes(size + i) for i in (1, 2, 3)}
    for name, data in {"config.json": b"{}", "tokenizer.json": b"{}", **shards}.items():
        (local / name).write_bytes(data)
    folder = f"s3://{s3_bucket}/run/iter-01/model"

    files = s3.upload_folder(local, folder)
    s3.commit(folder, files)
    copy = s3.local_folder(folder)

    assert files == {name: sha256_file(local / name) for name in files}
    assert all((copy / name).read_bytes() == data for name, data in shards.items())


def test_a_committed_folder_missing_an_object_fails_its_download_and_is_not_cached(s3, s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("SELFREWARD_CACHE", str(tmp_path / "cache"))
    local = tmp_path / "model"
    local.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors", "extra.bin"):
        (local / name).write_bytes(b"{}")
    folder = f"s3://{s3_bucket}/run/iter-01/model"
    s3.commit(folder, s3.upload_folder(local, folder))
    s3.s3.delete_object(Bucket=s3_bucket, Key="run/iter-01/model/extra.bin")

    with pytest.raises(ArtifactMissing, match="extra.bin: no such object"):
        s3.local_folder(folder)
    assert not list((tmp_path / "cache").rglob(".complete"))


def upload_plain_model(client, bucket: str, prefix: str, files: dict[str, bytes]) -> str:
    """A model folder as a user uploads it with any S3 client: objects, no manifest."""
    for name, data in files.items():
        client.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=data)
    return f"s3://{bucket}/{prefix}"


MODEL_FILES = {"config.json": b"{}", "model.safetensors": b"\x00" * 64, "tokenizer.json": b"{}"}


def test_a_plain_uploaded_model_folder_is_downloaded_without_a_manifest(s3, s3_server, s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("SELFREWARD_CACHE", str(tmp_path / "cache"))
    uri = upload_plain_model(s3_client(s3_server), s3_bucket, "models/base", MODEL_FILES)

    copy = s3.local_folder(uri)

    assert {p.name: p.read_bytes() for p in copy.iterdir() if not p.name.startswith(".")} == MODEL_FILES


def test_folder_marker_objects_of_s3_tools_are_not_files(s3, s3_server, s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("SELFREWARD_CACHE", str(tmp_path / "cache"))
    client = s3_client(s3_server)
    client.put_object(Bucket=s3_bucket, Key="models/base/", Body=b"")  # what a console's "Create folder" makes
    uri = upload_plain_model(client, s3_bucket, "models/base", MODEL_FILES)

    copy = s3.local_folder(uri)

    assert sorted(p.name for p in copy.iterdir() if not p.name.startswith(".")) == sorted(MODEL_FILES)


def test_a_model_uploaded_again_is_downloaded_again(s3, s3_server, s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("SELFREWARD_CACHE", str(tmp_path / "cache"))
    client = s3_client(s3_server)
    uri = upload_plain_model(client, s3_bucket, "models/base", MODEL_FILES)
    first = s3.local_folder(uri)
    upload_plain_model(client, s3_bucket, "models/base", {"model.safetensors": b"\x01" * 64})

    second = s3.local_folder(uri)

    assert second != first and (second / "model.safetensors").read_bytes() == b"\x01" * 64


def test_an_empty_prefix_is_refused_saying_what_a_model_folder_holds(s3, s3_bucket):
    with pytest.raises(ModelFolderError, match="no objects under it.*config.json"):
        s3.local_folder(f"s3://{s3_bucket}/models/nothing-here")


def test_a_half_uploaded_model_is_refused_naming_the_missing_shard(s3, s3_server, s3_bucket):
    index = json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    files = {"config.json": b"{}", "tokenizer.json": b"{}", "model.safetensors.index.json": index.encode(),
             "model-00001-of-00002.safetensors": b"\x00"}
    uri = upload_plain_model(s3_client(s3_server), s3_bucket, "models/half", files)

    with pytest.raises(ModelFolderError, match="model-00002-of-00002.safetensors"):
        s3.inspect_model(uri)


def committed_model(s3, bucket: str, tmp_path, files: dict[str, bytes] = MODEL_FILES) -> str:
    local = tmp_path / "model"
    local.mkdir()
    for name, data in files.items():
        (local / name).write_bytes(data)
    folder = f"s3://{bucket}/run/iter-01/model"
    s3.commit(folder, s3.upload_folder(local, folder))
    return folder


def test_a_committed_model_whose_file_changed_is_refused(s3, s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("SELFREWARD_CACHE", str(tmp_path / "cache"))
    folder = committed_model(s3, s3_bucket, tmp_path)
    s3.write_bytes(f"{folder}/model.safetensors", b"tampered")

    with pytest.raises(IntegrityError, match="sha256"):
        s3.local_folder(folder)


def put_in_parts(client, uri: str, data: bytes, part_bytes: int) -> None:
    """Upload `data` as a multipart object, as another S3 tool with its own part size would."""
    bucket, key = uri[len("s3://"):].split("/", 1)
    upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = [{"PartNumber": number, "ETag": client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=number,
                                                                Body=data[start:start + part_bytes])["ETag"]}
             for number, start in enumerate(range(0, len(data), part_bytes), start=1)]
    client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})


def test_a_commit_on_s3_records_the_etag_of_each_file(s3, s3_bucket, tmp_path):
    folder = committed_model(s3, s3_bucket, tmp_path)

    listed = {name: version.split("/")[1] for name, version in s3._sizes(folder).items() if name != storage.MANIFEST}

    assert s3.read_manifest(folder)["etags"] == listed


def test_a_file_still_listed_with_its_committed_etag_is_not_hashed_again(s3, s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("SELFREWARD_CACHE", str(tmp_path / "cache"))
    folder = committed_model(s3, s3_bucket, tmp_path)
    manifest = s3.read_manifest(folder)
    manifest["files"]["model.safetensors"] = "0" * 64  # a hash no download could match
    s3.write_text(f"{folder}/{storage.MANIFEST}", json.dumps(manifest))

    copy = s3.local_folder(folder)

    assert (copy / "model.safetensors").read_bytes() == MODEL_FILES["model.safetensors"]


def test_a_file_copied_again_in_other_parts_is_checked_by_its_sha256(s3, s3_server, s3_bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("SELFREWARD_CACHE", str(tmp_path / "cache"))
    weights = random.Random(7).randbytes(6 * 2**20)
    folder = committed_model(s3, s3_bucket, tmp_path, {**MODEL_FILES, "model.safetensors": weights})
    put_in_parts(s3_client(s3_server), f"{folder}/model.safetensors", weights, part_bytes=5 * 2**20)  # new ETag, same bytes

    copy = s3.local_folder(folder)

    assert (copy / "model.safetensors").read_bytes() == weights


def test_an_object_replaced_after_listing_is_not_downloaded_as_a_mix(s3, s3_server, s3_bucket, tmp_path):
    client = s3_client(s3_server)
    uri = upload_plain_model(client, s3_bucket, "models/base", MODEL_FILES)
    listed = s3._sizes(uri)["model.safetensors"]
    upload_plain_model(client, s3_bucket, "models/base", {"model.safetensors": b"\x01" * 64})

    with pytest.raises(ObjectChanged, match="model.safetensors was replaced"):
        s3._get_objects([(f"{uri}/model.safetensors", listed, tmp_path / "model.safetensors")])


def test_listing(s3, s3_bucket):
    s3.write_text(f"s3://{s3_bucket}/a/b/c.txt", "x")
    assert list(s3.list(f"s3://{s3_bucket}/a")) == [f"s3://{s3_bucket}/a/b/c.txt"]
