"""Upload while recording: segments go to a local spool, background threads upload them.

The record loop never waits for the network. A file stays in the spool until its upload is
confirmed; failed uploads are retried with exponential backoff for as long as it takes, so
a network outage only makes the spool grow, and uploads resume when the network returns.
A raw episode's manifest is uploaded only after all of its segments are.

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

from encoder_worker.raw_episode import MANIFEST_NAME, Manifest, manifest_key
from encoder_worker.storage import Storage

logger = logging.getLogger(__name__)


@dataclass
class _Upload:
    key: str
    path: Path
    size: int
    # Uploads that must be confirmed first (a manifest's segments).
    after: list[_Upload] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)


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

    def sink(self, prefix: str, *, durable_manifest: bool = False) -> SpoolSink:
        """A SegmentSink for one raw episode prefix that writes into this spool."""
        return SpoolSink(self, prefix, durable_manifest=durable_manifest)

    def enqueue(self, key: str, path: Path, *, after: list[_Upload] | None = None) -> _Upload:
        """Queue a finished spool file for upload; waits while the spool is full."""
        upload = _Upload(key, path, path.stat().st_size, after=list(after or []))
        with self._cond:
            if self._pending_files and self._pending_bytes >= self.max_bytes:
                logger.warning(
                    "upload spool %s is full (%.0f MB waiting for upload): recording waits "
                    "for uploads; frames are delayed, not dropped", self.root,
                    self._pending_bytes / 1e6)
                started = time.monotonic()
                self._cond.wait_for(lambda: not self._pending_files
                                    or self._pending_bytes < self.max_bytes)
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
                self._cond.wait_for(lambda: self._queue or self._stopping)
                if not self._queue:
                    return
                upload = self._queue.popleft()
            for earlier in upload.after:
                # Taken in order, so every earlier upload is already in some thread's hands.
                earlier.done.wait()
            self._upload(upload)
            with self._cond:
                self._pending_bytes -= upload.size
                self._pending_files -= 1
                self.uploaded_files += 1
                self._cond.notify_all()
            upload.done.set()

    def _upload(self, upload: _Upload) -> None:
        """Upload one file, retrying until confirmed; then it leaves the spool."""
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
                return
            except Exception as exc:
                failures += 1
                if failures == 1:
                    # It will wait in the spool: now it must survive a power cut.
                    _fsync(upload.path)
                with self._cond:
                    self.failed_attempts += 1
                log = logger.warning if failures == 1 or failures % 10 == 0 else logger.debug
                log("upload of %s/%s failed (attempt %d, %.0f MB in the spool): %s; "
                    "retrying in %.1fs", self.storage.url, upload.key, failures,
                    self._pending_bytes / 1e6, exc, delay)
                # The file stays in the spool: nothing recorded is lost while we wait.
                time.sleep(delay)
                delay = min(self.retry_max_s, delay * 2)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until every queued file is uploaded; returns False when timeout_s ran out."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending_files, timeout=timeout_s)

    def close(self, timeout_s: float | None = None) -> bool:
        """Upload what is queued (wait at most timeout_s), then stop the threads.

        Returns False when files are left in the spool; they stay on disk under root.
        """
        uploaded = self.wait(timeout_s)
        if not uploaded:
            logger.error("%d raw files (%.0f MB) could not be uploaded to %s yet; they are "
                         "kept in %s", self._pending_files, self._pending_bytes / 1e6,
                         self.storage.url, self.root)
            return False
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()
        return True

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
            upload.done.wait()


def _fsync(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    except OSError:
        logger.warning("could not flush %s to disk", path, exc_info=True)
