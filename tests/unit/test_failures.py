"""Spec of failure classes: which failures a retry can fix (transient) and which it cannot (permanent)."""

import botocore.exceptions
import pytest
import torch

from selfreward.operator.local import exit_summary
from selfreward.trainer.constrained import ConstrainedScoreUnsupported
from selfreward.trainer.contract import ConfigError
from selfreward.trainer.data import DataError
from selfreward.trainer.failures import classify
from selfreward.trainer.instruct import TooFewPrompts
from selfreward.trainer.rubric import JudgeTemplateError
from selfreward.trainer.stagekit import ShardMismatch
from selfreward.trainer.storage import IntegrityError, ModelFolderError, ModelUnavailable
from selfreward.trainer.training import NothingToTrain

PERMANENT, TRANSIENT = True, False


def storage_answer(code, http_status):
    """A botocore ClientError as an S3 server's error response makes it."""
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": http_status}}, "GetObject"
    )


@pytest.mark.parametrize(
    ("error", "permanent", "reason"),
    [
        # the stage programs' own permanent failures: their class name is the reason
        pytest.param(ConfigError("config.spec.judge is missing"), PERMANENT, "ConfigError", id="config-error"),
        pytest.param(DataError("ift.jsonl:3: no prompt"), PERMANENT, "DataError", id="data-error"),
        pytest.param(NothingToTrain("the judge kept no pairs"), PERMANENT, "NothingToTrain", id="nothing-to-train"),
        pytest.param(TooFewPrompts("0 of 8000 prompts kept"), PERMANENT, "TooFewPrompts", id="too-few-prompts"),
        pytest.param(ShardMismatch("expected 4 shards"), PERMANENT, "ShardMismatch", id="shard-mismatch"),
        pytest.param(IntegrityError("sha256 does not match"), PERMANENT, "IntegrityError", id="integrity-error"),
        pytest.param(ModelFolderError("no config.json"), PERMANENT, "ModelFolderError", id="model-folder-error"),
        pytest.param(ModelUnavailable("no hub"), PERMANENT, "ModelUnavailable", id="model-unavailable"),
        pytest.param(ConstrainedScoreUnsupported("digits share a token"), PERMANENT, "ConstrainedScoreUnsupported",
                     id="constrained-score-unsupported"),
        pytest.param(JudgeTemplateError("no {response}"), PERMANENT, "JudgeTemplateError", id="judge-template-error"),
        # storage
        pytest.param(storage_answer("SlowDown", 503), TRANSIENT, "StorageError", id="s3-slow-down-503"),
        pytest.param(storage_answer("InternalError", 500), TRANSIENT, "StorageError", id="s3-internal-error-500"),
        pytest.param(storage_answer("AccessDenied", 403), PERMANENT, "StorageAccessDenied", id="s3-access-denied-403"),
        pytest.param(storage_answer("InvalidAccessKeyId", 403), PERMANENT, "StorageAccessDenied", id="s3-invalid-key-403"),
        pytest.param(storage_answer("NoSuchBucket", 404), PERMANENT, "NoSuchBucket", id="s3-no-such-bucket-404"),
        pytest.param(botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), TRANSIENT,
                     "StorageUnreachable", id="s3-endpoint-unreachable"),
        pytest.param(botocore.exceptions.NoCredentialsError(), PERMANENT, "NoStorageCredentials", id="no-credentials"),
        # the machine and the network
        pytest.param(MemoryError(), TRANSIENT, "OutOfMemory", id="memory-error"),
        pytest.param(torch.OutOfMemoryError("CUDA out of memory"), TRANSIENT, "OutOfMemory", id="cuda-out-of-memory"),
        pytest.param(ConnectionResetError("reset by peer"), TRANSIENT, "NetworkError", id="connection-reset"),
        pytest.param(TimeoutError("timed out"), TRANSIENT, "NetworkError", id="timeout"),
        # anything else: retried, named by its class
        pytest.param(RuntimeError("something broke"), TRANSIENT, "RuntimeError", id="plain-runtime-error"),
    ],
)
def test_each_failure_has_its_class_and_reason(error, permanent, reason):
    assert classify(error) == (permanent, reason)


# --- a stage program that died before reporting -----------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        pytest.param(-9, "OOMKilled", id="sigkill"),
        pytest.param(-15, "Killed", id="sigterm"),
        pytest.param(1, "ProcessExited", id="exit-1"),
    ],
)
def test_a_stage_program_that_died_is_a_transient_failure_named_by_how_it_died(code, reason):
    summary = exit_summary(code, "")

    assert (summary["ok"], summary["permanent"], summary["reason"]) == (False, False, reason)


@pytest.mark.parametrize(
    ("code", "says"),
    [
        pytest.param(-9, "killed by SIGKILL", id="sigkill"),
        pytest.param(-15, "killed by SIGTERM", id="sigterm"),
        pytest.param(1, "exited with code 1", id="exit-1"),
    ],
)
def test_the_error_says_how_the_program_died(code, says):
    assert says in exit_summary(code, "")["error"]


def test_the_error_ends_with_the_programs_last_output():
    summary = exit_summary(1, "Traceback ...\nValueError: bad row\n")

    assert summary["error"].endswith("last output:\nTraceback ...\nValueError: bad row\n")


def test_an_upload_refused_for_access_is_permanent_through_boto3s_wrapper():
    import boto3.exceptions

    denied = botocore.exceptions.ClientError({"Error": {"Code": "AccessDenied"}, "ResponseMetadata": {"HTTPStatusCode": 403}}, "PutObject")
    try:
        try:
            raise denied
        except botocore.exceptions.ClientError as error:
            raise boto3.exceptions.S3UploadFailedError("Failed to upload checkpoint") from error
    except boto3.exceptions.S3UploadFailedError as wrapped:
        assert classify(wrapped) == (True, "StorageAccessDenied")


def test_an_upload_failing_on_a_server_error_stays_retryable():
    import boto3.exceptions

    busy = botocore.exceptions.ClientError({"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}, "PutObject")
    wrapped = boto3.exceptions.S3UploadFailedError("Failed to upload")
    wrapped.__cause__ = busy
    assert classify(wrapped) == (False, "StorageError")


def test_a_program_killed_by_a_signal_without_a_name_is_still_reported():
    summary = exit_summary(-40, "last words")

    assert (summary["reason"], summary["permanent"]) == ("Killed", False)
    assert "signal 40" in summary["error"]


def test_a_crash_keeps_the_end_of_its_output_where_the_error_is():
    summary = exit_summary(1, "x" * 5000 + "RuntimeError: the real cause")

    assert summary["error"].endswith("RuntimeError: the real cause") and len(summary["error"]) <= 1024
