"""The upload spool: background uploads, retries through outages, manifest last, bounded."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest
from botocore.exceptions import ClientError
from conftest import wait_for

from encoder_worker.raw_episode import RawEpisodeReader, RawEpisodeWriter
from encoder_worker.raw_sinks import DirectSink
from encoder_worker.storage import StorageError
from encoder_worker.storage.local import LocalStorage
from encoder_worker.storage.s3 import S3Storage, s3_error
from recorder.farm import spool_folder as folders
from recorder.farm.spool_folder import SpoolBusy, spool_folder
from recorder.farm.spool_sink import SpoolSink
from recorder.farm.upload_spool import UploadSpool


class FlakyStorage(LocalStorage):
    """A local folder that refuses writes while down, and logs the order of stored keys."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.down = threading.Event()
        # An S3 error code to fail with while down, as S3Storage raises it; None: refused.
        self.code: str | None = None
        self.stored: list[str] = []
        self.refused = 0

    def _check(self, key: str) -> None:
        if self.down.is_set():
            self.refused += 1
            if self.code is None:
                raise StorageError(f"{key}: connection refused (test outage)")
            # Classified as S3Storage classifies what boto3 raises.
            error = ClientError({"Error": {"Code": self.code, "Message": "test"}}, "PutObject")
            raise s3_error(f"uploading {key}", error, endpoint="test") from error

    def put_bytes(self, key: str, data: bytes) -> None:
        self._check(key)
        super().put_bytes(key, data)
        self.stored.append(key)

    def publish_file(self, key: str, path: Path) -> None:
        self._check(key)
        super().publish_file(key, path)
        self.stored.append(key)

    def local_path(self, key: str) -> Path | None:
        return None  # behave like remote storage


def write_episode(spool: UploadSpool, *, episode: int, camera: str, frames: int,
                  durable: bool = False) -> list[np.ndarray]:
    sink = SpoolSink(spool, f"raw/episode_{episode:06d}/{camera}", durable_manifest=durable)
    writer = RawEpisodeWriter(sink, episode=episode, camera=camera, width=32, height=16,
                              fps=30, segment_frames=4)
    rng = np.random.default_rng(episode)
    written = [rng.integers(0, 255, (16, 32, 3), dtype=np.uint8) for _ in range(frames)]
    for index, frame in enumerate(written):
        writer.write(frame, index / 30)
    writer.close()
    return written


def spooled_files(root: Path) -> list[str]:
    """Names of the files waiting in the spool folder root."""
    return sorted(p.name for p in folders.spooled_files(root))


def test_uploads_in_background_manifest_last(tmp_path: Path) -> None:
    storage = FlakyStorage(tmp_path / "bucket")
    with UploadSpool(storage, tmp_path / "spool", max_bytes=10**9, threads=3) as spool:
        frames = {cam: write_episode(spool, episode=0, camera=cam, frames=18)
                  for cam in ("cam0", "cam1")}
    for cam, written in frames.items():
        prefix = f"raw/episode_000000/{cam}"
        keys = [k for k in storage.stored if k.startswith(prefix)]
        assert len(keys) == 6 and keys[-1] == f"{prefix}/manifest.json", keys
        read = list(RawEpisodeReader(storage, prefix).frames())
        assert all(np.array_equal(a, b) for a, b in zip(read, written, strict=True))
    assert not spooled_files(tmp_path / "spool"), "spool emptied"
    assert not list((tmp_path / "spool" / "keys").iterdir()), "empty folders removed"


def test_outage_keeps_files_in_spool_and_resumes(tmp_path: Path) -> None:
    storage = FlakyStorage(tmp_path / "bucket")
    storage.down.set()
    spool = UploadSpool(storage, tmp_path / "spool", max_bytes=10**9, retry_initial_s=0.01,
                        retry_max_s=0.05)
    written = write_episode(spool, episode=3, camera="cam0", frames=10)
    wait_for(lambda: storage.refused >= 5, timeout_s=30, what="failed upload attempts")
    assert spooled_files(tmp_path / "spool") == ["manifest.json", "segment_00000.raw",
                                                 "segment_00001.raw", "segment_00002.raw"]
    assert storage.stored == [] and spool.pending_files == 4
    storage.down.clear()
    assert spool.close()
    prefix = "raw/episode_000003/cam0"
    assert storage.stored[-1] == f"{prefix}/manifest.json"
    assert len(list(RawEpisodeReader(storage, prefix).frames())) == len(written)


