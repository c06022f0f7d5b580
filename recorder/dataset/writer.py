"""FarmDataset: LeRobot's recording API (add_frame, save_episode, finalize) over the farm.

    dataset = FarmDataset.create("me/pick_cube", fps=30, features=FEATURES,
                                 robot_type="so100", async_encoding=True)
    for _ in range(episodes):
        for _ in range(frames):
            dataset.add_frame({"observation.images.front": rgb, "observation.state": state,
                               "action": action, "task": "pick the cube"})
        dataset.save_episode()   # returns once raw frames and rows are committed, jobs sent
    dataset.finalize()           # waits for the videos, writes the LeRobot metadata

Camera images go to one background writer per camera (raw segments, manifest last);
the other features become the episode's data rows. save_episode() commits the rows and
the episode record beside the raw frames (recorder/dataset/staging.py), then sends one
encode job per camera (async) or encodes inline (sync). finalize() waits for the farm
and completes the dataset (recorder/dataset/complete.py): an episode joins the LeRobot
metadata once all of its videos are published.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
from rich.progress import Progress

from encoder_worker.jobs import EncodeJob, EncodeResult, encode_time_limit_s
from encoder_worker.raw_episode import DirectSink, Manifest, RawEpisodeWriter
from encoder_worker.raw_layout import (
    RAW_ROOT,
    raw_prefix,
    record_key,
    recording_of,
    recording_of_record,
    rows_key,
)
from encoder_worker.storage import Storage, open_storage
from recorder.capture.raw_writer import CameraWriter
from recorder.dataset import metadata
from recorder.dataset.complete import Completion, complete_dataset
from recorder.dataset.jobs import encode_inline, episode_job, farm_jobs, video_job_ids
from recorder.dataset.layout import DEFAULT_FEATURES, INFO_KEY, Layout, camera_name
from recorder.dataset.staging import StagedEpisode, load_staged, rows_to_parquet
from recorder.dataset.stats import ImageStats, Stats, numeric_stats, sample_stride, to_json
from recorder.farm.client import EncodingFarmClient
from recorder.farm.setup import farm_for
from recorder.farm.upload_spool import Leftovers, SpoolSink, UploadSpool, spool_folder
from recorder.settings import RecorderSettings

if TYPE_CHECKING:
    from recorder.capture.record_loop import CaptureStats

logger = logging.getLogger(__name__)

# After Ctrl-C, how long the recorder still tries to upload what is in its spool.
INTERRUPT_UPLOAD_GRACE_S = 10.0
_NUMERIC = {"float32", "float64", "int64", "int32", "int16", "int8", "uint8", "bool"}


@dataclass
class EpisodeReport:
    recording: int  # the recording number: names its raw frames and, until packing, its videos
    frames_recorded: dict[str, int]  # camera -> frames in its manifest
    frames: int = 0  # frames added (data rows)
    raw_bytes: int = 0  # raw frame bytes stored (or shipped), all cameras
    # How long save_episode() held the caller. Async, the commit (last segments, manifests,
    # rows, then the episode record) runs behind the next episode's capture: commit_s.
    save_s: float = 0.0
    commit_s: float = 0.0
    submission_s: float = 0.0  # async: sending jobs, waiting for queue room included
    inline_encode_s: float = 0.0  # sync: the recorder blocked on encoding
    writer_waits: int = 0  # frames for which a camera writer was behind and add_frame waited
    job_ids: list[str] = field(default_factory=list)
    capture: CaptureStats | None = None  # filled in by a capture loop that measured it


@dataclass
class _Episode:
    recording: int
    writers: dict[str, CameraWriter]  # video key -> its camera's writer
    sinks: list[Any]
    image_stats: dict[str, ImageStats]
    columns: dict[str, list[np.ndarray]]
    tasks: list[str] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    writer_waits: int = 0


@dataclass
class _Deferred:
    """Encode jobs held until their episode is committed and uploaded."""

    recording: int
    jobs: list[EncodeJob]
    # None: an earlier run's episode, found in the upload spool (its jobs were never sent)
    report: EpisodeReport | None
    upload: Any = None  # the upload of the episode's record, the last of its files
    commit: Future[Any] | None = None  # the commit running behind the next capture

    def ready(self) -> bool:
        """Committed and uploaded; raises the commit's error (WriterFailed, StorageError)."""
        if self.commit is not None:
            if not self.commit.done():
                return False
            self.upload, self.commit = self.commit.result(), None
        return self.upload is None or self.upload.done.is_set()


