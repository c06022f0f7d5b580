"""Real LeRobot loads what the farm records: `make lerobot-conformance` runs this.

Needs lerobot[dataset]==0.6.1 (Python >= 3.12); the default suite skips it when lerobot
is not importable, and checks the same contract with pyarrow and PyAV instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from recordings import CAMERAS, features, record_episodes
from video_checks import psnr

from encoder_worker.raw_episode import RawEpisodeReader
from encoder_worker.raw_layout import raw_prefix
from encoder_worker.storage import open_storage
from recorder.dataset import FarmDataset
from recorder.dataset.pack import pack_dataset

lerobot_dataset = pytest.importorskip("lerobot.datasets.lerobot_dataset",
                                      reason="lerobot is not installed: make lerobot-conformance")

pytestmark = [pytest.mark.lerobot, pytest.mark.integration]

EPISODES, FRAMES = 3, 20


def load_and_check_every_item(root: Path) -> int:
    """Load with LeRobotDataset, decode every item of every camera, compare with raw."""
    dataset = lerobot_dataset.LeRobotDataset("farm/conformance", root=root,
                                             video_backend="pyav")
    assert len(dataset) == EPISODES * FRAMES
    assert dataset.num_episodes == EPISODES
    assert dataset.meta.video_keys == [f"observation.images.{c}" for c in CAMERAS]
    recordings = {row["episode_index"]: row["farm/recording"]
                  for row in dataset.meta.episodes}
    raw = {(episode, camera): list(RawEpisodeReader(
        open_storage(root), raw_prefix(recording=recording, camera=camera)).rgb_frames())
        for episode, recording in recordings.items() for camera in CAMERAS}
    for index in range(len(dataset)):
        item = dataset[index]
        episode, frame = int(item["episode_index"]), int(item["frame_index"])
        assert item["observation.state"].shape == (6,) and item["action"].shape == (6,)
        for camera in CAMERAS:
            image = item[f"observation.images.{camera}"]
            assert tuple(image.shape) == (3, 240, 320)
            decoded = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            assert psnr(decoded, raw[episode, camera][frame]) > 27, (index, camera)
    return len(dataset)


def test_lerobot_loads_every_frame_before_and_after_packing(tmp_path):
    root = tmp_path / "conformance"
    dataset = FarmDataset.create("farm/conformance", fps=30, features=features(),
                                 robot_type="sim", root=str(root),
                                 keep_raw=True)  # every item is compared with its raw frame
    record_episodes(dataset, episodes=EPISODES, frames=FRAMES)
    assert dataset.finalize().complete
    assert load_and_check_every_item(root) == EPISODES * FRAMES
    pack_dataset(dataset.storage, dataset.raw_storage)
    assert len(list(root.glob("videos/*/*/*.mp4"))) == len(CAMERAS)
    assert load_and_check_every_item(root) == EPISODES * FRAMES
