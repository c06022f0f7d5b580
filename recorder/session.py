"""`recorder record`'s use case: cameras and a robot recorded into a FarmDataset.

The same loop serves the benchmark; both are thin faces over recorder.dataset.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from rich.console import Console
from rich.progress import Progress, TaskID

from encoder_worker.jobs import EncodeResult
from encoder_worker.raw_layout import RAW_ROOT
from encoder_worker.storage import StorageError, open_storage
from recorder.capture.cameras import CameraSource
from recorder.capture.cameras.synthetic import synthetic_cameras
from recorder.capture.record_loop import record_episode
from recorder.capture.robot import SyntheticRobot
from recorder.dataset.complete import Completion
from recorder.dataset.layout import camera_key
from recorder.dataset.report import EpisodeReport
from recorder.dataset.writer import FarmDataset
from recorder.farm.client import EncodingFarmClient
from recorder.farm.setup import farm_for
from recorder.farm.spool_folder import spool_folder, spooled_files
from recorder.progress import progress_display
from recorder.settings import RecorderSettings

logger = logging.getLogger(__name__)


@dataclass
class SessionReport:
    mode: Literal["sync", "async"]
    episodes: list[EpisodeReport]
    results: list[EncodeResult]
    started_at: float  # unix time the first episode started
    recording_done_at: float  # unix time the recorder was free after the last episode
    all_ready_at: float | None  # unix time the last video was verified and published
    raw_storage: str
    output_storage: str
    completion: Completion | None = None  # the dataset after finalize()
    # CPU seconds of the recorder's process (all its threads) from the first episode to
    # the recorder being free: capture, raw writers, commits, submission; inline encodes.
    recorder_cpu_s: float = 0.0
    # unix time finalize() returned with every episode in the dataset (meta/info.json
    # counts them); None when some were left out (not waited for, a failed video).
    dataset_complete_at: float | None = None

    @property
    def total_recording_s(self) -> float:
        return self.recording_done_at - self.started_at

    @property
    def failed(self) -> list[EncodeResult]:
        return [r for r in self.results if not r.ok]


def camera_features(cameras: Sequence[CameraSource]) -> dict[str, dict]:
    """The LeRobot video features of these cameras."""
    return {camera_key(c.name): {"dtype": "video", "shape": [c.height, c.width, 3],
                                 "names": ["height", "width", "channels"]}
            for c in cameras}


class RecordingSession:
    """Records settings.episodes episodes from cameras and a synthetic robot."""

    def __init__(
        self,
        settings: RecorderSettings,
        cameras: Sequence[CameraSource],
        *,
        farm: EncodingFarmClient | None = None,
        progress: Progress | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        if settings.async_encoding and farm is None:
            raise ValueError("async encoding needs a farm client")
        self.settings = settings
        self.cameras = cameras
        self._camera_keys = {camera_key(c.name): c for c in cameras}
        self.farm = farm
        self.progress = progress
        self.stop = stop
        self.robot = SyntheticRobot(dof=settings.robot_dof, fps=settings.fps, seed=settings.seed)

    def run(self) -> SessionReport:
        """Record every episode; returns once raw data is stored (and videos, as settings say).

        Raises:
            SpoolBusy: another recorder uses this storage's upload spool folder.
            DatasetError: the dataset there is of another version, fps or features.
        """
        settings = self.settings
        dataset = FarmDataset(
            fps=settings.fps, features=camera_features(self.cameras) | self.robot.features(),
            robot_type=settings.robot_type, options=settings.dataset_options(),
            encoder=settings.encoder_options(), farm_options=settings.farm_options(),
            farm=self.farm, progress=self.progress)
        try:
            started_at = time.time()
            cpu_started = time.process_time()
            for number in range(settings.episodes):
                interrupted = self._record_one(dataset)
                if interrupted or (self.stop is not None and self.stop.is_set()):
                    break
                if settings.reset_time and number < settings.episodes - 1:
                    time.sleep(settings.reset_time)  # the operator resets the scene
            # Raw data is durable in its storage before the report says where it is; the
            # recorder is busy until then.
            dataset.finish_uploads()
            recording_done_at = time.time()
            recorder_cpu_s = time.process_time() - cpu_started
            completion = dataset.finalize()
            complete_at = time.time() if completion.complete else None
        except BaseException:
            dataset.abort()
            raise
        waited = settings.async_encoding and settings.wait
        all_ready_at = time.time() if waited else (
            recording_done_at if not settings.async_encoding else None)
        return SessionReport(
            mode="async" if settings.async_encoding else "sync", episodes=dataset.episodes,
            results=dataset.results, started_at=started_at,
            recording_done_at=recording_done_at, all_ready_at=all_ready_at,
            raw_storage=dataset.raw_storage.url, output_storage=dataset.storage.url,
            completion=completion, recorder_cpu_s=recorder_cpu_s, dataset_complete_at=complete_at)

    def _record_one(self, dataset: FarmDataset) -> bool:
        """Record and save one episode; True when it was interrupted (not saved)."""
        settings = self.settings
        task = None
        if self.progress is not None:
            task = self.progress.add_task("episode",
                                          total=round(settings.episode_time * settings.fps))
        try:
            capture = record_episode(self._camera_keys, dataset.add_frame, fps=settings.fps,
                                     duration_s=settings.episode_time, robot=self.robot.read,
                                     task=settings.task, stop=self.stop,
                                     on_frame=self._frame_callback(task))
        finally:
            if self.progress is not None and task is not None:
                self.progress.remove_task(task)
        capture.writer_waits = dataset.episode_writer_waits
        if capture.interrupted:
            # Kept as raw frames marked interrupted; never a part of the dataset.
            dataset.clear_episode_buffer()
            return True
        report = dataset.save_episode()
        report.capture = capture
        logger.info("recording %d: %d frames per camera, %d late", report.recording,
                    capture.frames, capture.late_frames)
        return False

    def _frame_callback(self, task: TaskID | None) -> Callable[[int], None] | None:
        progress = self.progress
        if progress is None or task is None:
            return None
        return lambda frames: progress.update(task, completed=frames)


def record(settings: RecorderSettings, *, console: Console,
           cameras: Sequence[CameraSource] | None = None) -> SessionReport:
    """Run a whole recording session as the settings say; returns its report.

    Args:
        cameras: the sources to record; default settings.cameras synthetic cameras.

    Raises:
        RecorderError: the farm cannot be reached or started.
    """
    if cameras is None:
        cameras = synthetic_cameras(settings.cameras, width=settings.width,
                                    height=settings.height, fps=settings.fps,
                                    seed=settings.seed)
    with farm_for(settings, raw_url=settings.raw_storage_url,
                  output_url=settings.output_storage_url) as farm, \
            progress_display(console) as progress:
        session = RecordingSession(settings, cameras, farm=farm, progress=progress)
        return session.run()


def pending_uploads_note(settings: RecorderSettings) -> str | None:
    """Where raw files not uploaded yet are, for the recorder's exit message; None: none."""
    try:
        storage = open_storage(settings.raw_storage_url)
    except (ValueError, StorageError):
        return None
    if storage.local_path(RAW_ROOT) is not None:
        return None
    folder = spool_folder(settings.spool_root, storage.url)
    files = spooled_files(folder)
    if not files:
        return None
    size = sum(path.stat().st_size for path in files if path.exists())
    return (f"{len(files)} raw files ({size / 1e6:.0f} MB) are not uploaded to {storage.url} "
            f"yet; they are kept in {folder}/keys, laid out like their keys. The next "
            f"`recorder record` with this --storage and --spool-dir uploads them first")
