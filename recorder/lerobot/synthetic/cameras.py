"""Two LeRobot cameras: generated frames, and a video file replayed at its own rate.

Both deliver frames from a thread of their own, as a camera driver does, so that a
record loop's read takes the newest frame and never waits for one to be made.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from lerobot.cameras.camera import Camera
from lerobot.cameras.configs import CameraConfig

from recorder.capture.cameras.synthetic import SyntheticCamera
from recorder.capture.cameras.video import VideoFileCamera


@CameraConfig.register_subclass("farm_synthetic")
@dataclass
class FarmSyntheticCameraConfig(CameraConfig):
    """Generated frames with the content a codec meets in practice (recorder's synthetic
    camera: a panning textured scene, moving objects, lighting changes, sensor noise)."""

    seed: int = 0


@CameraConfig.register_subclass("farm_replay")
@dataclass
class FarmReplayCameraConfig(CameraConfig):
    """A video file replayed as a camera, looping; frames resized to width x height."""

    path: str = ""


class FarmSyntheticCamera(Camera):
    def __init__(self, config: FarmSyntheticCameraConfig) -> None:
        super().__init__(config)
        self.config = config
        self._latest: np.ndarray | None = None
        self._fresh = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def is_connected(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @staticmethod
    def find_cameras() -> list[dict[str, Any]]:
        return []

    def connect(self, warmup: bool = True) -> None:
        fps = self.fps or 30
        source = SyntheticCamera(str(self), width=self.width or 640,
                                 height=self.height or 480, fps=fps, seed=self.config.seed)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(source, fps), daemon=True,
                                        name=f"camera-{self}")
        self._thread.start()
        self.async_read()  # the first frame is there once connect returns

    def _run(self, source: SyntheticCamera, fps: float) -> None:
        started = time.perf_counter()
        index = 0
        while not self._stop.is_set():
            frame = source.frame_at(index)
            with self._fresh:
                self._latest = frame
                self._fresh.notify_all()
            index += 1
            # Paced like a sensor: frame index at its time since connect.
            self._stop.wait(max(0.0, started + index / fps - time.perf_counter()))

    def read(self) -> np.ndarray:
        return self.async_read()

    def async_read(self, timeout_ms: float = 1000) -> np.ndarray:
        with self._fresh:
            if not self._fresh.wait_for(lambda: self._latest is not None,
                                        timeout=timeout_ms / 1000):
                raise TimeoutError(f"{self}: no frame within {timeout_ms:.0f} ms")
            assert self._latest is not None
            return self._latest

    def read_latest(self, max_age_ms: int = 500) -> np.ndarray:
        return self.async_read()

    def disconnect(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._thread = None


class FarmReplayCamera(Camera):
    def __init__(self, config: FarmReplayCameraConfig) -> None:
        super().__init__(config)
        self.config = config
        self._camera: VideoFileCamera | None = None

    @property
    def is_connected(self) -> bool:
        return self._camera is not None

    @staticmethod
    def find_cameras() -> list[dict[str, Any]]:
        return []

    def connect(self, warmup: bool = True) -> None:
        # Decodes ahead in a thread of its own (recorder/capture/cameras/video.py); a file
        # that is missing or has no video raises CameraError naming it.
        self._camera = VideoFileCamera(self.config.path, name=str(self), width=self.width,
                                       height=self.height)

    def read(self) -> np.ndarray:
        if self._camera is None:
            raise RuntimeError(f"{self} is not connected")
        return self._camera.read()

    def async_read(self, timeout_ms: float = 200) -> np.ndarray:
        return self.read()

    def read_latest(self, max_age_ms: int = 500) -> np.ndarray:
        return self.read()

    def disconnect(self) -> None:
        if self._camera is not None:
            self._camera.close()
        self._camera = None