def test_full_spool_makes_the_writer_wait_and_loses_nothing(tmp_path: Path) -> None:
    storage = FlakyStorage(tmp_path / "bucket")
    storage.down.set()
    segment_bytes = 4 * 16 * 32 * 3
    spool = UploadSpool(storage, tmp_path / "spool", max_bytes=2 * segment_bytes,
                        retry_initial_s=0.01, retry_max_s=0.05)
    writer = threading.Thread(target=write_episode, daemon=True,
                              kwargs={"spool": spool, "episode": 1, "camera": "cam0",
                                      "frames": 20})
    writer.start()
    # Two segments fill the spool; the third is written and waits to be queued.
    wait_for(lambda: len(list((tmp_path / "spool").rglob("segment_*.raw"))) == 3,
             timeout_s=30, what="a third segment in the spool")
    assert spool.pending_files == 2 and writer.is_alive()
    storage.down.clear()
    writer.join(timeout=60)
    assert not writer.is_alive()
    assert spool.close()
    manifest = RawEpisodeReader(storage, "raw/episode_000001/cam0").manifest
    assert manifest.frame_count == 20 and len(manifest.segments) == 5


def test_durable_manifest_is_stored_when_close_returns(tmp_path: Path) -> None:
    storage = FlakyStorage(tmp_path / "bucket")
    spool = UploadSpool(storage, tmp_path / "spool", max_bytes=10**9)
    write_episode(spool, episode=0, camera="cam0", frames=5, durable=True)
    assert storage.exists("raw/episode_000000/cam0/manifest.json")
    assert spool.close()


def test_close_with_timeout_keeps_what_is_not_uploaded(tmp_path: Path) -> None:
    storage = FlakyStorage(tmp_path / "bucket")
    storage.down.set()
    spool = UploadSpool(storage, tmp_path / "spool", max_bytes=10**9, retry_initial_s=0.01,
                        retry_max_s=0.05)
    write_episode(spool, episode=0, camera="cam0", frames=6)
    assert not spool.close(timeout_s=0.2)
    assert spooled_files(tmp_path / "spool") == ["manifest.json", "segment_00000.raw",
                                                 "segment_00001.raw"]
    storage.down.clear()  # the threads keep trying while the process lives
    assert spool.close()
    assert storage.exists("raw/episode_000000/cam0/manifest.json")


@pytest.mark.parametrize("code", ["NoSuchBucket", "AccessDenied", "InvalidAccessKeyId",
                                  "SignatureDoesNotMatch"])
def test_permanent_error_stops_the_spool_and_keeps_files(tmp_path: Path, code: str) -> None:
    storage = FlakyStorage(tmp_path / "bucket")
    storage.down.set()
    spool = UploadSpool(storage, tmp_path / "spool", max_bytes=10**9, retry_initial_s=0.01,
                        retry_max_s=0.05)
    # Recorded during an outage, so that the whole episode is in the spool; then the
    # server answers with an error that no retry fixes.
    write_episode(spool, episode=0, camera="cam0", frames=10)
    wait_for(lambda: storage.refused >= 2, timeout_s=30, what="failed upload attempts")
    storage.code = code
    refused = storage.refused
    with pytest.raises(StorageError, match=f"stopped: .*{code}"):
        spool.wait(timeout_s=60)
    # Each of the two upload threads tried its file at most once more: no retries.
    assert storage.refused <= refused + 2
    with pytest.raises(StorageError, match=code):
        spool.close()
    assert not [t for t in spool._threads if t.is_alive()]
    assert storage.stored == []
    assert spooled_files(tmp_path / "spool") == ["manifest.json", "segment_00000.raw",
                                                 "segment_00001.raw", "segment_00002.raw"]


def test_permanent_error_fails_the_next_commit(tmp_path: Path) -> None:
    storage = FlakyStorage(tmp_path / "bucket")
    storage.down.set()
    storage.code = "NoSuchBucket"
    spool = UploadSpool(storage, tmp_path / "spool", max_bytes=10**9)
    sink = SpoolSink(spool, "raw/episode_000000/cam0", durable_manifest=False)
    with sink.open_segment("segment_00000.raw") as f:
        f.write(b"x" * 100)
    sink.commit_segment("segment_00000.raw", f)
    wait_for(lambda: spool.error, timeout_s=30, what="the spool to fail")
    with sink.open_segment("segment_00001.raw") as f:
        f.write(b"y" * 100)
    with pytest.raises(StorageError, match="create the bucket or fix the storage URL"):
        sink.commit_segment("segment_00001.raw", f)
    assert spooled_files(tmp_path / "spool") == ["segment_00000.raw", "segment_00001.raw"]


