"""Which failures a retry can fix: the stage programs' one rule for exit code 1 versus 2.

A stage fails permanently (exit 2, no retries) when running it again with the same spec and data
must fail again: an invalid config, malformed data, no pairs to train on, a tokenizer that cannot
write a score, a committed file whose checksum no longer matches. The message says what to
change. Everything else (network, storage 5xx, a killed process, out of memory) is transient and
retried within `spec.retries`.
"""

from __future__ import annotations


class PermanentFailure(Exception):
    """Retrying cannot help; the message names what the user must change."""


# Storage answers that no retry fixes: wrong credentials, a bucket that does not exist.
_PERMANENT_STORAGE_CODES = {
    "AccessDenied": "StorageAccessDenied",
    "403": "StorageAccessDenied",  # responses without a body (HEAD) carry only the status
    "InvalidAccessKeyId": "StorageAccessDenied",
    "SignatureDoesNotMatch": "StorageAccessDenied",
    "NoSuchBucket": "NoSuchBucket",
}


def classify(error: BaseException) -> tuple[bool, str]:
    """(permanent, reason) of a stage failure; reason is a PascalCase word for status and events."""
    if isinstance(error, PermanentFailure):
        return True, type(error).__name__
    if type(error).__module__.startswith(("boto3", "s3transfer")):  # upload/download errors wrap botocore's
        error = _storage_cause(error) or error
    name = type(error).__name__
    module = type(error).__module__
    if module.startswith("botocore"):
        if name in ("NoCredentialsError", "PartialCredentialsError"):
            return True, "NoStorageCredentials"
        response = getattr(error, "response", None) or {}
        code = response.get("Error", {}).get("Code", "")
        if code in _PERMANENT_STORAGE_CODES:
            return True, _PERMANENT_STORAGE_CODES[code]
        if response:
            return False, "StorageError"
        return False, "StorageUnreachable"  # connection refused, timeouts, DNS: the network
    if isinstance(error, MemoryError) or name == "OutOfMemoryError":  # torch.OutOfMemoryError
        return False, "OutOfMemory"
    if isinstance(error, (ConnectionError, TimeoutError)):
        return False, "NetworkError"
    return False, name


def _storage_cause(error: BaseException) -> BaseException | None:
    """The botocore error behind `error` (itself, its cause or its context), if any."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if type(current).__module__.startswith("botocore"):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
