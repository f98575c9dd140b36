"""storage.py against a real S3 server (MinIO): the manifest-last commit and its checks."""

from __future__ import annotations

import pytest

from selfreward.trainer.storage import ArtifactMissing, Storage, StorageOptions

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
    (local / "sub" / "weights.bin").write_bytes(b"\x00" * 1024)
    folder = f"s3://{s3_bucket}/run/iter-01/model"
    s3.commit(folder, s3.upload_folder(local, folder))
    copy = s3.local_folder(folder)
    assert (copy / "config.json").read_text() == "{}"
    assert (copy / "sub" / "weights.bin").read_bytes() == b"\x00" * 1024


def test_an_uncommitted_model_is_not_downloaded(s3, s3_bucket):
    with pytest.raises(ArtifactMissing, match="not committed"):
        s3.local_folder(f"s3://{s3_bucket}/run/iter-01/model")


def test_listing_and_existence(s3, s3_bucket):
    s3.write_text(f"s3://{s3_bucket}/a/b/c.txt", "x")
    assert list(s3.list(f"s3://{s3_bucket}/a")) == [f"s3://{s3_bucket}/a/b/c.txt"]
    assert s3.exists(f"s3://{s3_bucket}/a/b/c.txt") and not s3.exists(f"s3://{s3_bucket}/a/nope")
