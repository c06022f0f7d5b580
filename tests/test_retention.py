"""Raw retention: an episode's raw frames go once the dataset counts it, never before;
interrupted and cleared recordings keep theirs; --keep-raw keeps everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO
from dataset_checks import check_v3_dataset, mirror
from recordings import CAMERAS, features, record_episodes
from rich.console import Console

from encoder_worker.raw_layout import RAW_ROOT, raw_prefix, recording_prefix
from encoder_worker.storage import open_storage
from recorder.dataset import FarmDataset
from recorder.dataset.failpoints import ENV_VAR
from recorder.dataset.retention import recordings_with_raw
from recorder.farm.client import EncodingFarmClient
from recorder.pending import encode_pending
from recorder.settings import RecorderSettings

pytestmark = pytest.mark.integration

FAST = {"codec": "libx264", "segment_frames": 5}


def create(root: Path | str, **options) -> FarmDataset:
    return FarmDataset.create("test/retention", fps=30, features=features(160, 120),
                              robot_type="sim", root=str(root), **{**FAST, **options})


def raw_recordings(root: Path) -> set[int]:
    return recordings_with_raw(open_storage(root))


def record_with_a_cleared_episode(dataset: FarmDataset) -> None:
    """Recordings 0 and 1 saved, 2 cleared (re-recorded), 3 saved."""
    record_episodes(dataset, episodes=2, frames=10)
    frame = {f"observation.images.{c}": dataset_frame(dataset) for c in CAMERAS}
    dataset.add_frame({**frame, "observation.state": [0.0] * 6, "action": [0.0] * 6,
                       "task": "cleared"})
    dataset.clear_episode_buffer()
    record_episodes(dataset, episodes=1, frames=10, seed=1)


def dataset_frame(dataset: FarmDataset):
    import numpy as np

    height, width, _ = dataset.features[f"observation.images.{CAMERAS[0]}"]["shape"]
    return np.zeros((height, width, 3), np.uint8)


def test_counted_episodes_lose_their_raw_frames_and_a_cleared_one_keeps_them(tmp_path):
    root = tmp_path / "ds"
    dataset = create(root)
    record_with_a_cleared_episode(dataset)
    completion = dataset.finalize()
    assert completion.complete and completion.raw_dropped == [0, 1, 3]
    assert raw_recordings(root) == {2}, "only the cleared recording keeps raw frames"
    check_v3_dataset(root, raw_url=None, episodes=3, cameras=CAMERAS, frames_per_episode=10)


def test_keep_raw_keeps_every_raw_frame(tmp_path):
    root = tmp_path / "ds"
    dataset = create(root, keep_raw=True)
    record_with_a_cleared_episode(dataset)
    assert dataset.finalize().raw_dropped == []
    assert raw_recordings(root) == {0, 1, 2, 3}
    check_v3_dataset(root, raw_url=str(root), episodes=3, cameras=CAMERAS,
                     frames_per_episode=10)


def test_an_episode_waiting_for_its_videos_keeps_its_raw_frames(tmp_path, broker_url,
                                                               start_worker):
    root = tmp_path / "ds"
    with EncodingFarmClient(broker_url) as farm:  # no worker yet: nothing is encoded
        dataset = create(root, async_encoding=True, broker=broker_url, wait=False,
                         farm=farm)
        record_episodes(dataset, episodes=2, frames=10)
        completion = dataset.finalize()
    assert completion.total_episodes == 0 and completion.raw_dropped == []
    assert raw_recordings(root) == {0, 1}
    start_worker(broker_url)
    settings = RecorderSettings(storage=str(root), async_encoding=True, broker=broker_url,
                                codec="libx264")
    _, completion = encode_pending(settings, console=Console(quiet=True))
    assert completion is not None and completion.complete and completion.total_episodes == 2
    assert raw_recordings(root) == set()
    check_v3_dataset(root, raw_url=None, episodes=2, cameras=CAMERAS, frames_per_episode=10)


@pytest.fixture
def undeletable() -> Iterator[list[Path]]:
    """Files marked immutable (chattr +i): not even root deletes them; unmarked after."""
    marked: list[Path] = []
    yield marked
    for path in marked:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def test_a_deletion_cut_short_is_said_and_finished_by_the_next_completion(tmp_path,
                                                                         undeletable):
    if subprocess.run(["chattr", "--help"], capture_output=True).returncode not in (0, 1):
        pytest.skip("chattr is missing")
    root = tmp_path / "ds"
    dataset = create(root)
    record_episodes(dataset, episodes=2, frames=10)
    dataset.finish_uploads()
    # A segment of recording 1 that its disk refuses to delete (as a failing disk does).
    stuck = next((root / raw_prefix(recording=1, camera=CAMERAS[0])).glob("segment_*"))
    if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode != 0:
        pytest.skip("this file system has no immutable attribute")
    undeletable.append(stuck)
    completion = dataset.finalize()
    assert completion.complete and completion.raw_dropped == [0]
    assert raw_recordings(root) == {1}
    check_v3_dataset(root, raw_url=None, episodes=2, cameras=CAMERAS, frames_per_episode=10)

    subprocess.run(["chattr", "-i", str(stuck)], check=True)
    result = subprocess.run([sys.executable, "-m", "recorder.cli", "encode-pending",
                             "--storage", str(root)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "interrupted" not in result.stdout, "a counted recording is not an interrupted one"
    assert raw_recordings(root) == set()
    check_v3_dataset(root, raw_url=None, episodes=2, cameras=CAMERAS, frames_per_episode=10)


def test_s3_raw_frames_go_once_counted(s3_url, tmp_path):
    dataset = create(s3_url, spool_dir=tmp_path / "spool")
    record_episodes(dataset, episodes=2, frames=10)
    assert dataset.finalize().raw_dropped == [0, 1]
    assert open_storage(s3_url).list_keys(RAW_ROOT) == []
    local = mirror(s3_url, tmp_path / "mirror")
    check_v3_dataset(local, raw_url=None, episodes=2, cameras=CAMERAS, frames_per_episode=10)


def test_the_zero_config_demo_leaves_only_the_dataset(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "recorder.cli", "record", "--async-encoding",
         "--episodes", "2", "--episode-time", "1", "--width", "160", "--height", "120",
         "--codec", "libx264", "--output-dir", str(tmp_path / "recordings")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    root = tmp_path / "recordings/local/robot_dataset"
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == [
        "data", "meta", "videos"]
    assert not (root / recording_prefix(0)).exists()


def test_a_recorder_killed_while_deleting_raw_frames_leaves_a_whole_dataset(tmp_path):
    root = tmp_path / "ds"
    dataset = create(root, keep_raw=True)
    record_episodes(dataset, episodes=3, frames=10)
    dataset.finalize()
    env = {**os.environ, "PYTHONPATH": str(REPO), ENV_VAR: "retention:between-recordings"}
    pending = [sys.executable, "-m", "recorder.cli", "encode-pending", "--storage", str(root)]
    killed = subprocess.run(pending, capture_output=True, text=True, timeout=120, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert raw_recordings(root) == {1, 2}, "killed after the first recording's deletion"
    check_v3_dataset(root, raw_url=None, episodes=3, cameras=CAMERAS, frames_per_episode=10)
    done = subprocess.run(pending, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "interrupted" not in done.stdout
    assert raw_recordings(root) == set()
    check_v3_dataset(root, raw_url=None, episodes=3, cameras=CAMERAS, frames_per_episode=10)