def _sampler(stats: ImageStats, stride: int) -> Callable[[int, np.ndarray], None]:
    """Adds every stride-th frame to stats (called in the camera's writer thread)."""
    def sample(index: int, frame: np.ndarray) -> None:
        if index % stride == 0:
            stats.add(frame)
    return sample


def validate_features(features: dict[str, dict]) -> dict[str, dict]:
    """The user's features without LeRobot's default ones; raises ValueError when wrong."""
    result = {}
    for key, feature in features.items():
        if key in DEFAULT_FEATURES:
            continue
        dtype, shape = feature.get("dtype"), feature.get("shape")
        if dtype == "video":
            if shape is None or len(shape) != 3 or shape[2] != 3:
                raise ValueError(f"feature {key!r}: a video feature has shape (height, width, "
                                 f"3), got {shape}")
            camera_name(key)
        elif dtype in ("image", "string"):
            raise ValueError(f"feature {key!r}: dtype {dtype!r} is not recorded by the farm; "
                             "cameras are 'video' features, the task goes in frame['task']")
        elif dtype not in _NUMERIC or shape is None or len(shape) != 1:
            raise ValueError(f"feature {key!r}: expected dtype 'video' or a numeric dtype "
                             f"({', '.join(sorted(_NUMERIC))}) with shape (n,), got {dtype!r} "
                             f"{shape}")
        result[key] = {**feature, "shape": list(shape), "names": feature.get("names")}
    if not any(f["dtype"] == "video" for f in result.values()):
        raise ValueError("features name no camera: add at least one feature of dtype 'video'")
    return result


def next_recording(raw: Storage, dataset: Storage, *, spooled: Iterable[str] = ()) -> int:
    """The first recording number after every one with raw data or a video.

    Videos count too: raw data is often deleted once encoded, and a new recording must
    never take the number (and the video file) of an old one.

    Args:
        spooled: keys of raw files still in the upload spool (an earlier run's, not yet
            uploaded): their recordings are taken, manifest or not.
    """
    numbers = [n for key in [*raw.list_keys(RAW_ROOT), *spooled]
               if (n := recording_of(key)) is not None]
    numbers += Layout.video_file_numbers(dataset.list_keys("videos"))
    return max(numbers, default=-1) + 1


def spool_folder_for(settings: RecorderSettings, storage_url: str) -> Path:
    """The upload spool folder of storage_url: under --spool-dir, else the output dir."""
    # Absolute: messages that name it must still be right after a change of directory.
    spool_dir = settings.spool_dir or settings.output_dir / ".upload-spool"
    return spool_folder(spool_dir.absolute(), storage_url)


def finish_writers(writers: Iterable[CameraWriter], *, interrupted: bool) -> list[Manifest]:
    """Commit every camera's episode, also when one of them fails; then raise its error."""
    manifests: list[Manifest] = []
    errors: list[BaseException] = []
    for writer in writers:
        try:
            manifests.append(writer.finish(interrupted=interrupted))
        except BaseException as exc:  # Ctrl-C included: the other cameras still commit
            errors.append(exc)
            if len(errors) > 1:  # the first is raised, and said by whoever catches it
                camera = writer.writer.camera
                said = str(exc)
                logger.error("%s", said if said.startswith(f"camera {camera}")
                             else f"camera {camera}: {said}")
    if errors:
        raise errors[0]
    return manifests


