"""Where raw episodes and videos live: one small protocol, one module per backend."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable


class StorageError(Exception):
    """A storage operation failed; the message says which key and why.

    Classified where it happens, by the backend, so that callers never dig into a
    client library's exceptions (or catch OSError):

    Attributes:
        code: the backend's error code ("NoSuchBucket", "SlowDown", "ENOSPC"), if any.
        permanent: True when retrying cannot fix it (a missing bucket, refused
            credentials, a file that is gone); False for outages and throttling.
        hint: what the user can do about it ("" when retrying is the answer).
    """

    def __init__(self, message: str, *, code: str | None = None, permanent: bool = False,
                 hint: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.permanent = permanent
        self.hint = hint


class KeyNotFound(StorageError):
    """The key holds nothing; permanent (callers that expect it handle it)."""

    def __init__(self, message: str, *, code: str | None = "NotFound") -> None:
        super().__init__(message, code=code, permanent=True)


class InvalidKey(StorageError, ValueError):
    """A key that points outside its storage: a caller's mistake, never retried."""

    def __init__(self, message: str) -> None:
        hint = PERMANENT_HINTS["InvalidKey"]
        super().__init__(f"{message}; {hint}", code="InvalidKey", permanent=True, hint=hint)


_CREDENTIALS = "check the AWS credentials this process sees"
_PERMISSIONS = "this user may not use it: fix the folder's permissions"
_FILE_IN_THE_WAY = "a part of the path is a file, not a folder: fix the storage path"
_CHECKSUMS = "an S3-compatible server may need FARM_S3_CHECKSUM=when_required"
# Error codes that no retry fixes, and what to do about them: every backend's, in one
# table (local folders' by errno name, S3's by its error code).
PERMANENT_HINTS = {
    "ENOSPC": "the disk is full: free space there, or use another folder",
    "EDQUOT": "the disk quota is used up: free space there, or use another folder",
    "EACCES": _PERMISSIONS,
    "EPERM": _PERMISSIONS,
    "EROFS": "the folder is on a read-only file system",
    "ENOENT": "a file is missing (removed while in use?)",
    "ENOTDIR": _FILE_IN_THE_WAY,
    "EEXIST": _FILE_IN_THE_WAY,
    "EISDIR": "the key names a folder, not a file",
    "InvalidKey": "keys are relative to the storage root and have no '..' parts",
    "NoSuchBucket": "create the bucket or fix the storage URL",
    "InvalidBucketName": "fix the storage URL",
    "AccessDenied": "check the AWS credentials and bucket policy this process sees",
    "InvalidAccessKeyId": _CREDENTIALS,
    "SignatureDoesNotMatch": _CREDENTIALS,
    "AuthorizationHeaderMalformed": "check the region (FARM_S3_REGION) and credentials",
    "PermanentRedirect": "the bucket is in another region: set FARM_S3_REGION",
    "NoCredentials": "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, "
                     "~/.aws/credentials, an instance role) for this process",
    # Refused requests that a setting fixes; retrying as is does not.
    "InvalidRequest": _CHECKSUMS,
    "BadDigest": _CHECKSUMS,
    "XAmzContentSHA256Mismatch": _CHECKSUMS,
}


def storage_error(message: str, *, code: str | None) -> StorageError:
    """The StorageError of code: permanent, its hint appended, when PERMANENT_HINTS has
    one; transient (an outage, throttling) otherwise."""
    hint = PERMANENT_HINTS.get(code or "", "")
    return StorageError(message + (f"; {hint}" if hint else ""), code=code,
                        permanent=bool(hint), hint=hint)


def os_error(what: str, exc: OSError) -> StorageError:
    """The classified StorageError of an OSError while doing what (its errno decides)."""
    code = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
    return storage_error(f"{what}: {exc.strerror or exc}", code=code)


@runtime_checkable
class Storage(Protocol):
    """Keys are '/'-separated paths relative to the storage root."""

    url: str
    # False when only processes on this host can read it (a local folder).
    shared_across_hosts: bool

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write a whole object atomically: readers see the old state or all of data."""

    def get_bytes(self, key: str) -> bytes: ...

    def open_read(self, key: str) -> BinaryIO:
        """A stream over the object, for reading large objects with bounded memory."""

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def list_keys(self, prefix: str) -> list[str]: ...

    def publish_file(self, key: str, path: Path) -> None:
        """Move a finished local file under key atomically (never a partial object)."""

    def download_file(self, key: str, path: Path) -> None: ...

    def delete(self, key: str) -> None: ...

    def local_path(self, key: str) -> Path | None:
        """The local file or folder behind key when the storage is a local folder, else None."""

    def check_access(self) -> None:
        """Fail fast, with StorageError saying why, when the storage cannot be written."""


# A local storage folder's identity: written once by the recorder, read by workers that
# map the job's folder to a mount of their own, to tell the recorder's folder from another.
STORAGE_ID_KEY = ".farm-storage-id"


def local_storage_id(storage: Storage, *, create: bool = False) -> str | None:
    """The id of a local storage folder (None: not local, or none yet and not create)."""
    if storage.local_path("") is None:
        return None
    try:
        return storage.get_bytes(STORAGE_ID_KEY).decode().strip()
    except KeyNotFound:
        if not create:
            return None
    import uuid

    new = uuid.uuid4().hex
    storage.put_bytes(STORAGE_ID_KEY, new.encode())
    return new


def within(url: str, root: str) -> bool:
    """True when storage url is root or lies beneath it: folders compared resolved (no
    escape through .. or links), S3 by bucket and whole prefix parts."""
    if url.startswith("s3://") or root.startswith("s3://"):
        if not (url.startswith("s3://") and root.startswith("s3://")):
            return False
        inner, outer = url[len("s3://"):].rstrip("/"), root[len("s3://"):].rstrip("/")
        return inner == outer or inner.startswith(outer + "/")
    from encoder_worker.storage.local import LocalStorage

    return LocalStorage.from_url(url).root.is_relative_to(LocalStorage.from_url(root).root)


def check_url(url: str | Path) -> str:
    """url itself when it names a storage, without touching it; else ValueError saying how.

    For settings validators: a bad URL is a usage error, found before anything starts.
    """
    text = str(url)
    if text.startswith("s3://"):
        bucket = text[len("s3://"):].split("/", 1)[0]
        if not bucket:
            raise ValueError(f"{text!r} names no bucket; use s3://bucket/prefix")
        return text
    if "://" in text and not text.startswith("file://"):
        scheme = text.split("://", 1)[0]
        raise ValueError(f"unsupported storage URL {text!r} (scheme {scheme!r}); "
                         "use a folder path, file:///path or s3://bucket/prefix")
    if not text.strip():
        raise ValueError("empty storage URL; use a folder path or s3://bucket/prefix")
    return text


def open_storage(url: str | Path) -> Storage:
    """The backend for a storage URL: a plain path, file:///path or s3://bucket/prefix.

    Raises:
        ValueError: the URL's scheme is not supported.
    """
    text = check_url(url)
    if text.startswith("s3://"):
        from encoder_worker.storage.s3 import S3Storage

        return S3Storage.from_url(text)
    from encoder_worker.storage.local import LocalStorage

    return LocalStorage.from_url(text)
