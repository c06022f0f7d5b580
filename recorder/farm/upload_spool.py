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

The spool outlives the process: one folder per storage URL (spool_folder.py). A file
still being written (a dotted ".segment_00003.raw.partial") is never uploaded. A process
that died with uploads pending
leaves its files there; the next UploadSpool on the folder queues them first (resume())
and removes the ones it left unfinished (a full disk, a crash): provably incomplete, they
can never be uploaded, and on a full disk they hold the space the next run needs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from encoder_worker.raw_layout import MANIFEST_NAME, partial_name
from encoder_worker.storage import Storage, StorageError
from recorder.farm.spool_folder import (
    KEYS_DIR,
    claim_folder,
    fsync_file,
    leftover_folders,
    lock_folder,
)

logger = logging.getLogger(__name__)



@dataclass
class Leftovers:
    """What earlier processes left in a spool folder, found by UploadSpool.resume()."""

    queued: list[str] = field(default_factory=list)  # keys queued for upload, in order
    kept: list[str] = field(default_factory=list)  # keys kept in the spool, not uploaded
    dropped: list[str] = field(default_factory=list)  # unfinished files, removed
    bytes: int = 0  # of the queued files
    dropped_bytes: int = 0
    uploads: dict[str, Upload] = field(default_factory=dict)  # of the queued keys

    @property
    def keys(self) -> list[str]:
        return self.queued + self.kept + self.dropped


