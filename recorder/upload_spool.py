"""Upload while recording: segments go to a local spool, background threads upload them.

The record loop never waits for the network. A file stays in the spool until its upload is
confirmed; failed uploads are retried with exponential backoff for as long as it takes, so
a network outage only makes the spool grow, and uploads resume when the network returns.
A raw episode's manifest is uploaded only after all of its segments are.

Errors that no retry can fix (the bucket does not exist, the credentials are refused) stop
the spool instead: what is not uploaded stays in it, and the next commit, wait() or close()
raises a StorageError that says what to fix.

The spool is bounded by max_bytes. When files waiting for upload reach it (a long
outage), committing the next segment waits for uploads to free room: the camera writers
then fall behind and the record loop waits for them (counted as writer waits and late
frames). Frames are delayed, never dropped; the log says why.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from botocore.exceptions import ClientError

from encoder_worker.raw_episode import MANIFEST_NAME, Manifest, manifest_key
from encoder_worker.storage import Storage, StorageError

logger = logging.getLogger(__name__)

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


@dataclass
class _Upload:
    key: str
    path: Path
    size: int
    # Uploads that must be confirmed first (a manifest's segments).
    after: list[_Upload] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)  # confirmed stored


class UploadSpool:
    """A local spool folder and the threads that upload its files into storage.

    A context manager: leaving it waits until every file is uploaded (see close()).
    """

    def __init__(self, storage: Storage, root: Path, *, max_bytes: int, threads: int = 2,
                 retry_initial_s: float = 0.5, retry_max_s: float = 30.0) -> None:
        self.storage = storage
        self.root = root
        self.max_bytes = max_bytes
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.root.mkdir(parents=True, exist_ok=True)
        self._cond = threading.Condition()
        self._queue: deque[_Upload] = deque()
        self._pending_bytes = 0  # queued or uploading, not yet confirmed
        self._pending_files = 0
        self._stopping = False
        # Set by the first permanent upload error; the spool uploads nothing after it.
        self._error: StorageError | None = None
        self.uploaded_files = 0
        self.failed_attempts = 0
        self._threads = [threading.Thread(target=self._run, name=f"upload-{i}", daemon=True)
                         for i in range(threads)]
        for thread in self._threads:
            thread.start()

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def pending_files(self) -> int:
        return self._pending_files

    @property
    def error(self) -> StorageError | None:
        """The permanent upload error that stopped the spool, or None."""
        return self._error

    def sink(self, prefix: str, *, durable_manifest: bool = False) -> SpoolSink:
        """A SegmentSink for one raw episode prefix that writes into this spool."""
        return SpoolSink(self, prefix, durable_manifest=durable_manifest)

    def enqueue(self, key: str, path: Path, *, after: list[_Upload] | None = None) -> _Upload:
        """Queue a finished spool file for upload; waits while the spool is full.

        Raises:
            StorageError: an earlier upload failed permanently; path stays in the spool.
        """
        upload = _Upload(key, path, path.stat().st_size, after=list(after or []))
        with self._cond:
            self._raise_if_failed()
            if self._pending_files and self._pending_bytes >= self.max_bytes:
                logger.warning(
                    "upload spool %s is full (%.0f MB waiting for upload): recording waits "
                    "for uploads; frames are delayed, not dropped", self.root,
                    self._pending_bytes / 1e6)
                started = time.monotonic()
                self._cond.wait_for(lambda: not self._pending_files or self._error is not None
                                    or self._pending_bytes < self.max_bytes)
                self._raise_if_failed()
                logger.warning("upload spool has room again after %.1fs",
                               time.monotonic() - started)
            self._queue.append(upload)
            self._pending_bytes += upload.size
            self._pending_files += 1
            self._cond.notify_all()
        return upload

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._stopping
                                    or self._error is not None)
                if not self._queue or self._error is not None:
                    return  # what is still queued stays in the spool
                upload = self._queue.popleft()
            if not self._wait_for_earlier(upload) or not self._upload(upload):
                return
            with self._cond:
                self._pending_bytes -= upload.size
                self._pending_files -= 1
                self.uploaded_files += 1
                upload.done.set()
                self._cond.notify_all()

    def _wait_for_earlier(self, upload: _Upload) -> bool:
        """Wait until the uploads that must precede upload are stored; False on a failure."""
        # Taken in order, so every earlier upload is already in some thread's hands.
        with self._cond:
            self._cond.wait_for(lambda: self._error is not None
                                or all(e.done.is_set() for e in upload.after))
            return self._error is None

    def _upload(self, upload: _Upload) -> bool:
        """Upload one file, retrying until confirmed; then it leaves the spool.

        Returns False, leaving the file in the spool, once the spool has stopped on a
        permanent error (this file's or another's).
        """
        delay = self.retry_initial_s
        failures = 0
        while True:
            try:
                if upload.path.name == MANIFEST_NAME:
                    self.storage.put_bytes(upload.key, upload.path.read_bytes())
                    upload.path.unlink()
                else:
                    # Moves the file: it is gone from the spool only once stored.
                    self.storage.publish_file(upload.key, upload.path)
                if failures:
                    logger.warning("uploaded %s/%s after %d failed attempts",
                                   self.storage.url, upload.key, failures)
                return True
            except Exception as exc:
                failures += 1
                if failures == 1:
                    # It will wait in the spool: now it must survive a power cut.
                    _fsync(upload.path)
                with self._cond:
                    self.failed_attempts += 1
                    code = _error_code(exc)
                    if code in PERMANENT_ERRORS:
                        self._fail(exc, code)
                        return False
                    if self._error is not None:
                        return False
                log = logger.warning if failures == 1 or failures % 10 == 0 else logger.debug
                log("upload of %s/%s failed (attempt %d, %.0f MB in the spool): %s; "
                    "retrying in %.1fs", self.storage.url, upload.key, failures,
                    self._pending_bytes / 1e6, exc, delay)
                # The file stays in the spool: nothing recorded is lost while we wait.
                with self._cond:
                    if self._cond.wait_for(lambda: self._error is not None, timeout=delay):
                        return False
                delay = min(self.retry_max_s, delay * 2)

    def _fail(self, exc: Exception, code: str) -> None:
        """Stop the spool on a permanent error; called holding the lock."""
        if self._error is not None:
            return
        hint = PERMANENT_ERRORS[code]
        reason = str(exc) if hint in str(exc) else f"{exc}; {hint}"
        self._error = StorageError(
            f"uploads to {self.storage.url} stopped: {reason}. Nothing more "
            f"is uploaded; the raw files not uploaded stay in {self.root}, laid out like "
            f"their keys under {self.storage.url}")
        self._error.__cause__ = exc
        logger.error("%s", self._error)
        self._cond.notify_all()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            # A fresh exception per caller: several threads may raise it at once.
            raise StorageError(str(self._error)) from self._error.__cause__

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued file is uploaded; returns False when timeout_s ran out.

        Raises:
            StorageError: an upload failed permanently (message says what to fix).
        """
        with self._cond:
            self._cond.wait_for(lambda: not self._pending_files or self._error is not None,
                                timeout=timeout_s)
            self._raise_if_failed()
            return not self._pending_files

    def close(self, timeout_s: float | None = None) -> bool:
        """Upload what is queued (wait at most timeout_s), then stop the threads.

        Returns False when files are left in the spool; they stay on disk under root.

        Raises:
            StorageError: an upload failed permanently; the files not uploaded stay
                under root.
        """
        try:
            uploaded = self.wait(timeout_s)
        except StorageError:
            self._join()
            raise
        if not uploaded:
            logger.error("%d raw files (%.0f MB) could not be uploaded to %s yet; they are "
                         "kept in %s", self._pending_files, self._pending_bytes / 1e6,
                         self.storage.url, self.root)
            return False
        self._join()
        return True

    def _join(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()

    def wait_for_upload(self, upload: _Upload) -> None:
        """Wait until upload is confirmed stored.

        Raises:
            StorageError: an upload failed permanently; upload stays in the spool.
        """
        with self._cond:
            self._cond.wait_for(lambda: upload.done.is_set() or self._error is not None)
            if not upload.done.is_set():
                self._raise_if_failed()

    def __enter__(self) -> UploadSpool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class SpoolSink:
    """SegmentSink of one raw episode: segments into the spool, then uploaded in order."""

    def __init__(self, spool: UploadSpool, prefix: str, *, durable_manifest: bool) -> None:
        self.spool = spool
        self.prefix = prefix
        # True: commit_manifest returns only once the manifest is stored (inline encoding
        # reads the episode back right away).
        self.durable_manifest = durable_manifest
        self._dir = spool.root / prefix
        self._dir.mkdir(parents=True, exist_ok=True)
        self._segments: list[_Upload] = []

    def open_segment(self, name: str) -> BinaryIO:
        return open(self._dir / f".{name}.partial", "wb")

    def commit_segment(self, name: str, file: BinaryIO) -> None:
        # No fsync here: it stalls capture on a busy host, and most segments leave the
        # spool within seconds. The uploader syncs a file once it has to wait.
        file.close()
        path = self._dir / name
        os.replace(file.name, path)
        self._segments.append(self.spool.enqueue(f"{self.prefix}/{name}", path))

    def commit_manifest(self, manifest: Manifest) -> None:
        path = self._dir / MANIFEST_NAME
        tmp = path.with_name(f".{MANIFEST_NAME}.partial")
        tmp.write_bytes(manifest.model_dump_json().encode())
        os.replace(tmp, path)
        upload = self.spool.enqueue(manifest_key(self.prefix), path, after=self._segments)
        if self.durable_manifest:
            self.spool.wait_for_upload(upload)


def _error_code(exc: BaseException) -> str | None:
    """The S3 error code of a botocore ClientError behind exc (a cause of a cause), if any.

    Storage backends raise StorageError from the client's error; boto3's upload_file
    wraps it once more without `from`, so implicit contexts count too.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ClientError):
            return str(current.response.get("Error", {}).get("Code", "")) or None
        current = current.__cause__ or current.__context__
    return None


def _fsync(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    except OSError:
        logger.warning("could not flush %s to disk", path, exc_info=True)