def test_permanent_error_wakes_a_durable_manifest_and_a_full_spool(tmp_path: Path) -> None:
    storage = FlakyStorage(tmp_path / "bucket")
    storage.down.set()
    storage.code = "AccessDenied"
    spool = UploadSpool(storage, tmp_path / "spool", max_bytes=10**9)
    with pytest.raises(StorageError, match="AccessDenied"):
        write_episode(spool, episode=0, camera="cam0", frames=5, durable=True)
    # A full spool: the writer waits for room, and must not wait forever.
    storage = FlakyStorage(tmp_path / "bucket2")
    storage.down.set()
    spool = UploadSpool(storage, tmp_path / "spool2", max_bytes=1, retry_initial_s=0.01,
                        retry_max_s=0.05)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            write_episode(spool, episode=1, camera="cam0", frames=20)
        except BaseException as exc:
            errors.append(exc)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    wait_for(lambda: storage.refused >= 3, timeout_s=30, what="transient failures")
    assert writer.is_alive(), "transient errors are retried while the writer waits"
    storage.code = "NoSuchBucket"
    writer.join(timeout=30)
    assert not writer.is_alive()
    assert len(errors) == 1 and "NoSuchBucket" in str(errors[0])


def test_throttling_and_server_errors_are_retried(tmp_path: Path) -> None:
    storage = FlakyStorage(tmp_path / "bucket")
    storage.down.set()
    storage.code = "SlowDown"
    spool = UploadSpool(storage, tmp_path / "spool", max_bytes=10**9, retry_initial_s=0.01,
                        retry_max_s=0.05)
    write_episode(spool, episode=0, camera="cam0", frames=6)
    wait_for(lambda: storage.refused >= 3, timeout_s=30, what="retried uploads")
    storage.code = "InternalError"
    refused = storage.refused
    wait_for(lambda: storage.refused >= refused + 3, timeout_s=30, what="retried uploads")
    assert spool.error is None
    storage.down.clear()
    assert spool.close()
    assert storage.exists("raw/episode_000000/cam0/manifest.json")


@pytest.mark.integration
def test_missing_bucket_fails_with_a_clear_error(s3_url: str, tmp_path: Path) -> None:
    bucket = s3_url.removeprefix("s3://").split("/", 1)[0]
    storage = S3Storage.from_url(f"s3://{bucket}-missing/datasets/test")
    spool = UploadSpool(storage, tmp_path / "spool", max_bytes=10**9, retry_initial_s=0.01,
                        retry_max_s=0.05)
    write_episode(spool, episode=0, camera="cam0", frames=10)
    with pytest.raises(StorageError, match=r"NoSuchBucket.*create the bucket") as raised:
        spool.close(timeout_s=60)
    assert str(tmp_path / "spool") in str(raised.value)
    assert spooled_files(tmp_path / "spool") == ["manifest.json", "segment_00000.raw",
                                                 "segment_00001.raw", "segment_00002.raw"]


# --- a spool that outlives its process ------------------------------------------------

def leave_episode(root: Path, *, episode: int, frames: int,
                  finish: bool = True) -> list[np.ndarray]:
    """Write an episode into spool folder root's keys/ as a process that died would leave it.

    finish=False: the writer died mid-segment, leaving a partial file and no manifest.
    """
    prefix = f"raw/episode_{episode:06d}/cam0"
    sink = DirectSink(LocalStorage(root / folders.KEYS_DIR), prefix)
    writer = RawEpisodeWriter(sink, episode=episode, camera="cam0", width=32, height=16,
                              fps=30, segment_frames=4)
    rng = np.random.default_rng(episode)
    written = [rng.integers(0, 255, (16, 32, 3), dtype=np.uint8) for _ in range(frames)]
    for index, frame in enumerate(written):
        writer.write(frame, index / 30)
    if finish:
        writer.close()
    return written


