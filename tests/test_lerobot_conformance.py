"""Real LeRobot loads what the farm records: `make lerobot-conformance` runs this.

Needs lerobot[dataset]==0.6.1 (Python >= 3.12); the default suite skips it when lerobot
is not importable, and checks the same contract with pyarrow and PyAV instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dataset_checks import check_with_lerobot
from recordings import CAMERAS, features, record_episodes

from recorder.dataset import FarmDataset
from recorder.dataset.pack import pack_dataset

pytest.importorskip("lerobot.datasets.lerobot_dataset",
                    reason="lerobot is not installed: make lerobot-conformance")

pytestmark = [pytest.mark.lerobot, pytest.mark.integration]

EPISODES, FRAMES = 3, 20


def lerobot_items(root: Path) -> int:
    return check_with_lerobot(root, episodes=EPISODES, frames=FRAMES, cameras=CAMERAS)


def test_lerobot_loads_every_frame_before_and_after_packing(tmp_path):
    root = tmp_path / "conformance"
    dataset = FarmDataset.create("farm/conformance", fps=30, features=features(),
                                 robot_type="sim", root=str(root),
                                 keep_raw=True)  # every item is compared with its raw frame
    record_episodes(dataset, episodes=EPISODES, frames=FRAMES)
    assert dataset.finalize().complete
    assert lerobot_items(root) == EPISODES * FRAMES
    pack_dataset(dataset.storage, dataset.raw_storage)
    assert len(list(root.glob("videos/*/*/*.mp4"))) == len(CAMERAS)
    assert lerobot_items(root) == EPISODES * FRAMES
