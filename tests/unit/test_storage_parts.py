"""Spec of the ranged S3 download's error paths, against a fake S3 client that cuts streams off.

The happy paths (parts in any order, If-Match against a replaced object) run against a real
S3 server in tests/integration/test_storage_s3.py; a server that breaks a stream off halfway on
purpose is what only a fake can be.
"""

import io

import pytest
from botocore.exceptions import ResponseStreamingError

from selfreward.trainer import storage
from selfreward.trainer.storage import Storage

DATA = bytes(range(256)) * 64  # 16 KiB


class BreakingBody(io.BytesIO):
    """A response body that raises after `good` bytes, as a dropped connection does."""

    def __init__(self, data: bytes, good: int):
        super().__init__(data)
        self.good = good

    def read(self, amount=-1):
        if self.tell() >= self.good:
            raise ResponseStreamingError(error="Connection broken: IncompleteRead")
        return super().read(min(amount, self.good - self.tell()))


class CuttingS3:
    """Serves DATA by range; the first `breaks` GETs of each range break off halfway."""

    def __init__(self, breaks: int):
        self.breaks = breaks
        self.calls: dict[str, int] = {}

    def get_object(self, Bucket, Key, Range, IfMatch):
        start, end = (int(n) for n in Range.removeprefix("bytes=").split("-"))
        part = DATA[start : end + 1]
        self.calls[Range] = self.calls.get(Range, 0) + 1
        return {"Body": BreakingBody(part, len(part) // 2 if self.calls[Range] <= self.breaks else len(part))}


def storage_with(client) -> Storage:
    store = Storage()
    store._client = client
    return store


@pytest.fixture(autouse=True)
def small_parts(monkeypatch):
    monkeypatch.setattr(storage, "TRANSFER_PART_BYTES", 4096)
    monkeypatch.setattr(storage, "DOWNLOAD_WRITE_BYTES", 1000)


def test_a_part_that_breaks_off_is_fetched_again_from_its_start(tmp_path):
    client = CuttingS3(breaks=storage.PART_ATTEMPTS - 1)

    storage_with(client)._get_objects([("s3://b/m/model.safetensors", f"{len(DATA)}/etag", tmp_path / "out")])

    assert (tmp_path / "out").read_bytes() == DATA
    assert set(client.calls.values()) == {storage.PART_ATTEMPTS}


def test_a_part_that_keeps_breaking_off_fails_the_download_naming_its_bytes(tmp_path):
    client = CuttingS3(breaks=storage.PART_ATTEMPTS)

    with pytest.raises(OSError, match=r"model.safetensors: bytes \d+-\d+ broke off 5 times, last: .*IncompleteRead"):
        storage_with(client)._get_objects([("s3://b/m/model.safetensors", f"{len(DATA)}/etag", tmp_path / "out")])
