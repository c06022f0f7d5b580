"""A synthetic robot, teleoperator and cameras for lerobot-record, without hardware.

    recorder lerobot-record --robot.type=farm_synthetic --teleop.type=farm_synthetic ...
    lerobot-record --robot.discover_packages_path=recorder.lerobot.synthetic ...

Registered through LeRobot's own register_subclass: `--robot.type=farm_synthetic`,
`--teleop.type=farm_synthetic`, cameras `{type: farm_synthetic}` (generated frames) and
`{type: farm_replay, path: clip.mp4}` (a video file replayed at its own rate). LeRobot
finds a device class next to its config class's module, in this package: hence the
re-exports.
"""

from recorder.lerobot.synthetic.cameras import (
    FarmReplayCamera,
    FarmReplayCameraConfig,
    FarmSyntheticCamera,
    FarmSyntheticCameraConfig,
)
from recorder.lerobot.synthetic.robot import FarmSyntheticRobot, FarmSyntheticRobotConfig
from recorder.lerobot.synthetic.teleop import FarmSyntheticTeleop, FarmSyntheticTeleopConfig

__all__ = ["FarmReplayCamera", "FarmReplayCameraConfig", "FarmSyntheticCamera",
           "FarmSyntheticCameraConfig", "FarmSyntheticRobot", "FarmSyntheticRobotConfig",
           "FarmSyntheticTeleop", "FarmSyntheticTeleopConfig"]
