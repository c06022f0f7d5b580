"""A recorder killed while it packs or completes a dataset, and a video that disagrees with
its episode: LeRobot sees the old dataset or the new one, never half of one, and the next
run finishes the job.

The kills are SIGKILLs at named points (recorder/dataset/failpoints.py, FARM_FAILPOINT), so
each test stops a real `recorder pack` or `recorder encode-pending` exactly where it means
to.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import pandas as pd
import pytest
from conftest import REPO, WorkerProcess, wait_for
from dataset_checks import check_v3_dataset, check_with_lerobot, lerobot_installed
from recordings import CAMERAS, features, record_episodes

from recorder.dataset import FarmDataset
from recorder.dataset.failpoints import ENV_VAR
from recorder.dataset.layout import Layout
from recorder.farm.client import EncodingFarmClient

pytestmark = pytest.mark.integration

# keep_raw: check_whole compares every decoded frame with its raw frame.
FAST: dict[str, Any] = {"codec": "libx264", "keep_raw": True}
ROWS = "meta/episodes/chunk-000/file-000.parquet"


def create(root: Path, **settings: Any) -> FarmDataset:
    return FarmDataset.create("test/dataset", fps=30, features=features(), robot_type="sim",
                              root=str(root), **FAST, **settings)


def run_recorder(*args: str, failpoint: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "FARM_KEEP_RAW": "true"}
    if failpoint is not None:
        env[ENV_VAR] = failpoint
    return subprocess.run([sys.executable, "-m", "recorder.cli", *args], capture_output=True,
                          text=True, timeout=300, env=env)


def files_of(root: Path, *folders: str) -> dict[str, bytes]:
    """Every file under root's folders, by path: to tell a dataset unchanged."""
    return {path.relative_to(root).as_posix(): path.read_bytes()
            for folder in folders for path in sorted((root / folder).rglob("*"))
            if path.is_file() and not path.name.startswith(".")}


def videos_of(root: Path, camera: str) -> list[str]:
    return sorted(p.name for p in root.glob(f"videos/observation.images.{camera}/*/*.mp4"))


def video_files_in_rows(root: Path, camera: str) -> list[int]:
    rows = pd.read_parquet(root / ROWS)
    return list(rows[f"videos/observation.images.{camera}/file_index"])


def check_whole(root: Path, *, episodes: int, frames: int) -> None:
    """What LeRobot relies on holds; with LeRobot installed, it loads every item too."""
    check_v3_dataset(root, raw_url=str(root), episodes=episodes, cameras=CAMERAS,
                     frames_per_episode=frames)
    if lerobot_installed():
        check_with_lerobot(root, episodes=episodes, frames=frames, cameras=CAMERAS)


# --- recorder pack ------------------------------------------------------------------------

@pytest.fixture
def recorded(tmp_path: Path) -> Path:
    """A complete dataset of 3 episodes of 20 frames, one video per episode and camera."""
    root = tmp_path / "ds"
    dataset = create(root)
    record_episodes(dataset, episodes=3, frames=20)
    assert dataset.finalize().complete
    return root


@pytest.mark.parametrize("point", ["pack:before-switch", "pack:rows-switched",
                                   "pack:deleting"])
def test_a_pack_killed_anywhere_leaves_a_whole_dataset_and_the_next_pack_finishes(
        recorded: Path, point: str) -> None:
    root = recorded
    killed = run_recorder("pack", "--storage", str(root), failpoint=point)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    check_whole(root, episodes=3, frames=20)
    for camera in CAMERAS:
        per_episode = ["file-000.mp4", "file-001.mp4", "file-002.mp4"]
        if point == "pack:before-switch":
            # The packed file is there, verified, and nothing refers to it yet.
            assert videos_of(root, camera) == [*per_episode, "file-003.mp4"]
            assert video_files_in_rows(root, camera) == [0, 1, 2]
        else:
            assert video_files_in_rows(root, camera) == [3, 3, 3]
            kept = per_episode if point == "pack:rows-switched" else per_episode[1:]
            if point == "pack:deleting" and camera != CAMERAS[0]:
                kept = per_episode  # killed after the first camera's first deletion
            assert videos_of(root, camera) == [*kept, "file-003.mp4"]

    again = run_recorder("pack", "--storage", str(root))
    assert again.returncode == 0, again.stdout + again.stderr
    check_whole(root, episodes=3, frames=20)
    for camera in CAMERAS:
        [packed] = videos_of(root, camera)
        assert video_files_in_rows(root, camera) == [int(packed[5:8])] * 3
    # Every episode's video is where its row says: nothing to encode again.
    pending = run_recorder("encode-pending", "--storage", str(root), "--dry-run")
    assert "0 videos to encode, 6 already there" in pending.stdout, pending.stdout


