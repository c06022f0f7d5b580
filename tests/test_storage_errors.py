"""Every storage operation's failure is a classified StorageError (code, permanent, hint),
never an OSError or a client library's exception: callers decide by `permanent`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from episodes import job_for, write_episode

from encoder_worker.jobs import EncoderOptions, FailureReason, Status
from encoder_worker.storage import (
    PERMANENT_HINTS,
    KeyNotFound,
    Storage,
    StorageError,
    open_storage,
)
from encoder_worker.storage.local import LocalStorage
from encoder_worker.storage.s3 import S3Storage
from recorder.farm.client import EncodingFarmClient


def operations(storage: Storage, key: str, tmp_path: Path) -> dict[str, Callable[[], object]]:
    """Every operation of the Storage protocol, on key."""
    local = tmp_path / "local-file"
    local.write_bytes(b"video")
    return {"put_bytes": lambda: storage.put_bytes(key, b"x"),
            "get_bytes": lambda: storage.get_bytes(key),
            "open_read": lambda: storage.open_read(key).read(),
            "exists": lambda: storage.exists(key),
            "size": lambda: storage.size(key),
            "list_keys": lambda: storage.list_keys(key),
            "publish_file": lambda: storage.publish_file(key, local),
            "download_file": lambda: storage.download_file(key, tmp_path / "copy"),
            "delete": lambda: storage.delete(key),
            "check_access": storage.check_access}


def test_a_local_folder_classifies_every_failing_operation(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "a-file").write_text("in the way of a folder")
    storage = LocalStorage(root)
    found = {}
    for name, call in operations(storage, "a-file/x", tmp_path).items():
        try:
            call()
        except StorageError as exc:
            found[name] = exc
    # Reads of a key that is not there: KeyNotFound; writes blocked by the file: a
    # permanent error with its hint. exists, list_keys and check_access do not fail.
    assert {name for name, exc in found.items() if isinstance(exc, KeyNotFound)} == {
        "get_bytes", "open_read", "size", "download_file"}
    for name in ("put_bytes", "publish_file", "delete"):
        exc = found[name]
        assert exc.permanent and exc.code in ("EEXIST", "ENOTDIR"), name
        assert exc.hint == PERMANENT_HINTS[exc.code] and exc.hint in str(exc), name
    assert set(found) == set(operations(storage, "k", tmp_path)) - {
        "exists", "list_keys", "check_access"}
    # A folder where a file is read, a root under a file, a key out of the storage.
    with pytest.raises(StorageError) as caught:
        storage.get_bytes("")
    assert (caught.value.code, caught.value.permanent) == ("EISDIR", True)
    with pytest.raises(StorageError, match="cannot create the storage folder") as caught:
        LocalStorage(root / "a-file" / "root").check_access()
    assert caught.value.permanent and caught.value.hint
    with pytest.raises(StorageError) as caught:
        storage.delete("../x")
    assert (caught.value.code, caught.value.permanent) == ("InvalidKey", True)


def test_a_full_disk_is_permanent_with_the_one_hint(small_disk: Path, tmp_path: Path) -> None:
    storage = open_storage(small_disk / "data")
    with pytest.raises(StorageError) as caught:
        storage.put_bytes("big", b"\0" * 16 * 1024 * 1024)  # the disk holds 8 MB
    assert (caught.value.code, caught.value.permanent) == ("ENOSPC", True)
    assert caught.value.hint == PERMANENT_HINTS["ENOSPC"] and "No space left" in str(caught.value)
    # A download onto the full disk: the local side's error, classified the same way.
    source = LocalStorage(tmp_path / "source")
    source.put_bytes("video.mp4", b"\0" * 16 * 1024 * 1024)
    with pytest.raises(StorageError) as caught:
        source.download_file("video.mp4", small_disk / "copy.mp4")
    assert (caught.value.code, caught.value.permanent) == ("ENOSPC", True)


def test_s3_out_of_reach_is_a_transient_storage_error_in_every_operation(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("FARM_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("FARM_S3_MAX_ATTEMPTS", "1")
    storage = S3Storage.from_url("s3://bucket/x")
    for name, call in operations(storage, "raw/k", tmp_path).items():
        with pytest.raises(StorageError) as caught:
            call()
        assert not caught.value.permanent and caught.value.code, name
        assert not isinstance(caught.value, KeyNotFound), name


@pytest.mark.integration
def test_s3_refusals_are_permanent_with_the_one_hint(s3_url: str, tmp_path: Path) -> None:
    missing = S3Storage.from_url(s3_url.replace("s3://", "s3://missing-", 1))
    for name, call in operations(missing, "raw/k", tmp_path).items():
        if name == "exists":
            continue  # a missing bucket's HEAD says only 404: not there
        with pytest.raises(StorageError) as caught:
            call()
        assert caught.value.permanent, name
        if not isinstance(caught.value, KeyNotFound):
            assert caught.value.hint == PERMANENT_HINTS["NoSuchBucket"], name


@pytest.mark.integration
def test_a_worker_fails_a_job_at_once_on_a_permanent_storage_error(
        tmp_path: Path, broker_url: str, start_worker: Callable[..., Any]) -> None:
    storage = LocalStorage(tmp_path / "data")
    job = job_for(storage, write_episode(storage, frames=5),
                  options=EncoderOptions(codec="libx264"))
    # A file where the video's folder must go: no retry can publish there.
    blocker = storage.path(job.output_key).parent.parent
    blocker.parent.mkdir(parents=True)
    blocker.write_text("in the way")
    worker = start_worker(broker_url)
    with EncodingFarmClient(broker_url) as farm:
        farm.submit(job)
        [result] = farm.wait(timeout_s=120)
    assert result.status is Status.FAILED and result.reason is FailureReason.STORAGE
    assert PERMANENT_HINTS["ENOTDIR"] in (result.error or "")
    assert "retry 1" not in worker.output()  # failed at once, not after 8 backoffs
