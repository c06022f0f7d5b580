"""A recording session: episodes captured raw, then encoded inline or sent to the farm."""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
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
from recorder.upload_spool import UploadSpool

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


def next_episode_index(raw: Storage, output: Storage, *, output_template: str) -> int:
    """The first episode index after every one with raw frames or a video in the dataset.

    Videos count too: raw data is often deleted once encoded, and a new episode must
    never take the number (and the video path) of an old one.
    """
    indices = [int(m.group(1)) for key in raw.list_keys("raw")
               if key.endswith("manifest.json") and (m := _EPISODE_DIR.match(key))]
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
        self._spool: Path | None = None  # made when the first segment must be uploaded
        self._uploads: UploadSpool | None = None  # for raw storage that is not a local folder

    def run(self) -> SessionReport:
        settings = self.settings
        first = next_episode_index(self.raw_storage, self.output_storage,
                                   output_template=self.options.output_template)
        episodes: list[EpisodeReport] = []
        results: list[EncodeResult] = []
        started_at = time.time()
        try:
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

    def _sink(self, prefix: str) -> SegmentSink:
        if self.raw_storage.local_dir(prefix) is not None:
            return DirectSink(self.raw_storage, prefix)
        # Remote storage: upload in the background, so the record loop never waits for
        # the network. Inline encoding reads the episode back at once: its manifest must
        # be stored before the writer's close() returns.
        if self._uploads is None:
            self._spool = Path(tempfile.mkdtemp(prefix="recorder-spool-"))
            self._uploads = UploadSpool(self.raw_storage, self._spool / "upload",
                                        max_bytes=self.settings.spool_max_mb * 1_000_000)
        return self._uploads.sink(prefix, durable_manifest=not self.settings.async_encoding)

    def _finish_uploads(self, *, timeout_s: float | None = None) -> None:
        if self._uploads is not None and self._uploads.close(timeout_s):
            # Everything is confirmed stored; what is left of the spool is empty folders.
            self._uploads = None
            if self._spool is not None:
                shutil.rmtree(self._spool, ignore_errors=True)
                self._spool = None

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
