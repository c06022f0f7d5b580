"""`recorder lerobot-record` and plain `lerobot-record` as real subprocesses, for the LeRobot
suite (make test-lerobot): the synthetic robot, keys sent through a pty as a user types them,
and the result loaded and decoded by LeRobot itself."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from conftest import REPO, wait_for
from video_checks import psnr

from encoder_worker.raw_episode import RawEpisodeReader
from encoder_worker.raw_layout import raw_prefix
from encoder_worker.storage import open_storage

CAMERAS = ("front", "wrist")
WIDTH, HEIGHT, FPS = 320, 240, 30
CAMERAS_FLAG = "--robot.cameras={" + ", ".join(
    f"{name}: {{type: farm_synthetic, seed: {seed}, width: {WIDTH}, height: {HEIGHT}, "
    f"fps: {FPS}}}" for seed, name in enumerate(CAMERAS)) + "}"
TASK = "wave the synthetic arm"


def lerobot_environment(tmp_path: Path) -> dict[str, str]:
    """The farm's code from this checkout; LeRobot's folders in the test's; no display."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(PYTHONPATH=str(REPO), HF_LEROBOT_HOME=str(tmp_path / "hf-lerobot"),
               HF_LEROBOT_CALIBRATION=str(tmp_path / "calibration"), HF_HUB_OFFLINE="1",
               FARM_WORKER_ALLOW_STORAGE=str(tmp_path))
    return env


def record_flags(root: Path, *, episodes: int, episode_s: float, reset_s: float = 0.5,
                 repo_id: str = "farm/lerobot_record") -> list[str]:
    """A LeRobot user's command line for the synthetic robot, 2 cameras."""
    return ["--robot.type=farm_synthetic", CAMERAS_FLAG, "--teleop.type=farm_synthetic",
            f"--dataset.repo_id={repo_id}", f"--dataset.root={root}",
            f"--dataset.single_task={TASK}", f"--dataset.num_episodes={episodes}",
            f"--dataset.episode_time_s={episode_s}", f"--dataset.reset_time_s={reset_s}",
            "--dataset.push_to_hub=false", "--play_sounds=false", "--display_data=false"]


FARM_COMMAND = [sys.executable, "-m", "recorder.cli", "lerobot-record"]
# Plain LeRobot, with the synthetic devices through its own plugin flag.
LEROBOT_COMMAND = [sys.executable, "-c",
                   "import sys; from lerobot.scripts.lerobot_record import main; sys.exit(main())",
                   "--robot.discover_packages_path=recorder.lerobot.synthetic"]


@dataclass
class Run:
    returncode: int
    output: str


def run(command: Sequence[str], env: dict[str, str], log: Path, *,
        keys: Sequence[tuple[str, Callable[[], object], bytes]] = (),
        timeout_s: float = 300) -> Run:
    """Run command; each key is typed on its terminal once its condition holds.

    Args:
        keys: (what is waited for, condition, key); with keys, stdin is a pty, which
            LeRobot's keyboard listener reads without a display.
    """
    stdin: int = subprocess.DEVNULL
    master = slave = -1
    if keys:
        master, slave = pty.openpty()
        stdin = slave
    with open(log, "wb") as out:
        process = subprocess.Popen(list(command), stdin=stdin, stdout=out,
                                   stderr=subprocess.STDOUT, env=env, cwd=log.parent)
    try:
        for what, condition, key in keys:
            wait_for(lambda c=condition: process.poll() is not None or c(), timeout_s=120,
                     what=what)
            if process.poll() is not None:
                break
            os.write(master, key)
        process.wait(timeout=timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if keys:
            os.close(master)
            os.close(slave)
    return Run(process.returncode, log.read_text(errors="replace"))


def has_segment(root: Path, recording: int) -> bool:
    """True once the recording's first camera stored a segment (frames are flowing)."""
    return any((root / raw_prefix(recording=recording, camera=CAMERAS[0])).glob("segment_*"))


def load_every_frame(root: Path) -> dict[int, int]:
    """Load the dataset with LeRobot 0.6, decode every item of every camera and compare it
    with its raw frame; returns the frames per episode index.

    Every frame the farm captured is in it: an episode's frames decoded here are its rows
    and, for the farm's episodes, every frame of each camera's raw manifest.
    """
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    dataset = LeRobotDataset("farm/lerobot_record", root=root, video_backend="pyav")
    recordings = {row["episode_index"]: row.get("farm/recording")
                  for row in dataset.meta.episodes}
    raw: dict[tuple[int, str], list[np.ndarray]] = {}
    frames: dict[int, int] = {}
    for index in range(len(dataset)):
        item = dataset[index]
        episode, frame = int(item["episode_index"]), int(item["frame_index"])
        frames[episode] = frames.get(episode, 0) + 1
        assert item["task"] == TASK
        assert item["observation.state"].shape == (6,) and item["action"].shape == (6,)
        recording = recordings[episode]
        for camera in CAMERAS:
            image = item[f"observation.images.{camera}"]
            assert tuple(image.shape) == (3, HEIGHT, WIDTH)
            if recording is None:
                continue  # recorded by LeRobot itself: no raw frames to compare with
            if (episode, camera) not in raw:
                raw[episode, camera] = list(RawEpisodeReader(
                    open_storage(root), raw_prefix(recording=recording, camera=camera))
                    .rgb_frames())
            decoded = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            assert psnr(decoded, raw[episode, camera][frame]) > 27, (index, camera)
    assert sum(frames.values()) == len(dataset) == dataset.num_frames
    for row in dataset.meta.episodes:
        episode, recording = row["episode_index"], row.get("farm/recording")
        assert frames[episode] == row["length"]
        if recording is not None:
            for camera in CAMERAS:
                assert len(raw[episode, camera]) == frames[episode], (episode, camera)
    return frames
