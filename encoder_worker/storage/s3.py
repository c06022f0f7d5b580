"""S3 (or an S3-compatible server) as storage, through boto3.

Credentials come from the standard AWS chain (environment, ~/.aws, instance roles). The
endpoint, region and checksum behaviour come from S3Settings (FARM_S3_* variables).
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal, cast

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from encoder_worker.storage import KeyNotFound, StorageError

logger = logging.getLogger(__name__)

# Objects above this go up in parts; S3 shows a multipart object only once it completes.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNKSIZE = 16 * 1024 * 1024
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


class S3Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FARM_S3_", extra="ignore")

    # None: AWS itself (or whatever boto3's own configuration names).
    endpoint_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("FARM_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                                      "AWS_ENDPOINT_URL"),
    )
    region: str | None = Field(
        default=None, validation_alias=AliasChoices("FARM_S3_REGION", "AWS_REGION",
                                                    "AWS_DEFAULT_REGION"),
    )
    # boto3 >= 1.36 sends CRC checksum headers on every upload ("when_supported"); some
    # S3-compatible servers reject them, "when_required" sends them only where S3 needs them.
    checksum: Literal["when_supported", "when_required"] = "when_supported"
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)
    # boto3's own retries of one request; longer outages are the caller's to retry.
    max_attempts: int = Field(default=3, ge=1)


# S3 error codes that retrying cannot fix, and what the user has to do about them.
PERMANENT_ERRORS = {
    "NoSuchBucket": "create the bucket or fix the storage URL",
    "InvalidBucketName": "fix the storage URL",
    "AccessDenied": "check the AWS credentials and bucket policy this process sees",
    "InvalidAccessKeyId": "check the AWS credentials this process sees",
    "SignatureDoesNotMatch": "check the AWS credentials this process sees",
    "AuthorizationHeaderMalformed": "check the region (FARM_S3_REGION) and credentials",
    "PermanentRedirect": "the bucket is in another region: set FARM_S3_REGION",
}
# Refused requests that a setting fixes; retrying as is does not.
_CHECKSUM_ERRORS = ("InvalidRequest", "BadDigest", "XAmzContentSHA256Mismatch")
_NO_CREDENTIALS_HINT = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, "
                        "~/.aws/credentials, an instance role) for this process")


def s3_error(what: str, exc: BaseException, *, endpoint: str) -> StorageError:
    """The classified StorageError of a boto3/botocore failure while doing what."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in _NOT_FOUND:
            return KeyNotFound(f"{what}: does not exist", code=code, permanent=True)
        hint = PERMANENT_ERRORS.get(code, "")
        if code in _CHECKSUM_ERRORS:
            hint = "an S3-compatible server may need FARM_S3_CHECKSUM=when_required"
        return StorageError(f"{what}: {code} {error.get('Message', '')}"
                            + (f"; {hint}" if hint else ""),
                            code=code, permanent=bool(hint), hint=hint)
    if isinstance(exc, NoCredentialsError):
        return StorageError(f"{what} via {endpoint}: {exc}; {_NO_CREDENTIALS_HINT}",
                            code="NoCredentials", permanent=True, hint=_NO_CREDENTIALS_HINT)
    # Connection errors, timeouts and the like: an outage, retried.
    return StorageError(f"{what} via {endpoint}: {exc}", code=type(exc).__name__)


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of s3://bucket/prefix; the prefix has no leading or trailing '/'.

    Raises:
        ValueError: not an s3:// URL, or no bucket in it.
    """
    if not url.startswith("s3://"):
        raise ValueError(f"{url!r} is not an s3://bucket/prefix URL")
    bucket, _, prefix = url[len("s3://"):].partition("/")
    if not bucket:
        raise ValueError(f"{url!r} names no bucket; use s3://bucket/prefix")
    return bucket, prefix.strip("/")


def _client(settings: S3Settings) -> Any:
    config = Config(
        connect_timeout=settings.connect_timeout_s, read_timeout=settings.read_timeout_s,
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
        s3={"addressing_style": settings.addressing_style},
        request_checksum_calculation=settings.checksum,
        response_checksum_validation=settings.checksum,
    )
    return boto3.session.Session().client(
        "s3", endpoint_url=settings.endpoint_url, region_name=settings.region, config=config)


class _Body:
    """A get_object body as a binary stream whose network errors are StorageErrors."""

    def __init__(self, body: Any, where: str) -> None:
        self._body = body
        self._where = where

    def read(self, size: int = -1) -> bytes:
        try:
            return cast(bytes, self._body.read(None if size < 0 else size))
        except (BotoCoreError, OSError) as exc:
            raise StorageError(f"reading {self._where} failed: {exc}") from exc
        except Exception as exc:  # urllib3's ProtocolError and kin, mid-stream
            raise StorageError(f"reading {self._where} failed: {exc!r}") from exc

    def close(self) -> None:
        self._body.close()

    def __enter__(self) -> _Body:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class S3Storage:
    shared_across_hosts = True

    def __init__(self, bucket: str, prefix: str = "", *,
                 settings: S3Settings | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.settings = settings or S3Settings()
        self.client = _client(self.settings)

    @classmethod
    def from_url(cls, url: str, *, settings: S3Settings | None = None) -> S3Storage:
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix, settings=settings)

    def object_key(self, key: str) -> str:
        key = key.strip("/")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _error(self, action: str, key: str, exc: Exception) -> StorageError:
        endpoint = self.settings.endpoint_url or "AWS S3"
        return s3_error(f"{action} {self.url}/{key}", exc, endpoint=endpoint)

    def put_bytes(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise self._error("putting", key, exc) from exc

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as stream:
            return stream.read()

    def open_read(self, key: str) -> BinaryIO:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._error("reading", key, exc) from exc
        return cast(BinaryIO, _Body(response["Body"], f"{self.url}/{key}"))

    def _head(self, key: str) -> dict[str, Any]:
        try:
            return cast(dict[str, Any],
                        self.client.head_object(Bucket=self.bucket, Key=self.object_key(key)))
        except (BotoCoreError, ClientError) as exc:
            raise self._error("looking up", key, exc) from exc

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except KeyNotFound:
            return False
        return True

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def list_keys(self, prefix: str) -> list[str]:
        root = f"{self.prefix}/" if self.prefix else ""
        full = root + prefix.strip("/")
        if prefix and not full.endswith("/"):
            full += "/"  # like a folder: "raw" must not match "raw2/..."
        keys: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full)
            for page in pages:
                keys.extend(item["Key"][len(root):] for item in page.get("Contents", []))
        except (BotoCoreError, ClientError) as exc:
            raise self._error("listing", prefix, exc) from exc
        return sorted(k for k in keys if not k.rsplit("/", 1)[-1].startswith("."))

    def publish_file(self, key: str, path: Path) -> None:
        """Upload path under key, then remove path (a move, like the local backend).

        A single PUT, or a multipart upload that S3 shows only once it completes.
        """
        transfer = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD,
                                  multipart_chunksize=MULTIPART_CHUNKSIZE, max_concurrency=4)
        try:
            self.client.upload_file(str(path), self.bucket, self.object_key(key),
                                    Config=transfer)
        except (BotoCoreError, ClientError) as exc:
            raise self._error("uploading", key, exc) from exc
        except Exception as exc:  # s3transfer wraps failures in its own S3UploadFailedError
            # The S3 error behind it (re-raised without `from`) carries code and hint.
            behind = exc.__cause__ or exc.__context__
            if isinstance(behind, (BotoCoreError, ClientError)):
                raise self._error("uploading", key, behind) from exc
            # The local file itself: gone or unreadable, which no retry fixes.
            gone = isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError))
            raise StorageError(f"uploading {path} to {self.url}/{key}: {exc}",
                               code=type(exc).__name__, permanent=gone) from exc
        path.unlink(missing_ok=True)

    def download_file(self, key: str, path: Path) -> None:
        try:
            self.client.download_file(self.bucket, self.object_key(key), str(path))
        except (BotoCoreError, ClientError) as exc:
            raise self._error("downloading", key, exc) from exc

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._error("deleting", key, exc) from exc

    def local_path(self, key: str) -> Path | None:
        return None

    def check_access(self) -> None:
        """Fail fast when the bucket cannot be reached with these credentials.

        Raises:
            StorageError: the bucket is missing, forbidden or unreachable (message says).
        """
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in _NOT_FOUND or code == "NoSuchBucket":
                endpoint = self.settings.endpoint_url or "AWS S3"
                raise StorageError(f"NoSuchBucket: bucket {self.bucket!r} does not exist at "
                                   f"{endpoint}; create it or fix the storage URL",
                                   code="NoSuchBucket", permanent=True,
                                   hint=PERMANENT_ERRORS["NoSuchBucket"]) from exc
            raise self._error("checking bucket of", "", exc) from exc
        except BotoCoreError as exc:
            raise self._error("checking bucket of", "", exc) from exc

