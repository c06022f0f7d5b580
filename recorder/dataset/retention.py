"""Raw retention: an episode's raw frames go once the dataset counts it.

An episode counts once meta/info.json, written last by completion, covers its row; its
videos were verified before (by the encode that published them, and against the rows at
completion). Only then are its raw frames, rows and record deleted. Raw frames of
interrupted or cleared recordings, and of episodes still waiting for a video, stay.
With keep_raw (`--keep-raw`) everything stays, for encoding again later.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

from encoder_worker.jobs import PARTS_ROOT, parts_folder
from encoder_worker.raw_layout import RAW_ROOT, recording_of, recording_prefix
from encoder_worker.storage import Storage, StorageError
from recorder.dataset.failpoints import failpoint

logger = logging.getLogger(__name__)


def recordings_with_raw(raw: Storage) -> set[int]:
    """Recording numbers that still have any raw file."""
    return {n for key in raw.list_keys(RAW_ROOT) if (n := recording_of(key)) is not None}


def raw_bytes(raw: Storage) -> int:
    """Bytes of every raw file left in this storage: what retention has not deleted.

    In a local folder every file under raw/ counts, dotted ones (a writer's unfinished
    segment) too: what the disk holds."""
    folder = raw.local_path(RAW_ROOT)
    if folder is not None:
        return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())
    return sum(raw.size(key) for key in raw.list_keys(RAW_ROOT))


def drop_counted_raw(raw: Storage, counted: Iterable[int]) -> list[int]:
    """Delete the raw files of the recordings the dataset counts; returns those deleted.

    Idempotent: a deletion cut short (a crash, a storage error, said) leaves files that the
    next completion deletes, since their recording is still counted.
    """
    dropped: list[int] = []
    for recording in sorted(recordings_with_raw(raw) & set(counted)):
        if dropped:
            failpoint("retention:between-recordings")
        try:
            raw.delete_prefix(recording_prefix(recording))
        except StorageError as exc:  # the dataset is complete; only disk space waits
            logger.warning("raw frames of recording %d, which the dataset counts, could not "
                           "be deleted (%s); the next completion (`recorder encode-pending`) "
                           "deletes them", recording, exc)
            continue
        dropped.append(recording)
    if dropped and (folder := raw.local_path(RAW_ROOT)) is not None:
        with contextlib.suppress(OSError):  # rmdir: a recording started meanwhile keeps it
            folder.rmdir()
    if dropped:
        logger.info("raw frames of recordings %s deleted: their episodes are in the dataset "
                    "(--keep-raw keeps them)", dropped)
    return dropped


def drop_parts_left(dataset: Storage, videos: Iterable[str]) -> None:
    """Delete what is left of the parts of videos the dataset counts: a join removes its
    parts, but one that died after publishing, or windows whose run stopped before the
    episode's save sent its last part (the next run encodes it whole), leave theirs."""
    for key in videos:
        try:
            dataset.delete_prefix(parts_folder(key))
        except StorageError as exc:  # the dataset is complete; only disk space waits
            logger.warning("parts of %s could not be deleted (%s); the next completion "
                           "deletes them", key, exc)
    root = dataset.local_path(PARTS_ROOT)
    if root is not None and root.is_dir():
        # Empty folders only (deepest first): a video being encoded keeps its own.
        for folder in sorted((p for p in root.rglob("*") if p.is_dir()), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()
        with contextlib.suppress(OSError):
            root.rmdir()
