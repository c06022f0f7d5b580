"""`recorder benchmark lerobot`: the same loop and the same frames through LeRobot's own
dataset and through the farm, one after the other (issue 18).

    lerobot_inline     LeRobotDataset.create(..., image_writer_threads=4 * cameras), as
                       lerobot-record creates it: frames to PNG files in threads, and
                       save_episode() encodes every camera (a process each) before it returns
    lerobot_streaming  the same with streaming_encoding=True (encoder_queue_maxsize 30): a
                       thread per camera encodes as frames come, and a frame that finds its
                       queue full for 0.1 s is dropped
    farm               FarmDataset on the zero-config farm (or --broker's)

Each records settings.episodes episodes with `recorder record`'s fixed-rate loop
(recorder/capture/record_loop.py) from fresh cameras (synthetic ones of the same seed, or
the --camera sources from their start) and the same synthetic robot. Afterwards each
dataset's videos are decoded and every episode's frames counted against its rows.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from recorder.benchmark import environment
from recorder.benchmark.dataset_frames import video_frames
from recorder.benchmark.lerobot_results import (
    ORDER,
    VARIANTS,
    ComparedEpisode,
    ComparedRun,
    ComparisonConfig,
    ComparisonFailed,
    LeRobotComparison,
    Variant,
    result_path,
)
from recorder.benchmark.portable import portable_location
from recorder.benchmark.results_file import save
from recorder.benchmark.runner import close_cameras, open_cameras, session_settings, unique_path
from recorder.benchmark.settings import BenchmarkSettings
from recorder.capture.cameras import CameraError, CameraSource
from recorder.capture.record_loop import CaptureStats, record_episode
from recorder.capture.robot import SyntheticRobot
from recorder.dataset.layout import camera_key, camera_name
from recorder.dataset.writer import FarmDataset
from recorder.farm.setup import RecorderError, farm_for
from recorder.session import camera_features

logger = logging.getLogger(__name__)

# What lerobot-record passes: 4 image-writer threads per camera, LeRobot's queue default.
IMAGE_WRITER_THREADS_PER_CAMERA = 4
ENCODER_QUEUE_MAXSIZE = 30
REPO_ID = "benchmark/lerobot_compare"
# The farm's encoder names that LeRobot knows by other names (lerobot/configs/video.py).
LEROBOT_VCODEC = {"libx264": "h264", "libx265": "hevc"}


class Recording(Protocol):
    """What the loop and the episode ends use of a dataset: LeRobot's API."""

    def add_frame(self, frame: dict[str, Any]) -> None: ...

    def save_episode(self) -> object: ...

    def finalize(self) -> object: ...


def children_cpu_s() -> float:
    """CPU seconds of this process's children that ended and were waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rgb_encoder(settings: BenchmarkSettings) -> Any:
    """The farm's encoder settings as LeRobot's RGBEncoderConfig: all three encode alike."""
    from lerobot.configs.video import RGBEncoderConfig

    preset: int | str | None = settings.preset
    if isinstance(preset, str) and preset.lstrip("-").isdigit():
        preset = int(preset)
    return RGBEncoderConfig(vcodec=LEROBOT_VCODEC.get(settings.codec, settings.codec),
                            pix_fmt=settings.pix_fmt, g=settings.gop, crf=settings.crf,
                            preset=preset)


@contextlib.contextmanager
def lerobot_dataset(variant: Variant, root: Path, *, fps: int, features: dict[str, dict],
                    settings: BenchmarkSettings) -> Iterator[Recording]:
    """LeRobot's own LeRobotDataset, created as lerobot-record creates it."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset  # checked by check_lerobot

    cameras = sum(feature["dtype"] == "video" for feature in features.values())
    yield LeRobotDataset.create(
        REPO_ID, fps, features, root=root, robot_type=settings.robot_type, use_videos=True,
        image_writer_threads=IMAGE_WRITER_THREADS_PER_CAMERA * cameras,
        rgb_encoder=rgb_encoder(settings), video_backend="pyav",
        streaming_encoding=variant == "lerobot_streaming",
        encoder_queue_maxsize=ENCODER_QUEUE_MAXSIZE)


@contextlib.contextmanager
def farm_dataset(settings: BenchmarkSettings, name: str, *, fps: int,
                 features: dict[str, dict]) -> Iterator[Recording]:
    """A FarmDataset on the farm the settings name (the zero-config one by default)."""
    run = session_settings(settings, "async", name)
    with farm_for(run, raw_url=run.raw_storage_url, output_url=run.output_storage_url) as farm:
        dataset = FarmDataset(fps=fps, features=features, robot_type=settings.robot_type,
                              options=run.dataset_options(), encoder=run.encoder_options(),
                              farm_options=run.farm_options(), farm=farm)
        try:
            yield dataset
        except BaseException:
            dataset.abort()
            raise


def record_variant(dataset: Recording, cameras: Sequence[CameraSource], *,
                   settings: BenchmarkSettings) -> tuple[list[CaptureStats], list[float], float,
                                                         float]:
    """Record the episodes into dataset and finalize it.

    Returns:
        each episode's capture, each save_episode()'s seconds, the process's CPU seconds
        from the first frame to the dataset complete, and the unix time it was complete.
    """
    robot = SyntheticRobot(dof=settings.robot_dof, fps=settings.fps, seed=settings.seed)
    keyed = {camera_key(camera.name): camera for camera in cameras}
    captures, saves = [], []
    cpu_started = time.process_time()
    for number in range(settings.episodes):
        captures.append(record_episode(keyed, dataset.add_frame, fps=settings.fps,
                                       duration_s=settings.episode_time, robot=robot.read,
                                       task=settings.task))
        started = time.perf_counter()
        dataset.save_episode()
        saves.append(time.perf_counter() - started)
        if settings.reset_time and number < settings.episodes - 1:
            time.sleep(settings.reset_time)  # the operator resets the scene
    dataset.finalize()
    return captures, saves, time.process_time() - cpu_started, time.time()


