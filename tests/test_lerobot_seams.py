"""The contract with LeRobot that `recorder lerobot-record` relies on, read from the
installed LeRobot itself: when a release changes it, this fails and says what moved.

The route: recorder/lerobot/ replaces the name LeRobotDataset in LeRobot's record script
(docs/architecture.md, "lerobot-record on the farm").
"""

from __future__ import annotations

import ast
import inspect
import os
import textwrap
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import REPO

lerobot_record = pytest.importorskip("lerobot.scripts.lerobot_record", reason="LeRobot runs "
                                     "in its own environment: make test-lerobot")

from lerobot.configs.video import RGBEncoderConfig  # noqa: E402
from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: E402
from lerobot.datasets.video_utils import VideoEncodingManager  # noqa: E402
from lerobot.utils import constants  # noqa: E402

from recorder.dataset.layout import DEFAULT_FEATURES  # noqa: E402
from recorder.lerobot import compat  # noqa: E402
from recorder.lerobot.dataset import (  # noqa: E402
    LEROBOT_CODECS,
    FarmDatasets,
    FarmLeRobotDataset,
    FarmMeta,
    encoder_from_lerobot,
)

pytestmark = pytest.mark.lerobot


def attributes_used(function: object, name: str) -> set[str]:
    """Every attribute read on the variable `name` (dataset, self.dataset) in a function."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))  # type: ignore[arg-type]
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            target = ast.unparse(node.value)
            if target == name:
                used.add(node.attr)
    return used


def provided(cls: type) -> set[str]:
    """Names a FarmLeRobotDataset offers: its class's and those __init__ sets."""
    init = attributes_used(cls.__init__, "self")
    return {name for name in dir(cls) if not name.startswith("__")} | init


def test_the_installed_lerobot_is_in_the_supported_range_and_has_every_seam():
    assert compat.check_lerobot() is lerobot_record
    assert compat.installed_version() in compat.SUPPORTED


def test_the_supported_range_is_the_one_the_extra_installs():
    from packaging.requirements import Requirement

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    [requirement] = pyproject["project"]["optional-dependencies"]["lerobot"]
    assert Requirement(requirement).specifier == compat.SUPPORTED


def test_the_record_script_uses_nothing_of_its_dataset_the_farm_lacks():
    used = (attributes_used(lerobot_record.record, "dataset")
            | attributes_used(lerobot_record.record_loop, "dataset")
            | attributes_used(VideoEncodingManager.__exit__, "self.dataset")
            | attributes_used(lerobot_record.sanity_check_dataset_robot_compatibility,
                              "dataset"))
    assert used, "the record script no longer names its dataset `dataset`: read it again"
    assert used - provided(FarmLeRobotDataset) == set()
    meta = attributes_used(lerobot_record.sanity_check_dataset_robot_compatibility,
                           "dataset.meta")
    assert meta - set(FarmMeta.__dataclass_fields__) == set()


def test_the_record_script_creates_and_resumes_with_arguments_the_farm_takes():
    for method in ("create", "resume"):
        called = set()
        for node in ast.walk(ast.parse(inspect.getsource(lerobot_record.record))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == f"LeRobotDataset.{method}":
                called |= {k.arg for k in node.keywords if k.arg}
        assert called, f"record() no longer calls LeRobotDataset.{method}"
        ours = inspect.signature(getattr(FarmDatasets, method)).parameters
        real = inspect.signature(getattr(LeRobotDataset, method)).parameters
        assert called <= set(real), f"LeRobotDataset.{method} changed its arguments"
        named = {n for n, p in ours.items() if p.kind is not p.VAR_KEYWORD}
        assert {"root", "rgb_encoder"} <= named & called


def test_lerobots_default_features_are_the_farms():
    assert {k: {**v, "shape": tuple(v["shape"])} for k, v in DEFAULT_FEATURES.items()} == \
        constants.DEFAULT_FEATURES


def test_every_codec_lerobot_accepts_maps_to_an_encoder_pyav_has():
    import av
    from lerobot.configs.video import VALID_VIDEO_CODECS

    for vcodec in VALID_VIDEO_CODECS - {"auto"}:
        name = LEROBOT_CODECS.get(vcodec, vcodec)
        try:
            assert av.codec.Codec(name, "w").name == av.codec.Codec(vcodec, "w").name
        except av.codec.codec.UnknownCodecError:
            continue  # a hardware encoder this PyAV build lacks (videotoolbox, qsv...)
    options = encoder_from_lerobot(RGBEncoderConfig(vcodec="h264", crf=23, g=4))
    assert (options.codec, options.crf, options.gop, options.pix_fmt) == ("libx264", 23, 4,
                                                                           "yuv420p")
    defaults = encoder_from_lerobot(RGBEncoderConfig())
    assert (defaults.codec, defaults.crf, defaults.gop, defaults.preset) == (
        "libsvtav1", 30, 2, "12"), "LeRobot's defaults are the farm's"


def test_the_lerobot_environment_runs_the_celery_the_farms_tests_run():
    expected = os.environ.get("FARM_DEV_PACKAGES")
    if not expected:
        pytest.skip("FARM_DEV_PACKAGES is set by make test-lerobot")
    for pinned in expected.split():
        package, wanted = pinned.split("==")
        assert version(package) == wanted, f"{package}: {version(package)} here, {wanted} " \
                                           "in the farm's environment"


def test_synthetic_devices_register_through_lerobots_own_registries():
    from lerobot.cameras import CameraConfig
    from lerobot.robots import RobotConfig
    from lerobot.teleoperators import TeleoperatorConfig

    import recorder.lerobot.synthetic

    assert "farm_synthetic" in RobotConfig.get_known_choices()
    assert "farm_synthetic" in TeleoperatorConfig.get_known_choices()
    assert {"farm_synthetic", "farm_replay"} <= set(CameraConfig.get_known_choices())
    assert Path(recorder.lerobot.synthetic.__file__).parent.name == "synthetic"


@pytest.mark.parametrize("break_it", ["old release", "a seam gone"])
def test_a_lerobot_outside_the_range_or_without_a_seam_stops_with_exit_2(
        break_it, monkeypatch, capsys):
    from recorder.lerobot.command import main

    if break_it == "old release":
        monkeypatch.setattr(compat, "version", lambda name: "0.5.0")
    else:
        monkeypatch.delattr(lerobot_record, "init_keyboard_listener")
    assert main(["--robot.type=farm_synthetic", "--dataset.repo_id=x/y"]) == 2
    said = capsys.readouterr().err
    assert "pip install 'robot-encoding-farm[lerobot]'" in said
    assert ("LeRobot 0.5.0 is installed" if break_it == "old release"
            else "init_keyboard_listener") in said
