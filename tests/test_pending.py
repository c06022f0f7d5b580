"""`recorder encode-pending`: what has raw frames and no video gets encoded, nothing else."""

import subprocess
import sys

import pytest
from episodes import job_for, write_episode
from video_checks import check_video_against_raw

from encoder_worker.encode import encode_job
from encoder_worker.jobs import EncoderOptions, Status
from encoder_worker.raw_episode import raw_prefix
from encoder_worker.storage import open_storage
from recorder.pending import scan_pending


@pytest.fixture
def dataset(tmp_path):
    """Episode 0 encoded; 1 and 2 recorded but never encoded; 3 interrupted."""
    storage = open_storage(tmp_path / "dataset")
    options = EncoderOptions(codec="libx264")
    done = write_episode(storage, episode=0, frames=10)
    assert encode_job(job_for(storage, done, options=options)).status is Status.SUCCEEDED
    for episode in (1, 2):
        write_episode(storage, episode=episode, frames=10)
    write_episode(storage, episode=3, frames=10, interrupted=True)
    return storage


def test_scan_finds_episodes_without_videos(dataset):
    scan = scan_pending(dataset, dataset, EncoderOptions())
    assert scan.pending == [(1, "cam0"), (2, "cam0")]
    assert scan.interrupted == [(3, "cam0")]
    assert scan.done == 1


def run_pending(dataset, *flags):
    return subprocess.run(
        [sys.executable, "-m", "recorder.cli", "encode-pending", "--storage", str(dataset.root),
         "--codec", "libx264", *flags], capture_output=True, text=True, timeout=300)


def test_dry_run_only_lists(dataset):
    done = run_pending(dataset, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "2 videos to encode, 1 already there" in done.stdout
    assert "episode 3 camera cam0 was interrupted" in done.stdout
    assert not dataset.exists("videos/chunk-000/observation.images.cam0/episode_000001.mp4")


@pytest.mark.integration
@pytest.mark.parametrize("mode", [[], ["--async-encoding", "--video-encoding-workers", "1"]],
                         ids=["inline", "zero-config-farm"])
def test_pending_episodes_are_encoded(dataset, mode):
    first = dataset.path("videos/chunk-000/observation.images.cam0/episode_000000.mp4")
    before = first.stat().st_mtime_ns
    done = run_pending(dataset, *mode)
    assert done.returncode == 0, done.stdout + done.stderr
    for episode in (1, 2):
        video = dataset.path(
            f"videos/chunk-000/observation.images.cam0/episode_{episode:06d}.mp4")
        assert check_video_against_raw(video, dataset.url,
                                       raw_prefix(episode=episode, camera="cam0"),
                                       min_psnr_db=30) == 10
    assert first.stat().st_mtime_ns == before  # the existing video was not touched
    assert not dataset.exists("videos/chunk-000/observation.images.cam0/episode_000003.mp4")
    again = run_pending(dataset, "--dry-run")
    assert "0 videos to encode, 3 already there" in again.stdout