# --- completion -------------------------------------------------------------------------

@pytest.fixture
def staged(tmp_path: Path, broker_url: str) -> Path:
    """A dataset of 1 episode, and 2 more recorded with --no-wait for a farm that never
    encoded them: staged, their videos missing."""
    root = tmp_path / "ds"
    first = create(root)
    record_episodes(first, episodes=1, frames=10)
    assert first.finalize().total_episodes == 1
    with EncodingFarmClient(broker_url) as farm:
        more = create(root, async_encoding=True, wait=False, farm=farm)
        record_episodes(more, episodes=2, frames=10, seed=1)
        assert more.finalize().staged_left == 2
    return root


@pytest.mark.parametrize("point", ["complete:data-written", "complete:rows-written",
                                   "complete:before-info"])
def test_a_completion_killed_anywhere_leaves_the_old_dataset_and_the_next_run_completes_it(
        staged: Path, point: str) -> None:
    root = staged
    info = (root / "meta/info.json").read_bytes()
    stats = (root / "meta/stats.json").read_bytes()
    killed = run_recorder("encode-pending", "--storage", str(root), "--codec", "libx264",
                          failpoint=point)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert "4 videos to encode, 2 already there" in killed.stdout
    # Killed after writing what comes before info.json: LeRobot sees the old dataset.
    assert (root / "meta/info.json").read_bytes() == info
    assert json.loads(info)["total_episodes"] == 1
    check_whole(root, episodes=1, frames=10)
    layout = Layout()
    assert (root / layout.data_key(2)).exists(), "the new episodes' data was written"
    assert len(pd.read_parquet(root / ROWS)) == (1 if point == "complete:data-written" else 3)
    assert ((root / "meta/stats.json").read_bytes() == stats) == (point != "complete:before-info")

    done = run_recorder("encode-pending", "--storage", str(root), "--codec", "libx264")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 videos to encode, 6 already there" in done.stdout
    check_whole(root, episodes=3, frames=10)


# --- a video that disagrees with its rows ----------------------------------------------

def shorten_by_one_frame(video: Path) -> None:
    """Replace video with a re-encode of all its frames but the last."""
    with av.open(str(video)) as source:
        frames = [frame.to_ndarray(format="rgb24") for frame in source.decode(video=0)]
    short = video.with_name(".short.mp4")
    with av.open(str(short), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, 30)
        for index, image in enumerate(frames[:-1]):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    short.replace(video)


def test_a_video_a_frame_short_is_refused_with_the_reason_and_the_dataset_is_unchanged(
        tmp_path: Path, broker_url: str, start_worker: Callable[..., WorkerProcess]) -> None:
    root = tmp_path / "ds"
    first = create(root)
    record_episodes(first, episodes=1, frames=10)
    assert first.finalize().total_episodes == 1
    with EncodingFarmClient(broker_url) as farm:
        more = create(root, async_encoding=True, wait=False, farm=farm)
        record_episodes(more, episodes=1, frames=10, seed=1)
        assert more.finalize().staged_left == 1
    # The farm publishes the episode's videos after the recorder went away (--no-wait).
    start_worker(broker_url)
    videos = [root / Layout().video_key_of(recording=1, video_key=f"observation.images.{c}")
              for c in CAMERAS]
    wait_for(lambda: all(video.exists() for video in videos), timeout_s=120,
             what="the farm to publish recording 1's videos")
    shorten_by_one_frame(videos[1])
    before = files_of(root, "meta", "data")

    refused = run_recorder("encode-pending", "--storage", str(root), "--codec", "libx264")
    assert refused.returncode == 1
    assert "0 videos to encode, 4 already there" in refused.stdout
    said = " ".join(refused.stderr.split())
    assert f"{videos[1].relative_to(root).as_posix()} has 9 frames, recording 1 has 10 " \
           "data rows; the episode is not added" in said, said
    assert "Traceback" not in refused.stderr
    assert files_of(root, "meta", "data") == before
    check_whole(root, episodes=1, frames=10)

    # What the message says to do: move the video away and encode it again.
    videos[1].rename(tmp_path / "short.mp4")
    done = run_recorder("encode-pending", "--storage", str(root), "--codec", "libx264")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 videos to encode, 3 already there" in done.stdout
    check_whole(root, episodes=2, frames=10)
