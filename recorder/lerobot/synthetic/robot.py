"""A synthetic arm for lerobot-record: joints that follow the teleoperator, and cameras."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lerobot.cameras import CameraConfig, make_cameras_from_configs
from lerobot.robots import Robot, RobotConfig

from recorder.lerobot.synthetic.cameras import FarmSyntheticCameraConfig

# How far a joint moves towards its commanded position per observation (a lagging servo).
FOLLOW = 0.5


def default_cameras() -> dict[str, CameraConfig]:
    return {name: FarmSyntheticCameraConfig(seed=seed, width=640, height=480, fps=30)
            for seed, name in enumerate(("front", "wrist"))}


@RobotConfig.register_subclass("farm_synthetic")
@dataclass
class FarmSyntheticRobotConfig(RobotConfig):
    num_joints: int = 6
    cameras: dict[str, CameraConfig] = field(default_factory=default_cameras)
    # To try a robot that fails mid-episode: get_observation() raises ConnectionError
    # after this many observations (None: never).
    fail_after_observations: int | None = None


class FarmSyntheticRobot(Robot):
    config_class = FarmSyntheticRobotConfig
    name = "farm_synthetic"

    def __init__(self, config: FarmSyntheticRobotConfig) -> None:
        super().__init__(config)
        self.config = config
        self.cameras = make_cameras_from_configs(config.cameras)
        self.joints = [f"joint_{i}.pos" for i in range(config.num_joints)]
        self._position = dict.fromkeys(self.joints, 0.0)
        self._commanded = dict(self._position)
        self._observations = 0
        self._connected = False

    @property
    def observation_features(self) -> dict[str, Any]:
        cameras = {key: (c.height, c.width, 3) for key, c in self.config.cameras.items()}
        return {**dict.fromkeys(self.joints, float), **cameras}

    @property
    def action_features(self) -> dict[str, Any]:
        return dict.fromkeys(self.joints, float)

    @property
    def is_connected(self) -> bool:
        return self._connected

    def connect(self, calibrate: bool = True) -> None:
        for camera in self.cameras.values():
            camera.connect()
        self._connected = True

    @property
    def is_calibrated(self) -> bool:
        return True

    def calibrate(self) -> None:
        pass

    def configure(self) -> None:
        pass

    def get_observation(self) -> dict[str, Any]:
        if not self._connected:
            raise RuntimeError(f"{self} is not connected")
        self._observations += 1
        limit = self.config.fail_after_observations
        if limit is not None and self._observations > limit:
            raise ConnectionError(f"{self}: the synthetic robot stopped answering after "
                                  f"{limit} observations (fail_after_observations)")
        for joint in self.joints:
            self._position[joint] += FOLLOW * (self._commanded[joint] - self._position[joint])
        observation: dict[str, Any] = dict(self._position)
        for key, camera in self.cameras.items():
            observation[key] = camera.read_latest()
        return observation

    def send_action(self, action: dict[str, Any]) -> dict[str, Any]:
        self._commanded.update({k: float(v) for k, v in action.items() if k in self._commanded})
        return action

    def disconnect(self) -> None:
        for camera in self.cameras.values():
            camera.disconnect()
        self._connected = False
