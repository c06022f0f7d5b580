"""A recording session: episodes captured raw, then encoded inline or sent to the farm."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rich.progress import Progress, TaskID

from encoder_worker.encode import encode_job
from encoder_worker.jobs import EncodeJob, EncodeResult, EncoderOptions
from encoder_worker.raw_episode import (
    DirectSink,
    Manifest,
    RawEpisodeWriter,
    SegmentSink,
    raw_prefix,
)
from encoder_worker.storage import Storage, StorageError, open_storage
from recorder.cameras import CameraSource
from recorder.farm_client import EncodingFarmClient
from recorder.raw_writer import CameraWriter
from recorder.record_loop import CaptureStats, record_episode
from recorder.settings import RecorderSettings
from recorder.upload_spool import UploadSpool, spool_folder, spooled_files

logger = logging.getLogger(__name__)

_EPISODE_DIR = re.compile(r"raw/episode_(\d{6})/")
_EPISODE_VIDEO = re.compile(r"episode_(\d{6})\.mp4$")
# After Ctrl-C, how long the recorder still tries to upload what is in its spool.
INTERRUPT_UPLOAD_GRACE_S = 10.0


@dataclass
class EpisodeReport:
    episode: int
    capture: CaptureStats
    frames_recorded: dict[str, int]  # camera -> frames in its manifest
    finalize_s: float = 0.0  # last segments and manifests committed
    submission_s: float = 0.0  # async: sending jobs, waiting for queue room included
    inline_encode_s: float = 0.0  # sync: the recorder blocked on encoding
    job_ids: list[str] = field(default_factory=list)


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

    @property
    def total_recording_s(self) -> float:
        return self.recording_done_at - self.started_at

    @property
    def failed(self) -> list[EncodeResult]:
        return [r for r in self.results if not r.ok]


def next_episode_index(raw: Storage, output: Storage, *, output_template: str,
                       spooled: Iterable[str] = ()) -> int:
    """The first episode index after every one with raw frames or a video in the dataset.

    Videos count too: raw data is often deleted once encoded, and a new episode must
    never take the number (and the video path) of an old one.

    Args:
        spooled: keys of raw files still in the upload spool (an earlier run's, not yet
            uploaded). An episode with any file there is taken, manifest or not: a new
            episode of that number would overwrite its files or collide with its uploads.
    """
    indices = [int(m.group(1)) for key in raw.list_keys("raw")
               if key.endswith("manifest.json") and (m := _EPISODE_DIR.match(key))]
    indices += [int(m.group(1)) for key in spooled if (m := _EPISODE_DIR.match(key))]
    video_prefix = output_template.split("{", 1)[0].rsplit("/", 1)[0]
    indices += [int(m.group(1)) for key in output.list_keys(video_prefix)
                if (m := _EPISODE_VIDEO.search(key))]
    return max(indices, default=-1) + 1


def episode_job(episode: int, camera: str, *, run_id: str, raw: Storage, output: Storage,
                options: EncoderOptions) -> EncodeJob:
    """The EncodeJob of one committed (episode, camera)."""
    return EncodeJob(
        job_id=f"{run_id}-ep{episode:06d}-{camera}", episode=episode, camera=camera,
        raw_storage=raw.url, raw_prefix=raw_prefix(episode=episode, camera=camera),
        output_storage=output.url, output_key=options.output_key(episode=episode, camera=camera),
        options=options,
    )


def spool_folder_for(settings: RecorderSettings, storage_url: str) -> Path:
    """The upload spool folder of storage_url: under --spool-dir, else the output dir."""
    # Absolute: messages that name it must still be right after a change of directory.
    spool_dir = settings.spool_dir or settings.output_dir / ".upload-spool"
    return spool_folder(spool_dir.absolute(), storage_url)


def pending_uploads_note(settings: RecorderSettings) -> str | None:
    """Where raw files not uploaded yet are, for the recorder's exit message; None: none."""
    try:
        storage = open_storage(settings.raw_storage_url)
    except (ValueError, StorageError):
        return None
    if storage.local_dir("raw") is not None:
        return None
    folder = spool_folder_for(settings, storage.url)
    files = spooled_files(folder)
    if not files:
        return None
    size = sum(path.stat().st_size for path in files if path.exists())
    return (f"{len(files)} raw files ({size / 1e6:.0f} MB) are not uploaded to {storage.url} "
            f"yet; they are kept in {folder}/keys, laid out like their keys. The next "
            f"`recorder record` with this --storage and --spool-dir uploads them first")


