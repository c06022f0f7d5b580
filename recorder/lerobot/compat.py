"""Which LeRobot the farm plugs into, and the check of the installed one at start.

The farm takes the place of the dataset object that `lerobot-record` creates: it replaces
the name `LeRobotDataset` in `lerobot.scripts.lerobot_record` (read there at call time).
SEAMS lists every name of LeRobot this relies on; a LeRobot outside SUPPORTED, or one that
lacks any of them, is refused before anything is recorded, never used half-way.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType

from packaging.specifiers import SpecifierSet
from packaging.version import Version

# Also in pyproject.toml's `lerobot` extra; tests/test_lerobot_seams.py checks they agree.
SUPPORTED = SpecifierSet(">=0.6.1,<0.7")
INSTALL = "pip install 'robot-encoding-farm[lerobot]'  (LeRobot >=0.6.1,<0.7, Python >= 3.12)"

# module -> names the farm uses there: replaced (LeRobotDataset), called, or read.
SEAMS: dict[str, tuple[str, ...]] = {
    "lerobot.scripts.lerobot_record": (
        "LeRobotDataset", "VideoEncodingManager", "record", "main", "RecordConfig",
        "sanity_check_dataset_robot_compatibility", "init_keyboard_listener"),
    "lerobot.configs.dataset": ("DatasetRecordConfig",),
    "lerobot.configs.video": ("RGBEncoderConfig",),
    "lerobot.datasets.lerobot_dataset": ("LeRobotDataset",),
    "lerobot.robots": ("Robot", "RobotConfig"),
    "lerobot.teleoperators": ("Teleoperator", "TeleoperatorConfig"),
    "lerobot.cameras": ("CameraConfig", "make_cameras_from_configs"),
    "lerobot.cameras.camera": ("Camera",),
    "lerobot.utils.constants": ("HF_LEROBOT_HOME",),
}


class LeRobotUnsupported(Exception):
    """LeRobot is missing, of another version, or lacks a name the farm uses."""


def installed_version() -> Version:
    """The installed LeRobot's version.

    Raises:
        LeRobotUnsupported: LeRobot is not installed.
    """
    try:
        return Version(version("lerobot"))
    except PackageNotFoundError:
        raise LeRobotUnsupported(f"LeRobot is not installed here: {INSTALL}") from None


def check_lerobot() -> ModuleType:
    """Check the installed LeRobot against SUPPORTED and SEAMS; returns lerobot_record.

    Raises:
        LeRobotUnsupported: says what is wrong and the install line.
    """
    found = installed_version()
    if found not in SUPPORTED:
        raise LeRobotUnsupported(
            f"LeRobot {found} is installed; the farm records with LeRobot {SUPPORTED}: "
            f"{INSTALL}")
    for module_name, names in SEAMS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise LeRobotUnsupported(f"LeRobot {found}: cannot import {module_name} ({exc}); "
                                     f"{INSTALL}") from exc
        missing = [name for name in names if not hasattr(module, name)]
        if missing:
            raise LeRobotUnsupported(
                f"LeRobot {found} has no {', '.join(missing)} in {module_name}, which the farm "
                f"plugs into: {INSTALL}")
    return importlib.import_module("lerobot.scripts.lerobot_record")
