"""Where a raw episode's writer puts its segments, manifest and windows (SegmentSink), and
the sink of a storage written directly (DirectSink); the upload spool's is
recorder/farm/spool_sink.py."""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from encoder_worker.raw_layout import manifest_key, partial_name
from encoder_worker.storage import Storage

if TYPE_CHECKING:
    from encoder_worker.raw_episode import Manifest

logger = logging.getLogger(__name__)

WindowCallback = Callable[["Manifest"], None]


class SegmentSink(Protocol):
    """Where a writer's segments and manifest go; decides when they are durable."""

    def open_segment(self, name: str) -> BinaryIO:
        """A local file to write the segment's bytes into."""

    def commit_segment(self, name: str, file: BinaryIO) -> None:
        """Close the segment file and make it part of the episode (may finish later)."""

    def commit_manifest(self, manifest: Manifest) -> None:
        """Store the manifest after every committed segment is stored."""

    def commit_window(self, window: Manifest) -> None:
        """Hand a window of frames (window_of) to whoever encodes it, once its segments are
        where workers read them."""


class DirectSink:
    """Writes segments straight into the storage: in place for a local folder.

    In place, segments are renamed into place as they fill but flushed to disk (fsync)
    only before the manifest is written: an fsync per segment during capture stalled the
    record loop on a busy host (measured), and the manifest is the commit point anyway.
    """

    def __init__(self, storage: Storage, prefix: str, *, scratch_dir: Path | None = None,
                 on_window: WindowCallback | None = None) -> None:
        self.storage = storage
        self.prefix = prefix
        self.on_window = on_window
        self._scratch_dir = scratch_dir
        # Found and made at the first segment, in the writer's thread: the record loop
        # makes an episode's sinks in its first slot, where path lookups and mkdir cost
        # it milliseconds on a busy host (each syscall gives the GIL away).
        self._dir: Path | None = None
        self._in_place = False
        self._unsynced: list[Path] = []

    def _folder(self) -> Path:
        if self._dir is None:
            folder = self.storage.local_path(self.prefix)
            self._in_place = folder is not None
            if folder is None:
                folder = self._scratch_dir
            if folder is None:
                raise ValueError(f"{self.storage.url} is not a local folder: give a scratch_dir")
            folder.mkdir(parents=True, exist_ok=True)
            self._dir = folder
        return self._dir

    def open_segment(self, name: str) -> BinaryIO:
        return open(self._folder() / partial_name(name), "wb")

    def commit_segment(self, name: str, file: BinaryIO) -> None:
        start_writeback(file)
        file.close()
        folder = self._folder()  # found with the segment's open: this also says in place
        if not self._in_place:
            self.storage.publish_file(f"{self.prefix}/{name}", Path(file.name))
            return
        final = folder / name
        os.replace(file.name, final)
        self._unsynced.append(final)

    def commit_manifest(self, manifest: Manifest) -> None:
        for path in self._unsynced:
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        self._unsynced.clear()
        self.storage.put_bytes(manifest_key(self.prefix), manifest.model_dump_json().encode())

    def commit_window(self, window: Manifest) -> None:
        # Its segments are in place (a local folder) or published (commit_segment) already.
        if self.on_window is not None:
            self.on_window(window)


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2), which Python's os module does not offer; None elsewhere."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


_SYNC_FILE_RANGE = _sync_file_range()
SYNC_FILE_RANGE_WRITE = 2


def start_writeback(file: BinaryIO) -> None:
    """Start writing a finished segment to disk, without waiting for it.

    The manifest's fsync then finds little left to write: the episode's commit (and the
    recorder's wait for the last one) no longer flushes the whole episode at once, and
    the disk writes spread over the capture instead of bursting at each episode end.
    Page cache is kept, so workers on the same host still read the frames from memory.
    """
    if _SYNC_FILE_RANGE is None:
        return
    file.flush()
    if _SYNC_FILE_RANGE(file.fileno(), 0, 0, SYNC_FILE_RANGE_WRITE) != 0:
        logger.debug("sync_file_range failed: %s", os.strerror(ctypes.get_errno()))
