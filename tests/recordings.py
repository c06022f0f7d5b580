"""A LeRobot-style control loop over FarmDataset, with synthetic cameras and robot."""

from __future__ import annotations

from collections.abc import Callable

from recorder.capture.cameras.synthetic import synthetic_cameras
from recorder.capture.robot import SyntheticRobot
from recorder.dataset import FarmDataset

CAMERAS = ["cam0", "cam1"]
TASKS = ["pick the cube", "place the cube"]


def features(width: int = 320, height: int = 240, *, cameras: list[str] = CAMERAS,
             dof: int = 6) -> dict[str, dict]:
    result = {f"observation.images.{c}": {"dtype": "video", "shape": [height, width, 3],
                                          "names": ["height", "width", "channels"]}
              for c in cameras}
    return result | SyntheticRobot(dof=dof).features()


def record_episodes(dataset: FarmDataset, *, episodes: int, frames: int, seed: int = 0,
                    after_frame: Callable[[], object] | None = None) -> None:
    """episodes episodes of frames frames; the task changes halfway through each.
    after_frame, if given, is called after each add_frame (to act mid-session)."""
    shape = dataset.features[f"observation.images.{CAMERAS[0]}"]["shape"]
    cameras = synthetic_cameras(len(CAMERAS), width=shape[1], height=shape[0],
                                fps=dataset.fps, seed=seed)
    robot = SyntheticRobot(fps=dataset.fps, seed=seed)
    for _ in range(episodes):
        for index in range(frames):
            frame = {f"observation.images.{c.name}": c.read() for c in cameras}
            frame |= robot.read()
            frame["task"] = TASKS[0] if index < frames // 2 else TASKS[1]
            dataset.add_frame(frame)
            if after_frame is not None:
                after_frame()
        dataset.save_episode()
