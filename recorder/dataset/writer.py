"""FarmDataset: LeRobot's recording API (add_frame, save_episode, finalize) over the farm.

    dataset = FarmDataset.create("me/pick_cube", fps=30, features=FEATURES,
                                 robot_type="so100", async_encoding=True)
    for _ in range(episodes):
        for _ in range(frames):
            dataset.add_frame({"observation.images.front": rgb, "observation.state": state,
                               "action": action, "task": "pick the cube"})
        dataset.save_episode()   # returns at once; the episode commits behind the next one
    dataset.finalize()           # waits for the videos, writes the LeRobot metadata

FarmDataset keeps LeRobot's face: it checks every frame, hands camera images to one
background writer per camera (raw segments, manifest last) and keeps the other features
as the episode's data rows. save_episode() hands the episode to the EpisodeCommitter
(recorder/dataset/commit.py), which commits it and sends its jobs (or encodes it inline).
finalize() waits for the farm and completes the dataset (recorder/dataset/complete.py):
an episode joins the LeRobot metadata once all of its videos are published.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

import numpy as np
from rich.progress import Progress

from encoder_worker.jobs import EncodeResult, EncoderOptions
from encoder_worker.raw_episode import RawEpisodeWriter
from encoder_worker.raw_layout import RAW_ROOT, raw_prefix, recording_of
from encoder_worker.storage import Storage, open_storage
from recorder.capture.raw_writer import CameraWriter, WriterThreads
from recorder.dataset import metadata
from recorder.dataset.commit import EpisodeCommitter
from recorder.dataset.complete import Completion, complete_dataset, verified_videos
from recorder.dataset.episode import CapturedEpisode, finish_writers, image_sampler
from recorder.dataset.features import checked_value, validate_features
from recorder.dataset.jobs import JobPlan, window_frames
from recorder.dataset.layout import Layout, camera_name
from recorder.dataset.options import DatasetOptions
from recorder.dataset.report import EpisodeReport
from recorder.dataset.stats import ImageStats, sample_stride
from recorder.farm.client import EncodingFarmClient
from recorder.farm.options import FarmOptions
from recorder.farm.setup import farm_for

logger = logging.getLogger(__name__)

# After Ctrl-C, how long the recorder still tries to upload what is in its spool.
INTERRUPT_UPLOAD_GRACE_S = 10.0


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


def split_options(options: dict[str, Any]) -> tuple[DatasetOptions, EncoderOptions,
                                                     FarmOptions]:
    """Keyword options of FarmDataset.create(), each to the model that has it.

    Raises:
        TypeError: a keyword no model has (a typo), named.
        pydantic.ValidationError: a value a model refuses.
    """
    models = (DatasetOptions, EncoderOptions, FarmOptions)
    unknown = sorted(set(options) - {name for model in models for name in model.model_fields})
    if unknown:
        raise TypeError(f"FarmDataset.create() got unknown options {unknown}")
    dataset, encoder, farm = (
        model.model_validate({k: v for k, v in options.items() if k in model.model_fields})
        for model in models)
    return dataset, encoder, farm  # type: ignore[return-value]


class FarmDataset:
    """A LeRobot dataset recorded through the encoding farm; see the module's example."""

    def __init__(self, *, fps: int, features: dict[str, dict], robot_type: str | None = None,
                 options: DatasetOptions | None = None, encoder: EncoderOptions | None = None,
                 farm_options: FarmOptions | None = None,
                 farm: EncodingFarmClient | None = None,
                 progress: Progress | None = None) -> None:
        """Open (or create) the dataset for recording; use create() to get a farm too.

        Args:
            farm: the farm client that encodes (farm_options.async_encoding); ignored
                for inline encoding.

        Raises:
            ValueError: features or options are not recordable.
            DatasetError: an existing dataset of another version, fps or features.
            SpoolBusy: another recorder uploads to this storage from the same spool.
        """
        self.options = options or DatasetOptions()
        self.encoder = encoder or EncoderOptions()
        self.farm_options = farm_options or FarmOptions()
        if self.farm_options.async_encoding and farm is None:
            raise ValueError("async encoding needs a farm client: use FarmDataset.create()")
        self.options.check_raw_format(self.encoder.pix_fmt)
        self.fps = fps
        self.features = validate_features(features)
        self.robot_type = robot_type
        self.video_keys = metadata.video_keys(self.features)
        self.farm = farm if self.farm_options.async_encoding else None
        self.progress = progress
        self.raw_storage = open_storage(self.options.raw_storage_url)
        self.storage = open_storage(self.options.output_storage_url)
        self.episodes: list[EpisodeReport] = []
        self.completion: Completion | None = None
        self._episode: CapturedEpisode | None = None
        self._exit = contextlib.ExitStack()
        self._closed = False
        metadata.open_or_create(self.storage, format=self.options.dataset_format, fps=fps,
                                features=self.features, robot_type=robot_type,
                                options=self.encoder)
        sizes = {key: (self.features[key]["shape"][1], self.features[key]["shape"][0])
                 for key in self.video_keys}
        plan = JobPlan(run_id=uuid.uuid4().hex[:8], raw=self.raw_storage, dataset=self.storage,
                       layout=Layout(self.options.dataset_format), encoder=self.encoder,
                       farm=self.farm_options, fps=fps, frame_sizes=sizes,
                       window_frames=window_frames(self.farm_options, fps,
                                                   self.options.segment_frames))
        self.committer = EpisodeCommitter(
            plan, farm=self.farm, spool_dir=self.options.spool_root,
            spool_max_bytes=self.options.spool_max_mb * 1_000_000)
        self._next_recording = next_recording(self.raw_storage, self.storage,
                                              spooled=self.committer.spooled_keys)
        self._writer_threads = WriterThreads(2 * len(self.video_keys))
        self._exit.callback(self._writer_threads.shutdown)

    @classmethod
    def create(cls, repo_id: str, fps: int, features: dict[str, dict], *,
               robot_type: str | None = None, root: str | None = None,
               farm: EncodingFarmClient | None = None, progress: Progress | None = None,
               **options: Any) -> FarmDataset:
        """A dataset for recording, with the farm its options name (started if private).

        Args:
            root: the dataset's folder or s3:// URL; default OUTPUT_DIR/REPO_ID.
            farm: a farm client to use; default: inline, broker=...'s farm or a private
                one, as the options say (closed by finalize()).
            options: any field of DatasetOptions, EncoderOptions or FarmOptions
                (async_encoding=True, broker=..., codec=..., dataset_format="v2.1", ...).

        Raises:
            TypeError: an unknown option.
            RecorderError: the storage or the farm cannot be reached.
        """
        if root is not None:
            options["storage"] = str(root)
        dataset_options, encoder, farm_options = split_options({"repo_id": repo_id, **options})
        stack = contextlib.ExitStack()
        try:
            if farm is None:
                farm = stack.enter_context(farm_for(
                    farm_options, raw_url=dataset_options.raw_storage_url,
                    output_url=dataset_options.output_storage_url))
            dataset = cls(fps=fps, features=features, robot_type=robot_type,
                          options=dataset_options, encoder=encoder, farm_options=farm_options,
                          farm=farm, progress=progress)
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
            StorageError: an earlier episode's commit failed (raised once).
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
        checked = {key: checked_value(key, self.features[key], value)
                   for key, value in values.items()}
        self.committer.raise_failed()
        episode = self._episode or self._start_episode()
        index = episode.frames
        captured = time.perf_counter() - episode.started
        for key, writer in episode.writers.items():
            if writer.put(checked[key], captured, period_s=1.0 / self.fps):
                episode.writer_waits += 1
        for key, column in episode.columns.items():
            column.append(checked[key])
        episode.tasks.append(task)
        episode.timestamps.append(index / self.fps if timestamp is None else float(timestamp))

    @property
    def episode_frames(self) -> int:
        """Frames added to the episode in progress."""
        return self._episode.frames if self._episode is not None else 0

    @property
    def episode_writer_waits(self) -> int:
        return self._episode.writer_waits if self._episode is not None else 0

    def _start_episode(self) -> CapturedEpisode:
        recording = self._next_recording
        self._next_recording += 1
        writers, sinks, image_stats = {}, [], {}
        stride = sample_stride(self.fps)
        for key in self.video_keys:
            height, width, _ = self.features[key]["shape"]
            camera = camera_name(key)
            sink = self.committer.sink(raw_prefix(recording=recording, camera=camera),
                                       recording=recording, video_key=key)
            sinks.append(sink)
            stats = image_stats[key] = ImageStats()
            writers[key] = CameraWriter(
                RawEpisodeWriter(sink, episode=recording, camera=camera, width=width,
                                 height=height, fps=self.fps,
                                 pix_fmt=self.options.raw_pix_fmt_for(width, height,
                                                                      self.encoder.pix_fmt),
                                 input_pix_fmt="rgb24",
                                 compression=self.options.raw_compression,
                                 segment_frames=self.options.segment_frames,
                                 window_frames=self.committer.plan.window_frames),
                queue_frames=self.options.writer_queue_frames,
                on_written=image_sampler(stats, stride), threads=self._writer_threads)
        columns: dict[str, list[np.ndarray]] = {
            key: [] for key, f in self.features.items() if f["dtype"] != "video"}
        self._episode = CapturedEpisode(recording, writers, sinks, image_stats, columns)
        self._capturing(True)
        return self._episode

    def _capturing(self, capturing: bool) -> None:
        """Tell workers beside this recorder that it captures (they pause, or leave it its
        CPUs), or that it stopped."""
        if self.farm is not None:
            self.farm.capturing(capturing)

    def save_episode(self) -> EpisodeReport:
        """End the episode: commit it and send its encode jobs (farm), or commit and
        encode it (inline).

        With a farm it returns at once: the commit (the writers' last segments, the
        manifests, the rows, then the episode record) and the sending of its jobs run
        behind the next episode's capture. Inline, it returns once the episode is
        committed and encoded. The report says how long each step made the caller wait.

        Raises:
            ValueError: no frame was added since the last save.
            WriterFailed: a camera could not store its frames; what was stored is kept
                under a manifest marked interrupted, and the episode is not staged. With
                a farm, raised by the call after the one that ended that episode.
        """
        episode = self._episode
        if episode is None or not episode.frames:
            raise ValueError("save_episode: no frame was added since the last save_episode()")
        started = time.perf_counter()
        self._episode = None
        self._capturing(False)
        report = EpisodeReport(recording=episode.recording, frames=episode.frames,
                               frames_recorded={}, writer_waits=episode.writer_waits)
        self.committer.commit(episode, report)
        self.episodes.append(report)
        self.committer.raise_failed()  # an earlier episode's
        report.save_s = time.perf_counter() - started - report.inline_encode_s
        return report

    def clear_episode_buffer(self) -> None:
        """Drop the episode in progress from the dataset (re-record it).

        Its camera frames are kept as raw data marked interrupted, never deleted.
        """
        episode, self._episode = self._episode, None
        self._capturing(False)
        if episode is not None:
            try:
                finish_writers(episode.writers.values(), interrupted=True)
            finally:
                self.committer.discard_windows(episode)

    # -- finishing ---------------------------------------------------------------------

    def finalize(self) -> Completion:
        """Upload what is left, wait for the videos (unless farm_options.wait is off), and
        write the LeRobot metadata of every episode whose videos are all published.

        An episode still in progress is committed as interrupted (its frames are kept as
        raw data) and does not join the dataset: call save_episode() first.

        Raises:
            WriterFailed: an episode's commit failed (its frames are kept).
            StorageError: raw data could not be uploaded (it stays in the spool).
        """
        if self._closed:
            assert self.completion is not None
            return self.completion
        try:
            if self._episode is not None and self._episode.frames:
                logger.warning("recording %d was not saved: its %d frames are kept as raw "
                               "data marked interrupted and it does not join the dataset",
                               self._episode.recording, self._episode.frames)
            self.clear_episode_buffer()
            self.finish_uploads()  # every episode is committed, uploaded and delivered now
            self.committer.raise_failed()
            if self.farm is not None and self.farm_options.wait:
                self._wait_for_farm()
            # Videos this run's encodes verified are not downloaded and probed again.
            self.completion = complete_dataset(self.storage, self.raw_storage,
                                               verified=verified_videos(self.results),
                                               keep_raw=self.options.keep_raw)
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
        if self.farm is not None:
            return list(self.farm.results)
        return list(self.committer.results)

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
            # said by whoever aborts); finish waits for them.
            self.committer.finish(timeout_s=INTERRUPT_UPLOAD_GRACE_S, deliver=False)
        finally:
            self._exit.close()

    def finish_uploads(self) -> None:
        """Wait until every saved episode is committed, its raw data uploaded and its jobs
        sent (or encoded); a local folder has no uploads to wait for.

        Raises:
            StorageError: an upload failed permanently; the files stay in the spool.
        """
        self.committer.finish()

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