def finish_writers(writers: Sequence[CameraWriter], *, interrupted: bool) -> list[Manifest]:
    """Commit every camera's episode, also when one of them fails; then raise its error."""
    manifests: list[Manifest] = []
    errors: list[BaseException] = []
    for writer in writers:
        try:
            manifests.append(writer.finish(interrupted=interrupted))
        except BaseException as exc:  # Ctrl-C included: the other cameras still commit
            logger.error("camera %s: %s", writer.writer.camera, exc)
            errors.append(exc)
    if errors:
        raise errors[0]
    return manifests


def encode_inline(job: EncodeJob) -> EncodeResult:
    """encode_job in the recorder's process; storage errors become a failed result."""
    try:
        return encode_job(job)
    except (StorageError, OSError) as exc:
        # The recording goes on; this episode's raw frames stay for a later encode.
        return EncodeResult.failed(job, f"{type(exc).__name__}: {exc}")


class RecordingSession:
    """Records settings.episodes episodes from cameras, encoding each as settings say."""

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
        self.farm = farm
        self.progress = progress
        self.stop = stop
        self.raw_storage = open_storage(settings.raw_storage_url)
        self.output_storage = open_storage(settings.output_storage_url)
        self.options = settings.encoder_options()
        self.run_id = uuid.uuid4().hex[:8]
        self._uploads: UploadSpool | None = None  # for raw storage that is not a local folder

    def run(self) -> SessionReport:
        """Record every episode; returns once raw data is stored (and videos, as settings say).

        Raises:
            SpoolBusy: another recorder uses this storage's upload spool folder.
        """
        settings = self.settings
        spooled = self._open_spool()
        episodes: list[EpisodeReport] = []
        results: list[EncodeResult] = []
        try:
            first = next_episode_index(self.raw_storage, self.output_storage,
                                       output_template=self.options.output_template,
                                       spooled=spooled)
            started_at = time.time()
            for number in range(settings.episodes):
                episode = first + number
                report, inline_results = self._record_one(episode)
                episodes.append(report)
                results.extend(inline_results)
                if self.stop is not None and self.stop.is_set():
                    break
                if settings.reset_time and number < settings.episodes - 1:
                    time.sleep(settings.reset_time)  # the operator resets the scene
        except BaseException:
            self._finish_uploads(timeout_s=INTERRUPT_UPLOAD_GRACE_S)
            raise
        # Raw data is durable in its storage before the report says where it is; the
        # recorder is busy until then.
        self._finish_uploads()
        recording_done_at = time.time()
        all_ready_at: float | None = recording_done_at if not settings.async_encoding else None
        if self.farm is not None and settings.async_encoding:
            if settings.wait:
                self._wait_for_farm()
                all_ready_at = time.time()
            results = list(self.farm.results)
        return SessionReport(
            mode="async" if settings.async_encoding else "sync", episodes=episodes,
            results=results, started_at=started_at, recording_done_at=recording_done_at,
            all_ready_at=all_ready_at, raw_storage=self.raw_storage.url,
            output_storage=self.output_storage.url,
        )

    def _record_one(self, episode: int) -> tuple[EpisodeReport, list[EncodeResult]]:
        settings = self.settings
        writers = [CameraWriter(self._raw_writer(episode, camera),
                                queue_frames=settings.writer_queue_frames)
                   for camera in self.cameras]
        task = None
        if self.progress is not None:
            task = self.progress.add_task(f"episode {episode}",
                                          total=round(settings.episode_time * settings.fps))
        try:
            capture = record_episode(self.cameras, writers, fps=settings.fps,
                                     duration_s=settings.episode_time, stop=self.stop,
                                     on_frame=self._frame_callback(task))
        except BaseException:
            # Keep every frame captured so far, marked as an interrupted episode.
            with contextlib.suppress(Exception):
                finish_writers(writers, interrupted=True)
            raise
        finally:
            if self.progress is not None and task is not None:
                self.progress.remove_task(task)
        t0 = time.perf_counter()
        manifests = finish_writers(writers, interrupted=capture.interrupted)
        report = EpisodeReport(episode=episode, capture=capture,
                               frames_recorded={m.camera: m.frame_count for m in manifests},
                               finalize_s=time.perf_counter() - t0)
        logger.info("episode %d: %d frames per camera, %d late", episode, capture.frames,
                    capture.late_frames)
        if capture.interrupted:
            return report, []
        jobs = [self._job(m) for m in manifests]
        report.job_ids = [job.job_id for job in jobs]
        t0 = time.perf_counter()
        if settings.async_encoding:
            assert self.farm is not None
            for job in jobs:
                self.farm.submit(job)
            report.submission_s = time.perf_counter() - t0
            return report, []
        results = [encode_inline(job) for job in jobs]
        report.inline_encode_s = time.perf_counter() - t0
        for result in results:
            if not result.ok:
                logger.error("episode %d camera %s: %s", episode, result.camera, result.error)
        return report, results

    def _frame_callback(self, task: TaskID | None) -> Callable[[int], None] | None:
        progress = self.progress
        if progress is None or task is None:
            return None
        return lambda frames: progress.update(task, completed=frames)

    def _raw_writer(self, episode: int, camera: CameraSource) -> RawEpisodeWriter:
        prefix = raw_prefix(episode=episode, camera=camera.name)
        return RawEpisodeWriter(
            self._sink(prefix), episode=episode, camera=camera.name, width=camera.width,
            height=camera.height, fps=self.settings.fps,
            segment_frames=self.settings.segment_frames,
        )

    def _open_spool(self) -> list[str]:
        """Lock the raw storage's upload spool and queue what earlier runs left in it.

        Returns the keys found in the spool: their episode numbers are taken. Nothing to
        do for a local folder, which the writers write in place.

        The leftovers upload in the background, queued ahead of this run's files, rather
        than before recording starts: waiting for them would hold the robot for as long as
        the backlog of a long outage takes to upload, or for ever if the network drops
        again, and recording must go on into the spool then. The one thing the wait would
        have bought, episode numbers that cannot collide, comes from counting the spooled
        episodes as taken in next_episode_index. The session still ends only once they are
        uploaded too.

        Raises:
            SpoolBusy: another recorder holds the spool folder's lock.
        """
        if self.raw_storage.local_dir("raw") is not None:
            return []
        folder = spool_folder_for(self.settings, self.raw_storage.url)
        self._uploads = UploadSpool(self.raw_storage, folder,
                                    max_bytes=self.settings.spool_max_mb * 1_000_000)
        try:
            return self._uploads.resume().keys
        except BaseException:
            self._finish_uploads(timeout_s=0)
            raise

    def _sink(self, prefix: str) -> SegmentSink:
        if self.raw_storage.local_dir(prefix) is not None:
            return DirectSink(self.raw_storage, prefix)
        # Remote storage: upload in the background, so the record loop never waits for
        # the network. Inline encoding reads the episode back at once: its manifest must
        # be stored before the writer's close() returns.
        assert self._uploads is not None, "run() opens the spool first"
        return self._uploads.sink(prefix, durable_manifest=not self.settings.async_encoding)

    def _finish_uploads(self, *, timeout_s: float | None = None) -> None:
        # Once everything is confirmed stored, close() also unlocks the spool folder.
        if self._uploads is not None and self._uploads.close(timeout_s):
            self._uploads = None

    def _job(self, manifest: Manifest) -> EncodeJob:
        return episode_job(manifest.episode, manifest.camera, run_id=self.run_id,
                           raw=self.raw_storage, output=self.output_storage, options=self.options)

    def _wait_for_farm(self) -> None:
        assert self.farm is not None
        task = None
        if self.progress is not None:
            task = self.progress.add_task("encoding on the farm", total=self.farm.submitted,
                                          completed=len(self.farm.results))

        def advance(_: EncodeResult) -> None:
            if self.progress is not None and task is not None:
                self.progress.advance(task)

        self.farm.wait(on_result=advance)
