"""The upload spool's folder on disk: one per storage URL, locked by the one recorder that
uploads from it, claimed for its URL, and read back after a run that stopped.

    storage-url     the URL its files belong to
    lock            flock()ed by the one process that uploads from the folder
    keys/<key>      each file waiting for upload, at its key under that URL

A file whose name starts with "." is still being written (raw_layout.partial_name).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from encoder_worker.raw_episode import Manifest
from encoder_worker.raw_layout import MANIFEST_NAME, partial_name
from encoder_worker.storage import StorageError

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


def unfinished(path: Path) -> bool:
    # Writers write under a dotted name and rename when the file is complete.
    return path.name.startswith(".")


def lock_folder(root: Path, storage_url: str) -> int:
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


def claim_folder(root: Path, storage_url: str) -> None:
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


def check_manifest(path: Path, segments: list[Path]) -> str | None:
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


def fsync_file(path: Path) -> None:
    try:
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    except OSError:
        logger.warning("could not flush %s to disk", path, exc_info=True)


@dataclass
class LeftoverFolder:
    """One episode camera's files an earlier run left in the spool (resume reads them)."""

    folder: Path
    segments: list[Path] = field(default_factory=list)
    manifest: Path | None = None
    unfinished: list[Path] = field(default_factory=list)  # never uploadable: removed
    problem: str | None = None  # why its files must not be uploaded (kept in the spool)


def leftover_folders(keys_dir: Path) -> Iterator[LeftoverFolder]:
    """The folders of spooled files under keys_dir, their files sorted out."""
    folders: dict[Path, list[Path]] = {}
    for path in sorted(p for p in keys_dir.rglob("*") if p.is_file()):
        folders.setdefault(path.parent, []).append(path)
    for folder, paths in folders.items():
        leftover = LeftoverFolder(folder, unfinished=[p for p in paths if unfinished(p)])
        complete = [p for p in paths if not unfinished(p)]
        leftover.segments = [p for p in complete if p.name != MANIFEST_NAME]
        if len(leftover.segments) < len(complete):
            leftover.manifest = folder / MANIFEST_NAME
            leftover.problem = check_manifest(leftover.manifest, leftover.segments)
        yield leftover
