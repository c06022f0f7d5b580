"""`recorder benchmark lerobot-record`: plain lerobot-record against `recorder lerobot-record`,
LeRobot's own record loop both times, on the synthetic robot, with the same flags.

Both run in this process, one after the other, LeRobot unchanged. Its record script looks
up `record_loop` and `precise_sleep` in its module when it calls them, so they are wrapped
for the runs (and put back):

- record_loop called with a dataset is an episode (without one, the reset period);
- its loop sleeps max(1 / fps - work, 0) after each cycle: a sleep of 0 is a late cycle,
  whose work took a whole period; the time from the previous sleep's end to this one's
  request is the cycle's work;
- save_episode, of LeRobot's LeRobotDataset or of the farm's FarmLeRobotDataset, is timed:
  how long each episode end held the loop.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from recorder.benchmark import environment
from recorder.benchmark.lerobot_results import (
    LeRobotRecordComparison,
    RecordCommand,
    RecordConfig,
    RecordEpisode,
    RecordRun,
    result_path,
)
from recorder.benchmark.portable import portable_command, portable_location
from recorder.benchmark.results_file import save
from recorder.benchmark.runner import unique_path
from recorder.benchmark.settings import BenchmarkSettings

logger = logging.getLogger(__name__)

REPO_ID = "benchmark/lerobot_record"
# The synthetic robot and teleoperator, found as a LeRobot user finds a plugin.
PLUGIN = "--robot.discover_packages_path=recorder.lerobot.synthetic"


class LoopWatch:
    """What LeRobot's record_loop did, cycle by cycle, episode by episode."""

    def __init__(self) -> None:
        self.episodes: list[RecordEpisode] = []
        self.last_frame_at: float | None = None
        self._episode: RecordEpisode | None = None
        self._cycle_started = 0.0

    def record_loop(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def watched(*args: Any, **kwargs: Any) -> Any:
            if kwargs.get("dataset") is None:
                return original(*args, **kwargs)  # the reset period: nothing is recorded
            episode = self._episode = RecordEpisode(episode=len(self.episodes), cycles=0,
                                                    late_cycles=[], work_ms=[])
            self.episodes.append(episode)
            self._cycle_started = started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                episode.loop_s = time.perf_counter() - started
                self._episode = None
                self.last_frame_at = time.time()
        return watched

    def precise_sleep(self, original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def watched(seconds: float, *args: Any, **kwargs: Any) -> Any:
            episode = self._episode
            if episode is not None:
                episode.work_ms.append(1000 * (time.perf_counter() - self._cycle_started))
                if seconds <= 0:
                    episode.late_cycles.append(episode.cycles)
                episode.cycles += 1
            try:
                return original(seconds, *args, **kwargs)
            finally:
                self._cycle_started = time.perf_counter()
        return watched


@contextlib.contextmanager
def replaced(owner: Any, name: str, make: Callable[[Any], Any]) -> Iterator[None]:
    """owner.name replaced by make(the original) while the block runs."""
    original = getattr(owner, name)
    setattr(owner, name, make(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def timed(into: list[float]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A method wrapper that appends each call's seconds to into."""
    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(original)
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                into.append(time.perf_counter() - started)
        return timed_call
    return wrap


def cameras_flag(settings: BenchmarkSettings, *, portable: bool = False) -> str:
    """--robot.cameras for the synthetic robot: generated frames, or the --camera files
    (portable: each file by its name, as a results file keeps it)."""
    size = f"width: {settings.width}, height: {settings.height}, fps: {settings.fps}"
    if settings.mode == "real":
        cameras = [f"cam{i}: {{type: farm_replay, path: "
                   f"{portable_location(source) if portable else source}, {size}}}"
                   for i, source in enumerate(settings.camera)]
    else:
        cameras = [f"cam{i}: {{type: farm_synthetic, seed: {settings.seed + i}, {size}}}"
                   for i in range(settings.cameras)]
    return "--robot.cameras={" + ", ".join(cameras) + "}"


def record_flags(settings: BenchmarkSettings, root: Path, *, portable: bool = False
                 ) -> list[str]:
    """A LeRobot user's lerobot-record flags for these settings: the same for both runs."""
    return [PLUGIN, "--robot.type=farm_synthetic", f"--robot.num_joints={settings.robot_dof}",
            cameras_flag(settings, portable=portable), "--teleop.type=farm_synthetic",
            f"--teleop.num_joints={settings.robot_dof}", f"--dataset.repo_id={REPO_ID}",
            f"--dataset.root={root}", f"--dataset.single_task={settings.task}",
            f"--dataset.fps={settings.fps}", f"--dataset.num_episodes={settings.episodes}",
            f"--dataset.episode_time_s={settings.episode_time:g}",
            f"--dataset.reset_time_s={settings.reset_time:g}", "--dataset.push_to_hub=false",
            "--play_sounds=false", "--display_data=false"]


def farm_flags(settings: BenchmarkSettings) -> list[str]:
    """recorder lerobot-record's own flags: the farm the benchmark's settings name."""
    flags = ["--video-encoding-workers", str(settings.video_encoding_workers)]
    return flags + (["--broker", settings.broker] if settings.broker else [])


def run_plain(lerobot_record: ModuleType, argv: list[str]) -> int:
    """lerobot-record itself, as its console script runs it; its exit code."""
    saved = sys.argv
    sys.argv = ["lerobot-record", *argv]
    try:
        lerobot_record.main()
    except SystemExit as exc:  # draccus refusing a flag
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved
    return 0


def run_farm(argv: list[str], settings: BenchmarkSettings) -> int:
    from recorder.lerobot.command import main

    return main([*farm_flags(settings), *argv])


def measure(command: RecordCommand, lerobot_record: ModuleType, settings: BenchmarkSettings,
            root: Path) -> RecordRun:
    """One run of command, LeRobot's loop and save_episode watched."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from recorder.lerobot.dataset import FarmLeRobotDataset

    argv = record_flags(settings, root)
    watch = LoopWatch()
    saves: list[float] = []
    dataset_class = LeRobotDataset if command == "lerobot-record" else FarmLeRobotDataset
    error = None
    with replaced(lerobot_record, "record_loop", watch.record_loop), \
            replaced(lerobot_record, "precise_sleep", watch.precise_sleep), \
            replaced(dataset_class, "save_episode", timed(saves)):
        try:
            code = (run_plain(lerobot_record, argv) if command == "lerobot-record"
                    else run_farm(argv, settings))
        except Exception as exc:  # the robot, a camera, LeRobot: said, and the next run goes on
            logger.exception("%s failed", command)
            code, error = 1, f"{type(exc).__name__}: {exc}"
    kept = portable_command(record_flags(settings, root, portable=True))
    return RecordRun(command=command, argv=kept, exit_code=code, error=error,
                     dataset=portable_location(str(root), base=settings.output_dir),
                     episodes=watch.episodes, save_s=saves, last_frame_at=watch.last_frame_at,
                     complete_at=time.time())


def compare_record(settings: BenchmarkSettings, lerobot_record: ModuleType, *,
                   lerobot_version: str, command: str | None = None
                   ) -> tuple[Path, LeRobotRecordComparison]:
    """Plain lerobot-record, then recorder lerobot-record; the results file and result."""
    started = time.time()
    result = LeRobotRecordComparison(
        command=command, started_at=started, lerobot=lerobot_version,
        environment=environment.collect(codec=settings.codec, broker=settings.broker,
                                        async_encoding=True),
        config=RecordConfig(
            camera_mode=settings.mode,
            camera_sources=[portable_location(source) for source in settings.camera],
            cameras=settings.camera_count, width=settings.width, height=settings.height,
            fps=settings.fps, episodes=settings.episodes, episode_time_s=settings.episode_time,
            reset_time_s=settings.reset_time,
            video_encoding_workers=settings.video_encoding_workers))
    path = unique_path(result_path(settings.output_dir, result))
    commands: tuple[RecordCommand, ...] = ("lerobot-record", "recorder lerobot-record")
    for name, which in zip(("lerobot", "farm"), commands, strict=True):
        root = settings.output_dir.resolve() / "runs" / f"lerobot-record-{int(started)}-{name}"
        logger.info("recording with %s", which)
        result.runs.append(measure(which, lerobot_record, settings, root / "dataset"))
        save(result, path)
    return path, result