@dataclass
class Upload:
    """One spool file on its way to storage."""

    key: str
    path: Path
    size: int
    # Uploads that must be confirmed first (a manifest's segments).
    after: list[Upload] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)  # confirmed stored
    _callbacks: list[Callable[[], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def when_done(self, callback: Callable[[], None]) -> None:
        """Call callback once the file is confirmed stored: now if it is, else from the
        upload thread that stored it."""
        with self._lock:
            if not self.done.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def _stored(self) -> list[Callable[[], None]]:
        """Mark it stored; returns the callbacks to call (outside the spool's lock)."""
        with self._lock:
            self.done.set()
            callbacks, self._callbacks = self._callbacks, []
        return callbacks


def when_all_done(uploads: list[Upload], callback: Callable[[], None]) -> None:
    """Call callback once every one of uploads is stored (from the thread that stored the
    last; now if all are)."""
    left = [len(uploads)]
    lock = threading.Lock()

    def one_done() -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            callback()

    if not uploads:
        callback()
    for upload in uploads:
        upload.when_done(one_done)


class UploadSpool:
    """A local spool folder and the threads that upload its files into storage.

    Holds the folder's lock from construction until close() has uploaded everything (or
    the process ends). A context manager: leaving it waits until every file is uploaded
    (see close()).

    Raises:
        SpoolBusy: another live process uses the folder.
        StorageError: the folder belongs to another storage URL.
    """

    def __init__(self, storage: Storage, root: Path, *, max_bytes: int, threads: int = 2,
                 retry_initial_s: float = 0.5, retry_max_s: float = 30.0) -> None:
        self.storage = storage
        self.root = root
        self.keys_dir = root / KEYS_DIR
        self.max_bytes = max_bytes
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.keys_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = lock_folder(root, storage.url)
        try:
            claim_folder(root, storage.url)
        except BaseException:
            self._unlock()
            raise
        self._resumed = False
        self._cond = threading.Condition()
        self._queue: deque[Upload] = deque()
        self._pending_bytes = 0  # queued or uploading, not yet confirmed
        self._pending_files = 0
        self._stopping = False
        # Set by the first permanent upload error; the spool uploads nothing after it.
        self._error: StorageError | None = None
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

    def resume(self) -> Leftovers:
        """Queue the files that earlier processes left in the spool, ahead of new ones.

        Call once, before the first sink. Segments are queued before the manifests of
        their episodes. Removed, and logged by name: files still being written when their
        writer died (a dotted name). Kept in the spool, logged and never uploaded: an
        episode whose manifest cannot be read or disagrees with the size of a spooled
        segment (a power cut before the data reached the disk): uploading it would
        publish a corrupt episode. The queued files do not count against max_bytes here:
        they are on disk already.
        """
        if self._resumed:
            raise RuntimeError("resume() was called already: its files are queued")
        self._resumed = True
        found = Leftovers()
        for leftover in leftover_folders(self.keys_dir):
            for path in leftover.unfinished:
                found.dropped.append(self._key(path))
                found.dropped_bytes += path.stat().st_size
                path.unlink()
            complete = [*leftover.segments, *([leftover.manifest] if leftover.manifest else [])]
            if leftover.problem is not None:
                logger.error("upload spool: %s; keeping %s/ and not uploading it",
                             leftover.problem, leftover.folder)
                found.kept += [self._key(p) for p in complete]
                continue
            # Sized before queueing: the upload threads move files out of the spool.
            found.bytes += sum(p.stat().st_size for p in complete)
            earlier = [self._queue_leftover(path) for path in leftover.segments]
            if leftover.manifest is not None:
                earlier.append(self._queue_leftover(leftover.manifest, after=earlier))
            found.queued += [upload.key for upload in earlier]
            found.uploads.update((upload.key, upload) for upload in earlier)
        if found.queued:
            logger.warning("upload spool %s holds %d raw files (%.0f MB) of an earlier run "
                           "not uploaded to %s: uploading them first, in the background",
                           self.root, len(found.queued), found.bytes / 1e6, self.storage.url)
        if found.dropped:
            logger.warning("upload spool %s: removed %d unfinished files (%.1f MB) that an "
                           "earlier run was still writing when it stopped (a full disk, a "
                           "crash): %s. Their episodes were interrupted and are not in the "
                           "dataset; the complete files of those episodes are uploaded as "
                           "raw data", self.root, len(found.dropped), found.dropped_bytes / 1e6,
                           ", ".join(found.dropped))
        if found.kept:
            logger.warning("upload spool %s: %d files are not uploaded and stay there, "
                           "inconsistent (a power cut before their data reached the disk?): "
                           "%s", self.root, len(found.kept), ", ".join(found.kept))
        self._prune()
        return found

    def _key(self, path: Path) -> str:
        return path.relative_to(self.keys_dir).as_posix()

    def _queue_leftover(self, path: Path, *, after: list[Upload] | None = None) -> Upload:
        upload = Upload(self._key(path), path, path.stat().st_size, after=list(after or []))
        with self._cond:
            self._append(upload)
        return upload

    def _append(self, upload: Upload) -> None:
        """Queue upload; the caller holds self._cond."""
        self._queue.append(upload)
        self._pending_bytes += upload.size
        self._pending_files += 1
        self._cond.notify_all()

    def _prune(self) -> None:
        """Remove empty folders under keys/ (episodes uploaded)."""
        for folder in sorted((p for p in self.keys_dir.rglob("*") if p.is_dir()),
                             key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):  # not empty
                folder.rmdir()

    def enqueue(self, key: str, path: Path, *, after: list[Upload] | None = None) -> Upload:
        """Queue a finished spool file for upload; waits while the spool is full.

        Raises:
            StorageError: an earlier upload failed permanently; path stays in the spool.
        """
        upload = Upload(key, path, path.stat().st_size, after=list(after or []))
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
            self._append(upload)
        return upload

    def put_bytes(self, key: str, data: bytes, *,
                  after: list[Upload] | None = None) -> Upload:
        """Queue a small file written whole (an episode record), uploaded after after.

        Raises:
            StorageError: an earlier upload failed permanently.
        """
        path = self.keys_dir / key
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(partial_name(path.name))
        partial.write_bytes(data)
        os.replace(partial, path)
        return self.enqueue(key, path, after=after)

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
                callbacks = upload._stored()
                self._cond.notify_all()
            for callback in callbacks:
                callback()

    def _wait_for_earlier(self, upload: Upload) -> bool:
        """Wait until the uploads that must precede upload are stored; False on a failure."""
        # Taken in order, so every earlier upload is already in some thread's hands.
        with self._cond:
            self._cond.wait_for(lambda: self._error is not None
                                or all(e.done.is_set() for e in upload.after))
            return self._error is None

    def _upload(self, upload: Upload) -> bool:
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
                    fsync_file(upload.path)
                with self._cond:
                    if _permanent(exc):
                        self._fail(exc)
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

    def _fail(self, exc: Exception) -> None:
        """Stop the spool on a permanent error; called holding the lock."""
        if self._error is not None:
            return
        hint = exc.hint if isinstance(exc, StorageError) else ""
        reason = str(exc) if hint in str(exc) else f"{exc}; {hint}"
        self._error = StorageError(
            f"uploads to {self.storage.url} stopped: {reason}. Nothing more "
            f"is uploaded; the raw files not uploaded stay in {self.keys_dir}, laid out like "
            f"their keys under {self.storage.url}, and the next recorder for this storage "
            f"uploads them")
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
            # The threads go on trying, and hold the lock, while the process lives.
            logger.error("%d raw files (%.0f MB) could not be uploaded to %s yet; they are "
                         "kept in %s, and the next recorder for this storage uploads them",
                         self._pending_files, self._pending_bytes / 1e6, self.storage.url,
                         self.keys_dir)
            return False
        self._join()
        self._prune()
        return True

    def _join(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def wait_for_upload(self, upload: Upload) -> None:
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


def _permanent(exc: BaseException) -> bool:
    """Whether no retry can fix an upload error: as the storage classified it; a spool
    file that is gone or unreadable (not a StorageError) cannot be uploaded either."""
    if isinstance(exc, StorageError):
        return exc.permanent
    return isinstance(exc, OSError)


