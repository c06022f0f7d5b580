"""A synthetic leader arm: every joint follows a smooth trajectory of its own."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from lerobot.teleoperators import Teleoperator, TeleoperatorConfig

from recorder.capture.robot import SyntheticRobot


@TeleoperatorConfig.register_subclass("farm_synthetic")
@dataclass
class FarmSyntheticTeleopConfig(TeleoperatorConfig):
    num_joints: int = 6
    seed: int = 0


class FarmSyntheticTeleop(Teleoperator):
    config_class = FarmSyntheticTeleopConfig
    name = "farm_synthetic"

    def __init__(self, config: FarmSyntheticTeleopConfig) -> None:
        super().__init__(config)
        self.config = config
        self.joints = [f"joint_{i}.pos" for i in range(config.num_joints)]
        self._trajectory = SyntheticRobot(dof=config.num_joints, seed=config.seed)
        self._started: float | None = None

    @property
    def action_features(self) -> dict[str, Any]:
        return dict.fromkeys(self.joints, float)

    @property
    def feedback_features(self) -> dict[str, Any]:
        return {}

    @property
    def is_connected(self) -> bool:
        return self._started is not None

    def connect(self, calibrate: bool = True) -> None:
        self._started = time.perf_counter()

    @property
    def is_calibrated(self) -> bool:
        return True

    def calibrate(self) -> None:
        pass

    def configure(self) -> None:
        pass

    def get_action(self) -> dict[str, Any]:
        if self._started is None:
            raise RuntimeError(f"{self} is not connected")
        positions = self._trajectory.position_at(time.perf_counter() - self._started)
        return {joint: float(p) for joint, p in zip(self.joints, positions, strict=True)}

    def send_feedback(self, feedback: dict[str, Any]) -> None:
        pass

    def disconnect(self) -> None:
        self._started = None