def run_variant(variant: Variant, settings: BenchmarkSettings, *, name: str
                ) -> tuple[ComparedRun, Path]:
    """One variant, from fresh cameras to a finalized dataset; (its run, its dataset root).

    The frames in its videos are counted later (count_video_frames), once every variant
    has recorded: decoding them would load the machine between the runs.
    """
    cameras = open_cameras(settings)
    try:
        features = camera_features(cameras) | SyntheticRobot(dof=settings.robot_dof).features()
        root = session_settings(settings, "async", name).dataset_root
        children = children_cpu_s()
        opened = (farm_dataset(settings, name, fps=settings.fps, features=features)
                  if variant == "farm" else
                  lerobot_dataset(variant, root, fps=settings.fps, features=features,
                                  settings=settings))
        with opened as dataset:
            captures, saves, cpu_s, done_at = record_variant(dataset, cameras, settings=settings)
            complete = _complete(dataset, done_at)
        children = children_cpu_s() - children  # the farm's workers, stopped by now
    finally:
        close_cameras(cameras)
    episodes = [ComparedEpisode(
        episode=number, frames=c.frames, rows=0, late_slots=list(c.late_slots),
        overrun_slots=c.overrun_slots, busy_ms_median=c.busy_ms(0.5),
        busy_ms_p99=c.busy_ms(0.99), read_ms_median=c.read_ms(0.5), capture_s=c.capture_s,
        save_s=save_s)
        for number, (c, save_s) in enumerate(zip(captures, saves, strict=True))]
    run = ComparedRun(
        variant=variant, dataset=portable_location(str(root), base=settings.output_dir),
        started_at=captures[0].started_at,
        last_frame_at=captures[-1].started_at + captures[-1].capture_s, complete_at=complete,
        process_cpu_s=cpu_s, children_cpu_s=children,
        cameras=[camera.name for camera in cameras],
        capture_time_s=sum(c.frames for c in captures) / settings.fps, episodes=episodes)
    return run, root


def _complete(dataset: Recording, done_at: float) -> float | None:
    """When the dataset was complete: a FarmDataset can finish with episodes left out."""
    if isinstance(dataset, FarmDataset) and not (dataset.completion and
                                                 dataset.completion.complete):
        logger.warning("the farm's dataset is not complete: %s", dataset.waiting_note())
        return None
    return done_at


def count_video_frames(run: ComparedRun, root: Path) -> None:
    """Fill in each episode's rows and the frames its cameras' videos hold."""
    found = video_frames(root)
    # Episodes join a dataset in recording order; one left out leaves the ones after it out.
    for episode, frames in zip(run.episodes, found, strict=False):
        episode.rows = frames.rows
        episode.frames_in_videos = {camera_name(key): count
                                    for key, count in frames.videos.items()}


def compare(settings: BenchmarkSettings, *, lerobot_version: str, command: str | None = None,
            variants: Sequence[Variant] = ORDER) -> tuple[Path, LeRobotComparison]:
    """Record with each variant in turn; the results file (saved after each run) and result.

    Raises:
        CameraError: a --camera source cannot be opened.
        RecorderError: the farm cannot be reached or started.
        ComparisonFailed: a run raised anything else (LeRobot, say).
    """
    started = time.time()
    first = open_cameras(settings)  # checked before anything is recorded; sizes known
    close_cameras(first)
    result = LeRobotComparison(
        command=command, started_at=started, lerobot=lerobot_version,
        environment=environment.collect(codec=settings.codec, broker=settings.broker,
                                        async_encoding=True),
        config=_config(settings, width=first[0].width, height=first[0].height))
    path = unique_path(result_path(settings.output_dir, result))
    roots = []
    for variant in variants:
        logger.info("recording with %s", VARIANTS[variant])
        try:
            run, root = run_variant(variant, settings, name=f"lerobot-{int(started)}-{variant}")
        except (CameraError, RecorderError):
            raise  # said as they are
        except Exception as exc:
            logger.debug("%s failed", variant, exc_info=True)
            raise ComparisonFailed(
                f"{VARIANTS[variant]} failed: {type(exc).__name__}: {exc}"
                + (f"; the runs before it are in {path}" if result.runs else "")) from exc
        result.runs.append(run)
        roots.append(root)
        save(result, path)
    for run, root in zip(result.runs, roots, strict=True):
        count_video_frames(run, root)
    save(result, path)
    return path, result


def _config(settings: BenchmarkSettings, *, width: int, height: int) -> ComparisonConfig:
    return ComparisonConfig(
        camera_mode=settings.mode,
        camera_sources=[portable_location(source) for source in settings.camera],
        cameras=settings.camera_count, width=width, height=height, fps=settings.fps,
        episodes=settings.episodes, episode_time_s=settings.episode_time,
        reset_time_s=settings.reset_time, codec=settings.codec, crf=settings.crf,
        gop=settings.gop, preset=settings.preset, pix_fmt=settings.pix_fmt,
        image_writer_threads=IMAGE_WRITER_THREADS_PER_CAMERA * settings.camera_count,
        encoder_queue_maxsize=ENCODER_QUEUE_MAXSIZE,
        video_encoding_workers=settings.video_encoding_workers,
        broker=None if settings.broker is None else portable_location(settings.broker),
        capture_nice=settings.capture_nice)
