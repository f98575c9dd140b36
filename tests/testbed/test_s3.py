"""The S3 server of the tests is a real one: objects round-trip, errors are S3 errors."""
import hashlib

import pytest

from tests.fixtures.s3 import s3_client, s3_env

pytestmark = pytest.mark.integration


def test_put_then_get_roundtrips_bytes(s3_server, s3_bucket):
    client = s3_client(s3_server)
    body = bytes(range(256)) * 1024
    client.put_object(Bucket=s3_bucket, Key="dir/blob.bin", Body=body)
    got = client.get_object(Bucket=s3_bucket, Key="dir/blob.bin")["Body"].read()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(body).hexdigest()
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="dir/")["Contents"]]
    assert keys == ["dir/blob.bin"]


def test_missing_key_is_an_s3_error(s3_server, s3_bucket):
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError) as err:
        s3_client(s3_server).get_object(Bucket=s3_bucket, Key="nope")
    assert err.value.response["Error"]["Code"] == "NoSuchKey"


def test_env_vars_configure_a_default_boto3_client(s3_server, s3_bucket, monkeypatch):
    import boto3

    env = s3_env(s3_server)
    assert env["AWS_ENDPOINT_URL_S3"].startswith("http://127.0.0.1:")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3")  # endpoint, keys and region all from the environment
    client.put_object(Bucket=s3_bucket, Key="k", Body=b"v")
    assert client.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"v"


def test_fresh_buckets_are_distinct_and_empty(s3_server, s3_bucket):
    assert "Contents" not in s3_client(s3_server).list_objects_v2(Bucket=s3_bucket)


def test_the_testbeds_own_signed_put_stores_what_boto3_reads(s3_server, s3_bucket):
    """`testbed up` seeds the quickstart's bucket without boto3 (testbed/ is stdlib only)."""
    body = bytes(range(256)) * 64
    s3_server.put_object(s3_bucket, "models/tiny llama/model+1.safetensors", body)
    got = s3_client(s3_server).get_object(Bucket=s3_bucket, Key="models/tiny llama/model+1.safetensors")["Body"].read()
    assert got == body