def test_leftovers_of_a_dead_process_upload_first(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    storage = FlakyStorage(tmp_path / "bucket")
    root = spool_folder(tmp_path / "spools", storage.url)
    done = leave_episode(root, episode=0, frames=10)
    leave_episode(root, episode=1, frames=6, finish=False)  # segment 0 done, 1 partial
    leave_episode(root, episode=2, frames=10)
    # A power cut before the data reached the disk: the manifest says otherwise.
    truncated = root / "keys/raw/episode_000002/cam0/segment_00001.raw"
    truncated.write_bytes(truncated.read_bytes()[:100])

    caplog.set_level(logging.WARNING, logger="recorder.farm.upload_spool")
    # Leftovers are on disk already: they are queued whatever max_bytes says; new
    # segments wait for room as usual.
    spool = UploadSpool(storage, root, max_bytes=1, threads=1)
    leftovers = spool.resume()
    new = write_episode(spool, episode=3, camera="cam0", frames=6)
    assert spool.close()

    # The partial segment can never be uploaded: removed, and said so by name.
    partial = "raw/episode_000001/cam0/.segment_00001.raw.partial"
    assert leftovers.dropped == [partial] and leftovers.dropped_bytes > 0
    assert not (root / "keys" / partial).exists()
    assert sorted(leftovers.kept) == [
        f"raw/episode_000002/cam0/{name}" for name in
        ("manifest.json", "segment_00000.raw", "segment_00001.raw", "segment_00002.raw")]
    assert leftovers.queued == [
        *(f"raw/episode_000000/cam0/segment_0000{i}.raw" for i in range(3)),
        "raw/episode_000000/cam0/manifest.json", "raw/episode_000001/cam0/segment_00000.raw"]
    # One upload thread: the queue order is the upload order. Leftovers went first, each
    # manifest after its segments; partial and inconsistent files were not uploaded.
    assert storage.stored[:len(leftovers.queued)] == leftovers.queued
    assert storage.stored[-1] == "raw/episode_000003/cam0/manifest.json"
    assert not [k for k in storage.stored if ".partial" in k or "episode_000002" in k]
    for episode, written in ((0, done), (3, new)):
        read = list(RawEpisodeReader(storage, f"raw/episode_{episode:06d}/cam0").frames())
        assert all(np.array_equal(a, b) for a, b in zip(read, written, strict=True))
    assert spooled_files(root) == [
        "manifest.json", "segment_00000.raw", "segment_00001.raw", "segment_00002.raw"]
    assert f"removed 1 unfinished files (0.0 MB) that an earlier run was still writing " \
           f"when it stopped (a full disk, a crash): {partial}" in caplog.text
    assert "segment_00001.raw has 100 bytes" in caplog.text
    assert "of an earlier run" in caplog.text


def test_a_spool_folder_has_one_live_user(tmp_path: Path) -> None:
    storage = FlakyStorage(tmp_path / "bucket")
    root = spool_folder(tmp_path / "spools", storage.url)
    first = UploadSpool(storage, root, max_bytes=10**9)
    with pytest.raises(SpoolBusy, match=r"another recorder \(pid \d+\) is using the upload "
                                        r"spool .*--spool-dir"):
        UploadSpool(storage, root, max_bytes=10**9)
    assert first.close()
    with UploadSpool(storage, root, max_bytes=10**9) as second:
        assert second.resume().keys == []
    other = FlakyStorage(tmp_path / "other-bucket")
    with pytest.raises(StorageError, match="holds files for"):
        UploadSpool(other, root, max_bytes=10**9)
    long = "s3://bucket/" + "x" * 60
    assert spool_folder(tmp_path, long + "/a") != spool_folder(tmp_path, long + "/b")
    assert spool_folder(tmp_path, "s3://bucket/datasets/x").name.startswith(
        "bucket-datasets-x-")


def test_a_spool_file_that_is_gone_stops_the_spool_instead_of_retrying(tmp_path: Path) -> None:
    storage = FlakyStorage(tmp_path / "bucket")
    storage.down.set()  # refused (an outage) until the file is gone
    spool = UploadSpool(storage, tmp_path / "spool", max_bytes=10**9, retry_initial_s=0.01,
                        retry_max_s=0.05)
    sink = SpoolSink(spool, "raw/episode_000000/cam0", durable_manifest=False)
    with sink.open_segment("segment_00000.raw") as f:
        f.write(b"x" * 100)
    sink.commit_segment("segment_00000.raw", f)
    wait_for(lambda: storage.refused >= 2, timeout_s=30, what="failed upload attempts")
    (spool.keys_dir / "raw/episode_000000/cam0/segment_00000.raw").unlink()
    storage.down.clear()
    with pytest.raises(StorageError, match=r"stopped: .*No such file"):
        spool.wait(timeout_s=60)
    with pytest.raises(StorageError):
        spool.close()


def test_storage_errors_are_classified_where_they_happen() -> None:
    def error(code: str) -> StorageError:
        return s3_error("uploading k", ClientError({"Error": {"Code": code}}, "PutObject"),
                        endpoint="test")

    assert error("NoSuchBucket").permanent and error("NoSuchBucket").hint
    assert error("AccessDenied").permanent
    assert not error("SlowDown").permanent and not error("InternalError").permanent
    assert error("SlowDown").code == "SlowDown"
