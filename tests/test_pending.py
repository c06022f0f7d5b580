"""`recorder encode-pending`: what is recorded and has no video gets encoded, nothing else."""

import subprocess
import sys

import pytest
from dataset_checks import check_v3_dataset
from recordings import CAMERAS, features, record_episodes

from recorder.dataset import FarmDataset
from recorder.dataset.pending import scan_pending

LOST = "videos/observation.images.cam1/chunk-000/file-001.mp4"


@pytest.fixture
def dataset(tmp_path):
    """Recordings 0 and 1 complete, recording 2 cleared (interrupted); then one of
    recording 1's videos is lost."""
    root = tmp_path / "dataset"
    dataset = FarmDataset.create("test/pending", fps=30, features=features(160, 120),
                                 root=str(root), codec="libx264")
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
         str(dataset.storage.root), "--codec", "libx264", *flags], capture_output=True,
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
