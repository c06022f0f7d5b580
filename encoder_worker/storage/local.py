"""A local folder as storage; writes go to a temp file in the same folder, then rename."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from encoder_worker.storage import KeyNotFound, StorageError

# OS errors that no retry fixes, and what the user has to do about them.
PERMANENT_ERRNOS = {
    errno.ENOSPC: "the disk is full: free space there, or use another folder",
    errno.EDQUOT: "the disk quota is used up: free space, or use another folder",
    errno.EACCES: "this user may not write there: fix the folder's permissions",
    errno.EPERM: "this user may not write there: fix the folder's permissions",
    errno.EROFS: "the folder is on a read-only file system",
    errno.ENOENT: "a file is missing (removed while in use?)",
}


@contextlib.contextmanager
def classified(action: str, where: str) -> Iterator[None]:
    """OSErrors of a local write, raised as StorageError with code, permanence and hint."""
    try:
        yield
    except OSError as exc:
        hint = PERMANENT_ERRNOS.get(exc.errno or 0, "")
        code = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        raise StorageError(f"{action} {where}: {exc.strerror or exc}"
                           + (f"; {hint}" if hint else ""),
                           code=code, permanent=bool(hint), hint=hint) from exc


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# What open() would give a new file: mkstemp's temp files are 0600, and a dataset (or a
# manifest a container worker of another uid reads) must not stay that private.
FILE_MODE = 0o666 & ~_umask()


class LocalStorage:
    shared_across_hosts = False

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.url = self.root.as_uri()

    @classmethod
    def from_url(cls, url: str) -> LocalStorage:
        if url.startswith("file://"):
            return cls(Path(unquote(urlparse(url).path)))
        return cls(Path(url).expanduser())

    def path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ValueError(f"key {key!r} points outside the storage root {self.root}")
        return path

    def put_bytes(self, key: str, data: bytes) -> None:
        with classified("writing", f"{self.url}/{key}"):
            self._put_bytes(key, data)

    def _put_bytes(self, key: str, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), FILE_MODE)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError as exc:
            raise KeyNotFound(f"{self.url}/{key} does not exist") from exc

    def open_read(self, key: str) -> BinaryIO:
        try:
            return open(self.path(key), "rb")
        except FileNotFoundError as exc:
            raise KeyNotFound(f"{self.url}/{key} does not exist") from exc

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError as exc:
            raise KeyNotFound(f"{self.url}/{key} does not exist") from exc

    def list_keys(self, prefix: str) -> list[str]:
        base = self.path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    def publish_file(self, key: str, path: Path) -> None:
        with classified("publishing", f"{self.url}/{key}"):
            self._publish_file(key, path)

    def _publish_file(self, key: str, path: Path) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        os.close(fd)
        try:
            # A rename within one filesystem costs nothing; across filesystems, copy first.
            shutil.move(path, tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def download_file(self, key: str, path: Path) -> None:
        try:
            shutil.copyfile(self.path(key), path)
        except FileNotFoundError as exc:
            raise KeyNotFound(f"{self.url}/{key} does not exist") from exc

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path | None:
        return self.path(key)

    def check_access(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create the storage folder {self.root}: {exc}") from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageError(f"the storage folder {self.root} is not writable by this user")
