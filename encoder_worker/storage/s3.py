"""S3 (or an S3-compatible server) as storage, through boto3.

Credentials come from the standard AWS chain (environment, ~/.aws, instance roles). The
endpoint, region and checksum behaviour come from S3Settings (FARM_S3_* variables).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal, cast

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from encoder_worker.storage import KeyNotFound, StorageError, os_error, storage_error

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


def s3_error(what: str, exc: BaseException, *, endpoint: str) -> StorageError:
    """The classified StorageError of a boto3/botocore failure while doing what."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in _NOT_FOUND:
            return KeyNotFound(f"{what}: does not exist", code=code)
        return storage_error(f"{what}: {code} {error.get('Message', '')}".rstrip(), code=code)
    if isinstance(exc, NoCredentialsError):
        return storage_error(f"{what} via {endpoint}: {exc}", code="NoCredentials")
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


_CLIENT_LIBRARIES = ("boto3", "botocore", "s3transfer", "urllib3")


def _from_client_library(exc: BaseException) -> bool:
    """Whether exc comes from boto3 or the libraries beneath it."""
    return type(exc).__module__.partition(".")[0] in _CLIENT_LIBRARIES


class _Body:
    """A get_object body as a binary stream whose network errors are StorageErrors."""

    def __init__(self, body: Any, where: str) -> None:
        self._body = body
        self._where = where

    def read(self, size: int = -1) -> bytes:
        try:
            return cast(bytes, self._body.read(None if size < 0 else size))
        except (BotoCoreError, OSError) as exc:
            raise StorageError(f"reading {self._where} failed: {exc}",
                               code=type(exc).__name__) from exc
        except Exception as exc:
            if not _from_client_library(exc):
                raise
            # urllib3's ProtocolError and kin, mid-stream: an outage
            raise StorageError(f"reading {self._where} failed: {exc!r}",
                               code=type(exc).__name__) from exc

    def close(self) -> None:
        self._body.close()

    def __enter__(self) -> _Body:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class S3Storage:
    """Every operation raises StorageError (KeyNotFound for a missing key): botocore's
    and s3transfer's exceptions are read here and nowhere else."""

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

    @contextlib.contextmanager
    def _classified(self, action: str, key: str, *, local: Path | None = None
                    ) -> Iterator[None]:
        """Whatever a boto3 call raises, as a classified StorageError; local: the file
        on this host that the call reads or writes (its OSErrors are its own)."""
        what = f"{action} {self.url}/{key}"
        endpoint = self.settings.endpoint_url or "AWS S3"
        try:
            yield
        except StorageError:
            raise
        except (BotoCoreError, ClientError) as exc:
            raise s3_error(what, exc, endpoint=endpoint) from exc
        except OSError as exc:
            raise os_error(f"{what} ({local})" if local else what, exc) from exc
        except Exception as exc:
            # s3transfer wraps failures in exceptions of its own; the S3 error behind one
            # (re-raised without `from`) carries code and hint.
            behind = exc.__cause__ or exc.__context__
            if isinstance(behind, (BotoCoreError, ClientError)):
                raise s3_error(what, behind, endpoint=endpoint) from exc
            if isinstance(behind, OSError):
                raise os_error(f"{what} ({local})" if local else what, behind) from exc
            if not _from_client_library(exc):
                raise  # not the storage's: a signal's exception (a time limit), a bug
            raise StorageError(f"{what} via {endpoint}: {exc!r}",
                               code=type(exc).__name__) from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._classified("putting", key):
            self.client.put_object(Bucket=self.bucket, Key=self.object_key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as stream:
            return stream.read()

    def open_read(self, key: str) -> BinaryIO:
        with self._classified("reading", key):
            response = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
        return cast(BinaryIO, _Body(response["Body"], f"{self.url}/{key}"))

    def _head(self, key: str) -> dict[str, Any]:
        with self._classified("looking up", key):
            return cast(dict[str, Any],
                        self.client.head_object(Bucket=self.bucket, Key=self.object_key(key)))

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
        with self._classified("listing", prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full)
            for page in pages:
                keys.extend(item["Key"][len(root):] for item in page.get("Contents", []))
        return sorted(k for k in keys if not k.rsplit("/", 1)[-1].startswith("."))

    def publish_file(self, key: str, path: Path) -> None:
        """Upload path under key, then remove path (a move, like the local backend).

        A single PUT, or a multipart upload that S3 shows only once it completes.
        """
        transfer = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD,
                                  multipart_chunksize=MULTIPART_CHUNKSIZE, max_concurrency=4)
        with self._classified("uploading", key, local=path):
            self.client.upload_file(str(path), self.bucket, self.object_key(key),
                                    Config=transfer)
        path.unlink(missing_ok=True)

    def download_file(self, key: str, path: Path) -> None:
        with self._classified("downloading", key, local=path):
            self.client.download_file(self.bucket, self.object_key(key), str(path))

    def delete(self, key: str) -> None:
        with self._classified("deleting", key):
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))

    def local_path(self, key: str) -> Path | None:
        return None

    def check_access(self) -> None:
        """Fail fast when the bucket cannot be reached with these credentials.

        Raises:
            StorageError: the bucket is missing, forbidden or unreachable (message says).
        """
        try:
            with self._classified("checking bucket of", ""):
                self.client.head_bucket(Bucket=self.bucket)
        except KeyNotFound as exc:  # head_bucket's 404: no such bucket
            endpoint = self.settings.endpoint_url or "AWS S3"
            raise storage_error(f"NoSuchBucket: bucket {self.bucket!r} does not exist at "
                                f"{endpoint}", code="NoSuchBucket") from exc