class FarmDataset:
    """A LeRobot dataset recorded through the encoding farm; see the module's example."""

    def __init__(self, settings: RecorderSettings, *, features: dict[str, dict],
                 robot_type: str | None = None, farm: EncodingFarmClient | None = None,
                 progress: Progress | None = None) -> None:
        """Open (or create) the dataset for recording; use create() to get a farm too.

        Raises:
            ValueError: features are not recordable.
            DatasetError: an existing dataset of another version, fps or features.
            SpoolBusy: another recorder uploads to this storage from the same spool.
        """
        if settings.async_encoding and farm is None:
            raise ValueError("async encoding needs a farm client: use FarmDataset.create()")
        self.settings = settings
        self.fps = settings.fps
        self.features = validate_features(features)
        self.robot_type = robot_type
        self.video_keys = metadata.video_keys(self.features)
        self.farm = farm
        self.progress = progress
        self.raw_storage = open_storage(settings.raw_storage_url)
        self.storage = open_storage(settings.output_storage_url)
        self.options = settings.encoder_options()
        self.layout = Layout(settings.dataset_format)
        self.run_id = uuid.uuid4().hex[:8]
        self.episodes: list[EpisodeReport] = []
        self.inline_results: list[EncodeResult] = []
        self.completion: Completion | None = None
        self._episode: _Episode | None = None
        self._deferred: list[_Deferred] = []  # async jobs of episodes still uploading
        self._uploads: UploadSpool | None = None  # raw storage that is not a local folder
        self._exit = contextlib.ExitStack()
        # Async, one episode commits here while the next one is captured; in order.
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
        self._exit.callback(self._committer.shutdown)
        self._closed = False
        self._open_or_create()
        leftovers = self._open_spool()
        self._next_recording = next_recording(self.raw_storage, self.storage,
                                              spooled=leftovers.keys)
        # Episodes an earlier run committed but had not uploaded when it stopped: their
        # jobs were never sent. Sent (or encoded) here once they are uploaded.
        for key, upload in leftovers.uploads.items():
            if (recording := recording_of_record(key)) is not None:
                self._deferred.append(_Deferred(recording, [], None, upload=upload))

    @classmethod
    def create(cls, repo_id: str, fps: int, features: dict[str, dict], *,
               robot_type: str | None = None, root: str | None = None,
               farm: EncodingFarmClient | None = None, progress: Progress | None = None,
               **settings: Any) -> FarmDataset:
        """A dataset for recording, with the farm its settings name (started if private).

        Args:
            root: the dataset's folder or s3:// URL; default OUTPUT_DIR/REPO_ID.
            farm: a farm client to use; default: inline, --broker's farm or a private one,
                as settings say (closed by finalize()).
            settings: any RecorderSettings field (async_encoding=True, broker=...,
                codec=..., dataset_format="v2.1", ...).

        Raises:
            RecorderError: the storage or the farm cannot be reached.
        """
        if root is not None:
            settings["storage"] = str(root)
        config = RecorderSettings(repo_id=repo_id, fps=fps, **settings)
        stack = contextlib.ExitStack()
        try:
            if farm is None:
                farm = stack.enter_context(farm_for(config))
            dataset = cls(config, features=features, robot_type=robot_type, farm=farm,
                          progress=progress)
        except BaseException:
            stack.close()
            raise
        dataset._exit.push(stack)
        return dataset

    # -- recording ---------------------------------------------------------------------

    def add_frame(self, frame: dict[str, Any]) -> None:
        """Add one frame: every feature's value, and the task in frame["task"].

        Camera images (height, width, 3) uint8 RGB are handed to their camera's writer
        as they are: pass a new array for each frame, never a buffer that is reused.

        Raises:
            ValueError: a feature is missing, unknown or of the wrong shape; nothing of
                this frame is recorded then.
            WriterFailed: a camera's writer could not store earlier frames.
        """
        if self._closed:
            raise RuntimeError("the dataset is finalized; create a new FarmDataset to record")
        values = dict(frame)
        task = values.pop("task", None)
        if not isinstance(task, str) or not task:
            raise ValueError("add_frame needs frame['task']: the task in words, such as "
                             "'pick up the cube'")
        timestamp = values.pop("timestamp", None)
        missing = sorted(set(self.features) - set(values))
        unknown = sorted(set(values) - set(self.features))
        if missing or unknown:
            raise ValueError(f"add_frame: missing features {missing}, unknown features "
                             f"{unknown}; the dataset's features are {sorted(self.features)}")
        checked = {key: self._checked(key, value) for key, value in values.items()}
        if self._deferred and self.settings.async_encoding:
            self._submit_uploaded()
        episode = self._episode or self._start_episode()
        index = len(episode.tasks)
        captured = time.perf_counter() - episode.started
        for key, writer in episode.writers.items():
            if writer.put(checked[key], captured, period_s=1.0 / self.fps):
                episode.writer_waits += 1
        for key, column in episode.columns.items():
            column.append(checked[key])
        episode.tasks.append(task)
        episode.timestamps.append(index / self.fps if timestamp is None else float(timestamp))

    def _checked(self, key: str, value: Any) -> np.ndarray:
        feature = self.features[key]
        shape = tuple(feature["shape"])
        if feature["dtype"] == "video":
            if not isinstance(value, np.ndarray) or value.dtype != np.uint8 \
                    or value.shape != shape:
                got = (value.shape, value.dtype) if isinstance(value, np.ndarray) \
                    else type(value).__name__
                raise ValueError(f"add_frame: {key} must be a {shape} uint8 RGB array, got "
                                 f"{got}")
            return value
        array = np.asarray(value, dtype=feature["dtype"])
        if array.shape != shape:
            raise ValueError(f"add_frame: {key} must have shape {shape}, got {array.shape}")
        return array

    @property
    def episode_frames(self) -> int:
        """Frames added to the episode in progress."""
        return len(self._episode.tasks) if self._episode is not None else 0

    @property
    def episode_writer_waits(self) -> int:
        return self._episode.writer_waits if self._episode is not None else 0

    def _start_episode(self) -> _Episode:
        recording = self._next_recording
        self._next_recording += 1
        writers, sinks, image_stats = {}, [], {}
        stride = sample_stride(self.fps)
        for key in self.video_keys:
            height, width, _ = self.features[key]["shape"]
            camera = camera_name(key)
            sink = self._sink(raw_prefix(recording=recording, camera=camera))
            sinks.append(sink)
            stats = image_stats[key] = ImageStats()
            writers[key] = CameraWriter(
                RawEpisodeWriter(sink, episode=recording, camera=camera, width=width,
                                 height=height, fps=self.fps,
                                 pix_fmt=self.settings.raw_pix_fmt_for(width, height),
                                 input_pix_fmt="rgb24",
                                 compression=self.settings.raw_compression,
                                 segment_frames=self.settings.segment_frames),
                queue_frames=self.settings.writer_queue_frames,
                on_written=_sampler(stats, stride))
        columns: dict[str, list[np.ndarray]] = {
            key: [] for key, f in self.features.items() if f["dtype"] != "video"}
        self._episode = _Episode(recording, writers, sinks, image_stats, columns)
        self._capturing(True)
        return self._episode

    def _capturing(self, capturing: bool) -> None:
        """Tell workers beside this recorder (--yield-to-capture) to pause, or go on."""
        if self.farm is not None and self.settings.async_encoding:
            self.farm.capturing(capturing)

    def save_episode(self) -> EpisodeReport:
        """End the episode: commit it and send its encode jobs (async), or commit and
        encode it (sync).

        Async, it returns at once: the commit (the writers' last segments, the manifests,
        the rows, then the episode record) runs behind the next episode's capture, and the
        jobs are sent once the episode is committed and uploaded, from the next
        add_frame(), save_episode() or finalize(). Sync, it returns once the episode is
        committed and encoded. The report says how long each step made the caller wait.

        Raises:
            ValueError: no frame was added since the last save.
            WriterFailed: a camera could not store its frames; what was stored is kept
                under a manifest marked interrupted, and the episode is not staged. Async,
                raised by the call after the one that ended that episode.
        """
        episode = self._episode
        if episode is None or not episode.tasks:
            raise ValueError("save_episode: no frame was added since the last save_episode()")
        started = time.perf_counter()
        self._episode = None
        self._capturing(False)
        report = EpisodeReport(recording=episode.recording, frames=len(episode.tasks),
                               frames_recorded={}, writer_waits=episode.writer_waits)
        jobs: list[EncodeJob] = []  # made by the commit
        if self.settings.async_encoding:
            commit = self._committer.submit(self._commit_and_send, episode, report, jobs)
            self._deferred.append(_Deferred(episode.recording, jobs, report, commit=commit))
            self.episodes.append(report)
            self._submit_uploaded()  # the episodes committed and uploaded by now
            report.save_s = time.perf_counter() - started
            return report
        self._commit(episode, report, jobs)
        report.save_s = time.perf_counter() - started
        t0 = time.perf_counter()
        results = [encode_inline(job) for job in jobs]
        report.inline_encode_s = time.perf_counter() - t0
        for result in results:
            if not result.ok:
                logger.error("recording %d camera %s: %s", episode.recording,
                             result.camera, result.error)
        self.inline_results += results
        self.episodes.append(report)
        return report

    def _commit(self, episode: _Episode, report: EpisodeReport, jobs: list[EncodeJob]) -> Any:
        """Commit the episode: writers finished, then rows and record (_stage); add its
        encode jobs to jobs.

        Returns the record's upload when it goes through the upload spool, else None.
        """
        started = time.perf_counter()
        manifests = finish_writers(episode.writers.values(), interrupted=False)
        report.frames_recorded = {m.camera: m.frame_count for m in manifests}
        report.raw_bytes = sum(m.stored_bytes for m in manifests)
        uploading = self._stage(episode)
        jobs += [job for key in self.video_keys
                 for job in self._jobs(episode.recording, key, frames=len(episode.tasks))]
        report.job_ids = video_job_ids(jobs)
        report.commit_s = time.perf_counter() - started
        logger.info("recording %d: %d frames saved", episode.recording, report.frames)
        return uploading

    def _commit_and_send(self, episode: _Episode, report: EpisodeReport,
                         jobs: list[EncodeJob]) -> Any:
        """_commit, then, when nothing is left to upload, send its jobs from here: the
        record loop then never spends a slot in Celery's publish (about 12 ms a job,
        measured: 4 jobs made 3 slots late at the next episode's start)."""
        uploading = self._commit(episode, report, jobs)
        if uploading is None and self.farm is not None:
            self._submit(list(jobs), report)
            jobs.clear()  # sent: _submit_uploaded has nothing left to send for it
        return uploading

    def _submit(self, jobs: list[EncodeJob], report: EpisodeReport) -> None:
        assert self.farm is not None
        t0 = time.perf_counter()
        for job in jobs:
            self.farm.submit(job)
        report.submission_s += time.perf_counter() - t0

    def _submit_uploaded(self) -> None:
        """Send the jobs of episodes committed and uploaded since the last look, in order.

        Raises:
            WriterFailed, StorageError: an episode's commit failed (raised once).
        """
        while self._deferred:
            try:
                ready = self._deferred[0].ready()
            except BaseException:
                self._deferred.pop(0)  # its frames are kept; it is not staged
                raise
            if not ready:
                return
            deferred = self._deferred.pop(0)
            if deferred.report is None:
                self._encode_leftover(deferred.recording)
            else:
                self._submit(deferred.jobs, deferred.report)

    def _encode_leftover(self, recording: int) -> None:
        """Send (or encode inline) the missing videos of an earlier run's episode."""
        record = load_staged(self.raw_storage, recording)
        jobs = [job for key, video in sorted(record.videos.items())
                if not self.storage.exists(video)
                for job in self._jobs(recording, key, frames=record.length)]
        logger.warning("recording %d, committed by an earlier run that stopped before it was "
                       "uploaded, is uploaded now: %s its %d missing videos", recording,
                       "sending the farm" if self.settings.async_encoding else "encoding",
                       len(video_job_ids(jobs)))
        for job in jobs:
            if self.farm is not None and self.settings.async_encoding:
                self.farm.submit(job)
            else:
                self.inline_results.append(encode_inline(job))

    def clear_episode_buffer(self) -> None:
        """Drop the episode in progress from the dataset (re-record it).

        Its camera frames are kept as raw data marked interrupted, never deleted.
        """
        episode, self._episode = self._episode, None
        self._capturing(False)
        if episode is not None:
            finish_writers(episode.writers.values(), interrupted=True)

    def _stage(self, episode: _Episode) -> Any:
        """Write the episode's rows, then its record: the episode's commit point.

        Returns the record's upload when it goes through the upload spool, else None.
        """
        length = len(episode.tasks)
        columns: dict[str, pa.Array] = {}
        stats: dict[str, Stats] = {}
        for key, values in episode.columns.items():
            array = np.stack(values)
            dtype = pa.from_numpy_dtype(array.dtype)
            columns[key] = pa.FixedSizeListArray.from_arrays(
                pa.array(array.reshape(-1), dtype), array.shape[1])
            stats[key] = numeric_stats(array)
        timestamps = np.asarray(episode.timestamps, dtype=np.float32)
        frame_index = np.arange(length, dtype=np.int64)
        columns["timestamp"] = pa.array(timestamps)
        columns["frame_index"] = pa.array(frame_index)
        columns["task"] = pa.array(episode.tasks, pa.string())
        stats["timestamp"] = numeric_stats(timestamps)
        stats["frame_index"] = numeric_stats(frame_index)
        for key, image_stats in episode.image_stats.items():
            stats[key] = image_stats.result()
        # episode_index, index and task_index are given when the episode joins the dataset.
        record = StagedEpisode(
            recording=episode.recording, length=length,
            tasks=list(dict.fromkeys(episode.tasks)),
            videos={key: self._video_key(episode.recording, key) for key in self.video_keys},
            stats=to_json(stats))
        rows = rows_to_parquet(columns)
        if self._uploads is None:
            self.raw_storage.put_bytes(rows_key(episode.recording), rows)
            self.raw_storage.put_bytes(record_key(episode.recording),
                                       record.model_dump_json().encode())
            return None
        earlier = [s.manifest_upload for s in episode.sinks
                   if isinstance(s, SpoolSink) and s.manifest_upload is not None]
        earlier.append(self._uploads.put_bytes(rows_key(episode.recording), rows))
        last = self._uploads.put_bytes(record_key(episode.recording),
                                       record.model_dump_json().encode(), after=earlier)
        if not self.settings.async_encoding:
            self._uploads.wait_for_upload(last)
        return last

    def _video_key(self, recording: int, key: str) -> str:
        return self.layout.video_key_of(recording=recording, video_key=key)

    def _jobs(self, recording: int, key: str, *, frames: int) -> list[EncodeJob]:
        """The jobs of one (recording, camera): its parts, if the farm encodes a long
        episode; inline encoding never splits."""
        job = episode_job(recording, key, run_id=self.run_id, raw=self.raw_storage,
                          dataset=self.storage, output_key=self._video_key(recording, key),
                          options=self.options)
        height, width, _ = self.features[key]["shape"]
        if self.settings.async_encoding:
            return farm_jobs(job, frames=frames, fps=self.fps, width=width, height=height,
                             settings=self.settings)
        job.time_limit_s = encode_time_limit_s(frames=frames, width=width, height=height)
        return [job]

    # -- finishing ---------------------------------------------------------------------

    def finalize(self) -> Completion:
        """Upload what is left, wait for the videos (unless settings.wait is off), and
        write the LeRobot metadata of every episode whose videos are all published.

        An episode still in progress is committed as interrupted (its frames are kept as
        raw data) and does not join the dataset: call save_episode() first.

        Raises:
            StorageError: raw data could not be uploaded (it stays in the spool).
        """
        if self._closed:
            assert self.completion is not None
            return self.completion
        try:
            if self._episode is not None and self._episode.tasks:
                logger.warning("recording %d was not saved: its %d frames are kept as raw "
                               "data marked interrupted and it does not join the dataset",
                               self._episode.recording, len(self._episode.tasks))
            self.clear_episode_buffer()
            self.finish_uploads()  # every episode is committed and uploaded now
            self._submit_uploaded()
            if self.farm is not None and self.settings.async_encoding and self.settings.wait:
                self._wait_for_farm()
            self.completion = complete_dataset(self.storage, self.raw_storage)
        finally:
            self._closed = True
            self._exit.close()
        if not self.completion.complete:
            logger.warning("%d recorded episodes are not in the dataset yet (%s); `recorder "
                           "encode-pending` completes it", self.completion.staged_left,
                           self.waiting_note())
        return self.completion

    def waiting_note(self) -> str:
        if self.completion is None or self.completion.waiting is None:
            return "nothing is waiting"
        recording, why = self.completion.waiting
        return f"recording {recording}: {why}"

    @property
    def results(self) -> list[EncodeResult]:
        """Every encode result so far: the farm's, or the inline encodes'."""
        if self.farm is not None and self.settings.async_encoding:
            return list(self.farm.results)
        return list(self.inline_results)

    def abort(self) -> None:
        """Stop after an error or Ctrl-C: keep every frame, upload what can be in a grace
        period, stop a private farm. The dataset keeps what had joined it."""
        if self._closed:
            return
        self._closed = True
        try:
            with contextlib.suppress(Exception):
                self.clear_episode_buffer()
            # Commits under way keep their episodes' frames (their errors were said, or are
            # said by whoever aborts); finish_uploads waits for them.
            self.finish_uploads(timeout_s=INTERRUPT_UPLOAD_GRACE_S)
        finally:
            self._exit.close()

    def finish_uploads(self, *, timeout_s: float | None = None) -> None:
        """Wait until every saved episode is committed and its raw data uploaded (the
        uploads at most timeout_s); a local folder has no uploads to wait for."""
        # Commits still running queue their last files in the spool: they come first, or
        # the spool closes without them and their jobs wait for a manifest for ever.
        self._committer.shutdown(wait=True)
        # Once everything is confirmed stored, close() also unlocks the spool folder.
        if self._uploads is not None and self._uploads.close(timeout_s):
            self._uploads = None

    def __enter__(self) -> FarmDataset:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()

    def _wait_for_farm(self) -> None:
        assert self.farm is not None
        farm = self.farm
        task = None
        if self.progress is not None:
            task = self.progress.add_task("encoding on the farm", total=farm.submitted,
                                          completed=len(farm.results))
        def advance(_: EncodeResult) -> None:
            if self.progress is not None and task is not None:
                self.progress.advance(task)

        farm.wait(on_result=advance)

    # -- storage -----------------------------------------------------------------------

    def _open_or_create(self) -> None:
        """Check an existing dataset against this recording, or write a new info.json.

        Raises:
            DatasetError: another version, fps or set of features.
        """
        info = metadata.read_info(self.storage)
        fmt = self.settings.dataset_format
        if info is None:
            info = metadata.new_info(format=fmt, fps=self.fps, features=self.features,
                                     robot_type=self.robot_type, options=self.options)
            metadata.write_json(self.storage, INFO_KEY, info)
            return
        url = self.storage.url
        if info["codebase_version"] != fmt:
            raise metadata.DatasetError(
                f"{url} is a LeRobot {info['codebase_version']} dataset; this recording "
                f"writes {fmt}: pass --dataset-format {info['codebase_version']} to append to "
                "it, or record into a new --repo-id")
        theirs = {k: (f["dtype"], list(f["shape"])) for k, f in info["features"].items()
                  if k not in DEFAULT_FEATURES}
        ours = {k: (f["dtype"], list(f["shape"])) for k, f in self.features.items()}
        if info["fps"] != self.fps or theirs != ours:
            raise metadata.DatasetError(
                f"{url} was recorded at {info['fps']} fps with features {theirs}; this "
                f"recording has {self.fps} fps and {ours}. Episodes of one dataset share "
                "them: record into a new --repo-id")

    def _open_spool(self) -> Leftovers:
        """Lock the raw storage's upload spool and queue what earlier runs left in it.

        Returns what was found in the spool: its recording numbers are taken. Nothing
        to do for a local folder, which the writers write in place. The leftovers upload
        in the background, ahead of this run's files: waiting for them would hold the
        robot for as long as a long outage's backlog takes to upload.

        Raises:
            SpoolBusy: another recorder holds the spool folder's lock.
        """
        if self.raw_storage.local_path(RAW_ROOT) is not None:
            return Leftovers()
        folder = spool_folder_for(self.settings, self.raw_storage.url)
        self._uploads = UploadSpool(self.raw_storage, folder,
                                    max_bytes=self.settings.spool_max_mb * 1_000_000)
        try:
            return self._uploads.resume()
        except BaseException:
            self.finish_uploads(timeout_s=0)
            raise

    def _sink(self, prefix: str) -> DirectSink | SpoolSink:
        if self.raw_storage.local_path(prefix) is not None:
            return DirectSink(self.raw_storage, prefix)
        # Remote storage: upload in the background, so the record loop never waits for
        # the network. Inline encoding reads the episode back at once: its manifest must
        # be stored before the writer's close() returns.
        assert self._uploads is not None, "the spool is opened first"
        return self._uploads.sink(prefix, durable_manifest=not self.settings.async_encoding)
