"""S3Storage against moto's S3 server on loopback: the Storage protocol, errors, streaming."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import free_port
from s3_fixtures import MotoServer

from encoder_worker.raw_episode import RawEpisodeReader, RawEpisodeWriter
from encoder_worker.raw_sinks import DirectSink
from encoder_worker.storage import KeyNotFound, Storage, StorageError, open_storage
from encoder_worker.storage import s3 as s3_module
from encoder_worker.storage.s3 import S3Settings, S3Storage, parse_s3_url


def test_parse_s3_url() -> None:
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b")
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    with pytest.raises(ValueError, match="names no bucket"):
        parse_s3_url("s3:///x")


def test_settings_fall_back_to_aws_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FARM_S3_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("FARM_S3_CHECKSUM", "when_required")
    settings = S3Settings()
    assert settings.endpoint_url == "http://127.0.0.1:9"
    assert settings.checksum == "when_required"
    monkeypatch.setenv("FARM_S3_ENDPOINT_URL", "http://127.0.0.1:10")
    assert S3Settings().endpoint_url == "http://127.0.0.1:10"


@pytest.mark.integration
def test_protocol_round_trip(s3_url: str, tmp_path: Path) -> None:
    storage = open_storage(s3_url)
    assert isinstance(storage, S3Storage) and isinstance(storage, Storage)
    assert storage.shared_across_hosts and storage.local_path("raw") is None
    assert storage.url == s3_url
    storage.put_bytes("raw/a/manifest.json", b"{}")
    assert storage.get_bytes("raw/a/manifest.json") == b"{}"
    assert storage.exists("raw/a/manifest.json") and not storage.exists("raw/a/nope")
    assert storage.size("raw/a/manifest.json") == 2
    with storage.open_read("raw/a/manifest.json") as stream:
        assert stream.read(1) == b"{" and stream.read() == b"}"
    local = tmp_path / "video.mp4"
    local.write_bytes(b"x" * 1000)
    storage.publish_file("videos/ep.mp4", local)
    assert not local.exists(), "publish_file moves the file"
    storage.put_bytes("raw2/other", b"1")
    assert storage.list_keys("raw") == ["raw/a/manifest.json"]
    assert storage.list_keys("") == ["raw/a/manifest.json", "raw2/other", "videos/ep.mp4"]
    storage.download_file("videos/ep.mp4", tmp_path / "back.mp4")
    assert (tmp_path / "back.mp4").read_bytes() == b"x" * 1000
    storage.delete("videos/ep.mp4")
    assert not storage.exists("videos/ep.mp4")
    for call in (lambda: storage.get_bytes("missing"), lambda: storage.size("missing"),
                 lambda: storage.download_file("missing", tmp_path / "m")):
        with pytest.raises(KeyNotFound):
            call()


@pytest.mark.integration
def test_multipart_publish_completes_whole(s3_url: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3_module, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    monkeypatch.setattr(s3_module, "MULTIPART_CHUNKSIZE", 5 * 1024 * 1024)
    data = np.random.default_rng(0).integers(0, 255, 12 * 1024 * 1024, dtype=np.uint8)
    local = tmp_path / "big.mp4"
    local.write_bytes(data.tobytes())
    storage = S3Storage.from_url(s3_url)
    storage.publish_file("videos/big.mp4", local)
    head = storage.client.head_object(Bucket=storage.bucket,
                                      Key=storage.object_key("videos/big.mp4"))
    assert head["ETag"].strip('"').endswith("-3"), "uploaded in 3 parts"
    assert storage.get_bytes("videos/big.mp4") == data.tobytes()


def test_unreachable_server_is_a_storage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("FARM_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("FARM_S3_MAX_ATTEMPTS", "1")
    storage = S3Storage.from_url("s3://bucket/x")
    with pytest.raises(StorageError) as caught:
        storage.put_bytes("k", b"1")
    assert not isinstance(caught.value, KeyNotFound)
    with pytest.raises(StorageError):
        storage.exists("k")


@pytest.mark.integration
def test_missing_bucket_says_so(s3_url: str) -> None:
    storage = S3Storage.from_url("s3://no-such-bucket-here/x")
    with pytest.raises(StorageError, match="NoSuchBucket"):
        storage.put_bytes("k", b"1")
    with pytest.raises(StorageError):
        storage.check_access()
    S3Storage.from_url(s3_url).check_access()


@pytest.mark.integration
def test_raw_episode_streams_from_s3_with_bounded_memory(s3_url: str, tmp_path: Path) -> None:
    storage = open_storage(s3_url)
    prefix = "raw/episode_000000/cam0"
    writer = RawEpisodeWriter(DirectSink(storage, prefix, scratch_dir=tmp_path), episode=0,
                              camera="cam0", width=320, height=240, fps=30, segment_frames=10)
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (240, 320, 3), dtype=np.uint8) for _ in range(5)]
    for index in range(60):
        writer.write(frames[index % 5], index / 30)
    writer.close()
    assert not list(tmp_path.iterdir()), "published segments leave no scratch files"

    # moto serves from this process, so tracemalloc would count its copies too: check
    # instead that segments are streamed (never fetched whole) in reads of one frame.
    reads: list[int] = []
    open_read = storage.open_read

    class Spy:
        def __init__(self, stream: Any) -> None:
            self.stream = stream

        def read(self, size: int = -1) -> bytes:
            data = self.stream.read(size)
            reads.append(len(data))
            return data

        def __enter__(self) -> Spy:
            return self

        def __exit__(self, *exc: object) -> None:
            self.stream.close()

    def no_whole_segments(key: str) -> bytes:
        raise AssertionError(f"{key} fetched whole")

    reader = RawEpisodeReader(storage, prefix)
    storage.open_read = lambda key: Spy(open_read(key))  # type: ignore[method-assign]
    storage.get_bytes = no_whole_segments  # type: ignore[method-assign]
    count = 0
    for index, frame in enumerate(reader.frames()):
        assert np.array_equal(frame, frames[index % 5])
        count += 1
    assert count == 60
    assert max(reads) <= 320 * 240 * 3

@pytest.mark.integration
def test_moto_server_restarts_with_its_objects(moto_server: MotoServer, s3_url: str) -> None:
    storage = S3Storage.from_url(s3_url)
    storage.put_bytes("k", b"v")
    moto_server.stop()
    with pytest.raises(StorageError):
        storage.get_bytes("k")
    moto_server.start()
    assert storage.get_bytes("k") == b"v"


@pytest.mark.integration
def test_worker_refuses_unreachable_bucket(s3_url: str, capsys: pytest.CaptureFixture[str],
                                           broker_url: str) -> None:
    from encoder_worker import cli as worker_cli

    code = worker_cli.main(["run", "--broker", broker_url, "--storage", "s3://no-such-bucket/x"])
    assert code == 1
    assert "NoSuchBucket" in capsys.readouterr().err


@pytest.mark.integration
def test_checksum_setting_reaches_boto3(s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FARM_S3_CHECKSUM", "when_required")
    storage = S3Storage.from_url(s3_url)
    assert storage.client.meta.config.request_checksum_calculation == "when_required"
    storage.put_bytes("k", b"v")
    assert storage.get_bytes("k") == b"v"
