"""A local folder as storage; writes go to a temp file in the same folder, then rename."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast
from urllib.parse import unquote, urlparse

from encoder_worker.storage import InvalidKey, KeyNotFound, StorageError, os_error, storage_error


@contextlib.contextmanager
def classified(action: str, where: str, *, reading: bool = False) -> Iterator[None]:
    """OSErrors of a local operation, raised as StorageError with code, permanence and
    hint; reading: a missing file is KeyNotFound."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        if reading and isinstance(exc, (FileNotFoundError, NotADirectoryError)):
            raise KeyNotFound(f"{where} does not exist", code="ENOENT") from exc
        raise os_error(f"{action} {where}", exc) from exc


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# What open() would give a new file: mkstemp's temp files are 0600, and a dataset (or a
# manifest a container worker of another uid reads) must not stay that private.
FILE_MODE = 0o666 & ~_umask()


class LocalStorage:
    """Every operation raises StorageError (KeyNotFound for a missing key), never OSError."""

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
        """The file or folder of key; InvalidKey for one outside the root."""
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise InvalidKey(f"key {key!r} points outside the storage root {self.root}")
        return path

    def _where(self, key: str) -> str:
        return f"{self.url}/{key}"

    def put_bytes(self, key: str, data: bytes) -> None:
        with classified("writing", self._where(key)):
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
        with classified("reading", self._where(key), reading=True):
            return self.path(key).read_bytes()

    def open_read(self, key: str) -> BinaryIO:
        with classified("reading", self._where(key), reading=True):
            return cast(BinaryIO, _ClassifiedReader(open(self.path(key), "rb"),
                                                    self._where(key)))

    def exists(self, key: str) -> bool:
        with classified("looking up", self._where(key)):
            return self.path(key).is_file()

    def size(self, key: str) -> int:
        with classified("looking up", self._where(key), reading=True):
            return self.path(key).stat().st_size

    def list_keys(self, prefix: str) -> list[str]:
        with classified("listing", self._where(prefix)):
            base = self.path(prefix) if prefix else self.root
            if not base.is_dir():
                return []
            return sorted(
                p.relative_to(self.root).as_posix()
                for p in base.rglob("*")
                if p.is_file() and not p.name.startswith(".")
            )

    def publish_file(self, key: str, path: Path) -> None:
        with classified("publishing", self._where(key)):
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
        with self.open_read(key) as source, \
                classified("downloading", f"{self._where(key)} to {path}"), \
                open(path, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)

    def delete(self, key: str) -> None:
        with classified("deleting", self._where(key)):
            self.path(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path | None:
        return self.path(key)

    def check_access(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise os_error(f"cannot create the storage folder {self.root}", exc) from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise storage_error(f"the storage folder {self.root} is not writable by this user",
                                code="EACCES")


class _ClassifiedReader:
    """An open file whose read errors are StorageErrors, as S3's streamed bodies are."""

    def __init__(self, file: BinaryIO, where: str) -> None:
        self._file = file
        self._where = where

    def read(self, size: int = -1) -> bytes:
        try:
            return self._file.read(size)
        except OSError as exc:
            raise os_error(f"reading {self._where}", exc) from exc

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> _ClassifiedReader:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
