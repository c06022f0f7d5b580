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

The spool outlives the process. One folder per storage URL (spool_folder()) holds:
    storage-url     the URL its files belong to
    lock            flock()ed by the one process that uploads from the folder
    keys/<key>      each file waiting for upload, at its key under that URL
A file whose name starts with "." is still being written (".segment_00003.raw.partial",
".manifest.json.partial"): never uploaded. A process that died with uploads pending
leaves its files there; the next UploadSpool on the folder queues them first (resume())
and removes the ones it left unfinished (a full disk, a crash): provably incomplete, they
can never be uploaded, and on a full disk they hold the space the next run needs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from pydantic import ValidationError

from encoder_worker.raw_episode import Manifest
from encoder_worker.raw_layout import MANIFEST_NAME, manifest_key, partial_name
from encoder_worker.storage import Storage, StorageError

logger = logging.getLogger(__name__)

KEYS_DIR = "keys"
URL_FILE = "storage-url"
LOCK_FILE = "lock"


class SpoolBusy(StorageError):
    """Another live process holds the spool folder's lock."""


def spool_folder(spool_dir: Path, storage_url: str) -> Path:
    """The spool folder of one storage URL under spool_dir: a readable slug and a hash.

    The hash keeps two datasets apart even where their slugs are cut to the same text.
    """
    digest = hashlib.sha256(storage_url.encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", storage_url.split("://", 1)[-1]).strip("-.")
    return spool_dir / f"{slug[:48]}-{digest}"


def spooled_files(root: Path) -> list[Path]:
    """Every file in the spool folder root waiting for upload, unfinished ones included."""
    return sorted(p for p in (root / KEYS_DIR).rglob("*") if p.is_file())


def _unfinished(path: Path) -> bool:
    # Writers write under a dotted name and rename when the file is complete.
    return path.name.startswith(".")


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
        self._lock_fd: int | None = _lock(root, storage.url)
        try:
            _claim(root, storage.url)
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
        folders: dict[Path, list[Path]] = {}
        for path in spooled_files(self.root):
            folders.setdefault(path.parent, []).append(path)
        for folder, paths in folders.items():
            complete = [p for p in paths if not _unfinished(p)]
            for path in (p for p in paths if _unfinished(p)):
                found.dropped.append(self._key(path))
                found.dropped_bytes += path.stat().st_size
                path.unlink()
            segments = [p for p in complete if p.name != MANIFEST_NAME]
            manifest = folder / MANIFEST_NAME if len(segments) < len(complete) else None
            problem = _check_manifest(manifest, segments) if manifest is not None else None
            if problem is not None:
                logger.error("upload spool: %s; keeping %s/ and not uploading it",
                             problem, folder)
                found.kept += [self._key(p) for p in complete]
                continue
            # Sized before queueing: the upload threads move files out of the spool.
            found.bytes += sum(p.stat().st_size for p in complete)
            earlier = [self._queue_leftover(path) for path in segments]
            if manifest is not None:
                earlier.append(self._queue_leftover(manifest, after=earlier))
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

    def sink(self, prefix: str, *, durable_manifest: bool = False) -> SpoolSink:
        """A SegmentSink for one raw episode prefix that writes into this spool."""
        return SpoolSink(self, prefix, durable_manifest=durable_manifest)

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
                    _fsync(upload.path)
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


class SpoolSink:
    """SegmentSink of one raw episode: segments into the spool, then uploaded in order."""

    def __init__(self, spool: UploadSpool, prefix: str, *, durable_manifest: bool) -> None:
        self.spool = spool
        self.prefix = prefix
        # True: commit_manifest returns only once the manifest is stored (inline encoding
        # reads the episode back right away).
        self.durable_manifest = durable_manifest
        self._dir = spool.keys_dir / prefix
        self._dir.mkdir(parents=True, exist_ok=True)
        self._segments: list[Upload] = []
        self.manifest_upload: Upload | None = None

    def open_segment(self, name: str) -> BinaryIO:
        return open(self._dir / partial_name(name), "wb")

    def commit_segment(self, name: str, file: BinaryIO) -> None:
        # No fsync here: it stalls capture on a busy host, and most segments leave the
        # spool within seconds. The uploader syncs a file once it has to wait.
        file.close()
        path = self._dir / name
        os.replace(file.name, path)
        self._segments.append(self.spool.enqueue(f"{self.prefix}/{name}", path))

    def commit_manifest(self, manifest: Manifest) -> None:
        path = self._dir / MANIFEST_NAME
        tmp = path.with_name(partial_name(MANIFEST_NAME))
        tmp.write_bytes(manifest.model_dump_json().encode())
        os.replace(tmp, path)
        upload = self.spool.enqueue(manifest_key(self.prefix), path, after=self._segments)
        self.manifest_upload = upload
        if self.durable_manifest:
            self.spool.wait_for_upload(upload)


def _lock(root: Path, storage_url: str) -> int:
    """Take the spool folder's lock; returns its open descriptor (closing it unlocks).

    flock() is released by the kernel when its holder dies, so a lock left by a killed
    recorder never blocks the next one.

    Raises:
        SpoolBusy: another live process holds it.
    """
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise SpoolBusy(
            f"another recorder (pid {holder}) is using the upload spool {root} for "
            f"{storage_url}: wait until it has finished, or give this one another "
            f"--spool-dir (FARM_SPOOL_DIR)") from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _claim(root: Path, storage_url: str) -> None:
    """Record the storage URL of root's files, or refuse a folder that holds another's.

    Raises:
        StorageError: root belongs to another storage URL.
    """
    path = root / URL_FILE
    if path.exists():
        owner = path.read_text().strip()
        if owner != storage_url:
            raise StorageError(f"the upload spool {root} holds files for {owner}, not "
                               f"{storage_url}: give this storage another spool folder")
        return
    tmp = path.with_name(partial_name(URL_FILE))
    tmp.write_text(f"{storage_url}\n")
    os.replace(tmp, path)


def _check_manifest(path: Path, segments: list[Path]) -> str | None:
    """Why a spooled manifest must not be uploaded with these segments, or None."""
    try:
        manifest = Manifest.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        return f"{path} cannot be read ({type(exc).__name__})"
    sizes = {info.name: info.bytes for info in manifest.segments}
    for segment in segments:
        size = segment.stat().st_size
        if segment.name in sizes and size != sizes[segment.name]:
            return (f"{segment} has {size} bytes, its manifest says "
                    f"{sizes[segment.name]}")
    return None


def _permanent(exc: BaseException) -> bool:
    """Whether no retry can fix an upload error: as the storage classified it; a spool
    file that is gone or unreadable (not a StorageError) cannot be uploaded either."""
    if isinstance(exc, StorageError):
        return exc.permanent
    return isinstance(exc, OSError)


def _fsync(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    except OSError:
        logger.warning("could not flush %s to disk", path, exc_info=True)
