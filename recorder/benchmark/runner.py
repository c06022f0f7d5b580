"""Running benchmark sessions: real captures, real encodes, each run in a fresh sub-folder."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

from redis.exceptions import RedisError
from rich.console import Console
from rich.progress import Progress

from encoder_worker.broker import redis_client
from encoder_worker.storage import open_storage
from recorder.benchmark import environment
from recorder.benchmark.background import background_load
from recorder.benchmark.portable import portable_location
from recorder.benchmark.report import verdicts
from recorder.benchmark.results import (
    BenchmarkConfig,
    BenchmarkResult,
    from_session,
    result_path,
)
from recorder.benchmark.results_file import save
from recorder.benchmark.settings import BenchmarkSettings
from recorder.capture.cameras import CameraError, CameraSource
from recorder.capture.cameras.synthetic import synthetic_cameras
from recorder.capture.cameras.video import open_camera
from recorder.dataset.retention import raw_bytes, recordings_with_raw
from recorder.farm.client import EncodingFarmClient
from recorder.farm.setup import farm_for
from recorder.progress import progress_display
from recorder.session import RecordingSession
from recorder.settings import RecorderSettings

logger = logging.getLogger(__name__)

Mode = Literal["sync", "async"]

# How long an external farm's workers get to answer the ping that counts them.
PING_TIMEOUT_S = 1.0
DISPLAY_REFRESH_S = 0.5


def run_name(mode: Mode, *, started: float, workers: int) -> str:
    suffix = f"-{workers}w" if mode == "async" else ""
    return f"{mode}-{int(started)}{suffix}"


def session_settings(settings: BenchmarkSettings, mode: Mode, name: str) -> RecorderSettings:
    """The recorder settings of one run: a fresh dataset under output_dir (or storage)."""
    fields = settings.model_dump(include=set(RecorderSettings.model_fields))
    fields.update(async_encoding=mode == "async", wait=True, repo_id="dataset",
                  output_dir=settings.output_dir.resolve() / "runs" / name,
                  cameras=settings.camera_count)
    # On shared storage each run gets its own prefix, so runs never see each other's episodes.
    if settings.storage is not None:
        fields["storage"] = f"{settings.storage.rstrip('/')}/benchmark/{name}"
    if settings.output_storage is not None:
        fields["output_storage"] = f"{settings.output_storage.rstrip('/')}/benchmark/{name}"
    return RecorderSettings(**fields)


def open_cameras(settings: BenchmarkSettings) -> list[CameraSource]:
    """The run's cameras; real sources are opened (and checked) before recording starts.

    Raises:
        CameraError: a source is missing or unreadable.
    """
    if settings.mode == "synthetic":
        return list(synthetic_cameras(settings.camera_count, width=settings.width,
                                      height=settings.height, fps=settings.fps,
                                      seed=settings.seed))
    # A size asked for explicitly is delivered; else each source's own.
    size = {"width", "height"} <= settings.model_fields_set
    cameras: list[CameraSource] = []
    try:
        for index, source in enumerate(settings.camera):
            cameras.append(open_camera(
                source, name=f"cam{index}", width=settings.width if size else None,
                height=settings.height if size else None, fps=settings.fps))
    except CameraError:
        close_cameras(cameras)
        raise
    return cameras


def close_cameras(cameras: Sequence[CameraSource]) -> None:
    for camera in cameras:
        try:
            camera.close()
        except Exception:
            logger.exception("could not close camera %s", camera.name)


def run_once(settings: BenchmarkSettings, mode: Mode, *, console: Console,
             workers: int | None = None, command: str | None = None) -> BenchmarkResult:
    """Record settings.episodes episodes in one mode, wait for every video; the result.

    Args:
        workers: local workers of the zero-config farm; default the settings'.
        command: the command line to keep in the result.

    Raises:
        CameraError: a real source cannot be opened.
        RecorderError: the farm cannot be reached or started.
    """
    if workers is not None:
        settings = settings.model_copy(update={"video_encoding_workers": workers})
    started = time.time()
    name = run_name(mode, started=started, workers=settings.video_encoding_workers)
    run_settings = session_settings(settings, mode, name)
    cameras = open_cameras(settings)
    try:
        with farm_for(run_settings, raw_url=run_settings.raw_storage_url,
                      output_url=run_settings.output_storage_url) as farm, \
                progress_display(console) as progress:
            answering = 0
            if farm is not None:
                answering = len(farm.app.control.ping(timeout=PING_TIMEOUT_S) or [])
            first = cameras[0]
            config = _config(settings, mode, width=first.width, height=first.height,
                             storage=portable_location(run_settings.raw_storage_url,
                                                       base=settings.output_dir))
            env = environment.collect(codec=settings.codec, broker=settings.broker,
                                      async_encoding=mode == "async",
                                      workers_answering=answering)
            run_dir = settings.output_dir.absolute()
            run_dir.mkdir(parents=True, exist_ok=True)
            with _outstanding_display(progress, farm), \
                    background_load(settings.background_load, folder=run_dir,
                                    seconds=settings.episodes * (settings.episode_time
                                                                 + settings.reset_time)):
                session = RecordingSession(run_settings, cameras, farm=farm, progress=progress)
                report = session.run()
    finally:
        close_cameras(cameras)
    # Completion deleted the raw frames of every episode it counted (unless --keep-raw).
    raw = open_storage(report.raw_storage)
    result = from_session(report, config=config, environment=env, output_dir=settings.output_dir,
                          raw_kept=bool(recordings_with_raw(raw)), raw_left_bytes=raw_bytes(raw))
    result.command = command
    return result


def _config(settings: BenchmarkSettings, mode: Mode, *, storage: str, width: int,
            height: int) -> BenchmarkConfig:
    return BenchmarkConfig(
        mode=mode, camera_mode=settings.mode,
        camera_sources=[portable_location(source) for source in settings.camera],
        episodes=settings.episodes, episode_time_s=settings.episode_time,
        reset_time_s=settings.reset_time, fps=settings.fps, cameras=settings.camera_count,
        width=width, height=height, codec=settings.codec, crf=settings.crf, gop=settings.gop,
        preset=settings.preset, pix_fmt=settings.pix_fmt,
        raw_format=settings.raw_pix_fmt_for(width, height, settings.pix_fmt),
        raw_compression=settings.raw_compression,
        segment_frames=settings.segment_frames,
        video_encoding_workers=settings.video_encoding_workers,
        video_encoding_queue_size=settings.video_encoding_queue_size,
        broker=None if settings.broker is None else portable_location(settings.broker),
        storage=storage,
        background_load=settings.background_load, capture_nice=settings.capture_nice,
        share_capture_host=settings.share_capture_host, capture_cpus=settings.capture_cpus,
        encode_window_s=settings.encode_window_s if mode == "async" else 0,
    )


@contextlib.contextmanager
def _outstanding_display(progress: Progress, farm: EncodingFarmClient | None) -> Iterator[None]:
    """Show the farm's backlog beside the session's episode, elapsed and frames display."""
    if farm is None or progress.disable:
        yield
        return
    task = progress.add_task("farm", total=None)
    stop = threading.Event()
    client = redis_client(farm.broker)

    def refresh() -> None:
        # Its own Redis connection: the farm client belongs to the recording thread.
        while not stop.wait(DISPLAY_REFRESH_S):
            try:
                waiting = int(client.llen(farm.queue))
            except RedisError:
                continue
            progress.update(task, description=f"farm: {farm.submitted} jobs sent, "
                                              f"{waiting} waiting for a worker")

    thread = threading.Thread(target=refresh, name="farm-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        client.close()
        progress.remove_task(task)


def run_benchmark(settings: BenchmarkSettings, *, console: Console, command: str | None = None
                  ) -> dict[Mode, tuple[Path, BenchmarkResult]]:
    """Run the settings' modes in turn; mode -> (results file, result).

    Each result is saved as soon as its run ends; after a comparison both files are
    written again with the comparison's verdicts.
    """
    saved: dict[Mode, tuple[Path, BenchmarkResult]] = {}
    for mode in settings.modes():
        result = run_once(settings, mode, console=console, command=command)
        result.verdicts = verdicts(result if mode == "sync" else None,
                                   result if mode == "async" else None)
        path = save(result, unique_path(result_path(settings.output_dir, result)))
        saved[mode] = (path, result)
    if "sync" in saved and "async" in saved:
        (sync_path, sync), (async_path, async_) = saved["sync"], saved["async"]
        both = verdicts(sync, async_)
        sync.verdicts, sync.compared_with = both, async_path.name
        async_.verdicts, async_.compared_with = both, sync_path.name
        save(sync, sync_path)
        save(async_, async_path)
    return saved


def unique_path(path: Path) -> Path:
    """path, or path with -2, -3... when a run of the same second already wrote it."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate
