"""`recorder encode-pending`: what is recorded and has no video gets encoded, nothing else."""

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from dataset_checks import check_v3_dataset
from recordings import CAMERAS, features, record_episodes
from rich.console import Console

from encoder_worker.jobs import Status
from encoder_worker.storage import Storage, open_storage
from recorder import pending
from recorder.dataset import FarmDataset
from recorder.dataset.complete import complete_dataset, verified_videos
from recorder.dataset.layout import INFO_KEY
from recorder.dataset.metadata import DatasetError, read_episode_rows
from recorder.dataset.videos import VideoProbe
from recorder.pending import encode_pending, scan_pending
from recorder.settings import RecorderSettings

LOST = "videos/observation.images.cam1/chunk-000/file-001.mp4"


@pytest.fixture
def dataset(tmp_path):
    """Recordings 0 and 1 complete, recording 2 cleared (interrupted); then one of
    recording 1's videos is lost."""
    root = tmp_path / "dataset"
    # Raw frames kept (keep_raw): a video lost after completion is encoded from them.
    dataset = FarmDataset.create("test/pending", fps=30, features=features(160, 120),
                                 root=str(root), codec="libx264", keep_raw=True)
    record_episodes(dataset, episodes=2, frames=10)
    dataset.add_frame({key: value for key, value in frame(dataset).items()})
    dataset.clear_episode_buffer()
    dataset.finalize()
    (root / LOST).unlink()
    return dataset


def frame(dataset):
    import numpy as np

    image = np.zeros((120, 160, 3), np.uint8)
    return {"observation.images.cam0": image, "observation.images.cam1": image.copy(),
            "observation.state": np.zeros(6), "action": np.zeros(6), "task": "t"}


@pytest.mark.integration
def test_scan_finds_videos_that_are_missing(dataset):
    scan = scan_pending(dataset.raw_storage, dataset.storage)
    assert scan.pending == [(1, "observation.images.cam1", LOST)]
    assert scan.unstaged == [(2, "cam0"), (2, "cam1")]
    assert scan.done == 3


def run_pending(dataset, *flags):
    return subprocess.run(
        [sys.executable, "-m", "recorder.cli", "encode-pending", "--storage",
         str(dataset.storage.root), "--codec", "libx264", "--keep-raw", *flags],
        capture_output=True,
        text=True, timeout=300)


@pytest.mark.integration
def test_dry_run_only_lists(dataset):
    done = run_pending(dataset, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "1 videos to encode, 3 already there" in done.stdout
    assert "recording 2 camera cam0 was interrupted" in done.stdout
    assert not dataset.storage.exists(LOST)


def test_no_dataset_is_a_clear_error(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "recorder.cli", "encode-pending", "--storage",
         str(tmp_path / "nothing")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "holds no dataset (no meta/info.json)" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.integration
@pytest.mark.parametrize("mode", [[], ["--async-encoding", "--video-encoding-workers", "1"]],
                         ids=["inline", "zero-config-farm"])
def test_missing_videos_are_encoded(dataset, mode):
    root = dataset.storage.root
    first = root / "videos/observation.images.cam0/chunk-000/file-000.mp4"
    before = first.stat().st_mtime_ns
    done = run_pending(dataset, *mode)
    assert done.returncode == 0, done.stdout + done.stderr
    check_v3_dataset(root, raw_url=str(root), episodes=2, cameras=CAMERAS,
                     frames_per_episode=10)
    assert first.stat().st_mtime_ns == before  # the existing video was not touched
    again = run_pending(dataset, "--dry-run")
    assert "0 videos to encode, 4 already there" in again.stdout


class CountingStorage:
    """A storage that notes each key it reads: on S3, each GET."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.read: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.storage, name)

    def get_bytes(self, key: str) -> bytes:
        self.read.append(key)
        return self.storage.get_bytes(key)

    def open_read(self, key: str) -> BinaryIO:
        self.read.append(key)
        return self.storage.open_read(key)

    def download_file(self, key: str, path: Path) -> None:
        self.read.append(key)
        self.storage.download_file(key, path)

    def videos_read(self) -> list[str]:
        return sorted(key for key in self.read if key.endswith(".mp4"))


def video_rows(url: str) -> list[dict[str, Any]]:
    """Each episode row's video file and timestamps."""
    rows = read_episode_rows(open_storage(url), "v3.0", 2)
    return [{k: v for k, v in row.items() if k.startswith("videos/")} for row in rows]


@pytest.mark.integration
def test_completion_reads_no_video_that_its_encodes_verified(s3_url, broker_url, tmp_path,
                                                              monkeypatch):
    # Recorded into S3 and sent to a farm without workers, not waited for (--no-wait):
    # raw frames and episode records, no video, no episode in the dataset.
    recording = FarmDataset.create("test/s3", fps=30, features=features(160, 120),
                                   root=s3_url, codec="libx264", async_encoding=True,
                                   broker=broker_url, wait=False, spool_dir=tmp_path / "spool")
    record_episodes(recording, episodes=2, frames=10)
    assert recording.finalize().added == []
    before = open_storage(s3_url).get_bytes(INFO_KEY)
    opened: list[CountingStorage] = []

    def counted(url: str) -> CountingStorage:
        opened.append(CountingStorage(open_storage(url)))
        return opened[-1]

    monkeypatch.setattr(pending, "open_storage", counted)
    results, completion = encode_pending(RecorderSettings(storage=s3_url, codec="libx264",
                                                          keep_raw=True),
                                         console=Console(file=io.StringIO()))
    assert [r.status for r in results] == [Status.SUCCEEDED] * 4
    assert completion is not None and completion.added == [0, 1]
    raw, dataset = opened
    # The 4 videos the encodes had just verified were not downloaded to count frames.
    assert raw.videos_read() == dataset.videos_read() == []
    verified_rows = video_rows(s3_url)

    # The same completion without the results (as after a crash before its info.json)
    # downloads each video, and writes the same timestamps.
    dataset = CountingStorage(open_storage(s3_url))
    dataset.put_bytes(INFO_KEY, before)
    assert complete_dataset(dataset, open_storage(s3_url), keep_raw=True).added == [0, 1]
    assert dataset.videos_read() == sorted(r.output_key for r in results)
    assert video_rows(s3_url) == verified_rows

    # A result one frame short refuses completion, as a video one frame short does.
    dataset.put_bytes(INFO_KEY, before)
    short = verified_videos(results)
    key = results[0].output_key
    short[key] = VideoProbe(frames=9, duration_s=short[key].duration_s)
    with pytest.raises(DatasetError, match=rf"{key} has 9 frames, recording \d has 10 data "
                                           "rows; the episode is not added"):
        complete_dataset(dataset, open_storage(s3_url), verified=short, keep_raw=True)
    assert json.loads(dataset.get_bytes(INFO_KEY))["total_episodes"] == 0
