"""The encode jobs of a dataset's episodes, built in this one place: one job per
(recording, camera), or its parts: windows sent while the episode is recorded and the
rest when it is saved, or a long episode split for several workers at once; each with the
time limit of its frames."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from encoder_worker.encode import encode_job
from encoder_worker.jobs import (
    EncodeJob,
    EncodeResult,
    EncoderOptions,
    FailureReason,
    PartSpec,
    encode_time_limit_s,
    split_job,
    window_ranges,
)
from encoder_worker.raw_episode import Manifest
from encoder_worker.raw_layout import raw_prefix
from encoder_worker.storage import Storage, StorageError, local_storage_id
from recorder.dataset.layout import Layout, camera_name
from recorder.farm.options import FarmOptions

# A split episode's part count is a multiple of this: 1, 2 or 4 workers then have as many
# parts each and finish together (8 parts of a 60 s episode also keep 8 busy).
PART_COUNT_MULTIPLE = 4


def part_count(frames: int, fps: float, farm: FarmOptions) -> int:
    """The parts a farm encodes an episode of frames frames as, at once (1: unsplit).

    Measured here (benchmarks/README.md, "Split episodes", 60 s at 640x480): 4-16 parts
    cost at most 4 % more worker time than one job, the join 0.3 s; at K = 2 workers, 8
    parts of 7.5 s were ready in 1.04 x T1 / 2 (4 parts: 1.10, 16: 1.14). Episodes up
    to split_after_s (20 s) keep one job per camera: the shortest split one gets 4
    parts of about 5 s, where a part's overhead stays a few percent, and shorter ones
    with two or more cameras already spread over workers.
    """
    seconds = frames / fps
    if not farm.split_after_s or seconds <= farm.split_after_s:
        return 1
    parts = math.ceil(seconds / farm.split_part_s)
    return -(-parts // PART_COUNT_MULTIPLE) * PART_COUNT_MULTIPLE


def window_frames(farm: FarmOptions, fps: float, segment_frames: int) -> int:
    """Frames per window of an episode encoded while recorded (0: none): whole segments,
    the fewest that reach farm.encode_window_s; inline encoding has no windows."""
    if not farm.async_encoding or not farm.encode_window_s:
        return 0
    segments = max(1, math.ceil(farm.encode_window_s * fps / segment_frames - 1e-9))
    return segments * segment_frames


@dataclass(frozen=True)
class JobPlan:
    """How a dataset's episodes become EncodeJobs: their storage, codec, farm and cameras."""

    run_id: str  # makes job ids unique per recorder run
    raw: Storage
    dataset: Storage
    layout: Layout
    encoder: EncoderOptions
    farm: FarmOptions
    fps: int
    frame_sizes: Mapping[str, tuple[int, int]]  # video feature key -> (width, height)
    window_frames: int = 0  # window_frames(): windows sent while recording; 0: none

    def videos_of(self, recording: int) -> dict[str, str]:
        """Video feature key -> where the video of each camera of a recording goes."""
        return {key: self.layout.video_key_of(recording=recording, video_key=key)
                for key in self.frame_sizes}

    def jobs(self, recording: int, videos: Mapping[str, str], *,
             frames: int, windows: bool = True) -> list[EncodeJob]:
        """The jobs that encode these videos of one committed recording.

        Args:
            videos: video feature key -> the key its video is published at.
            windows: the recording's windows were sent while it was recorded (this run);
                False: its videos are encoded whole.
        """
        return [job for key, output_key in videos.items()
                for job in self._camera_jobs(recording, key, output_key, frames=frames,
                                             windows=windows)]

    def window_job(self, recording: int, video_key: str, window: Manifest) -> EncodeJob:
        """The job of one window of a camera's frames, sent while the episode is recorded
        (window: raw_episode.window_of, what the writer handed over)."""
        first = window.segments[0].first_frame
        job = self._as_window(self._video_job(recording, video_key),
                              first // self.window_frames, first, window.frame_count - first)
        job.window_manifest = window
        return self._limited(job, video_key)

    def _as_window(self, job: EncodeJob, index: int, first: int, count: int, *,
                   parts: int | None = None) -> EncodeJob:
        """The part of job's video that is its window index (parts: the video's count of
        parts, known to the part sent when the episode is saved)."""
        return job.model_copy(update={
            "job_id": window_job_id(job.job_id, index),
            "part": PartSpec(parent_id=job.job_id, index=index, count=parts,
                             first_frame=first, frame_count=count,
                             window_frames=self.window_frames)})

    def _video_job(self, recording: int, video_key: str,
                   output_key: str | None = None) -> EncodeJob:
        camera = camera_name(video_key)
        return EncodeJob(
            job_id=f"{self.run_id}-ep{recording:06d}-{camera}", recording=recording,
            camera=camera, raw_storage=self.raw.url,
            raw_prefix=raw_prefix(recording=recording, camera=camera),
            raw_storage_id=local_storage_id(self.raw, create=True),
            output_storage=self.dataset.url,
            output_storage_id=local_storage_id(self.dataset, create=True),
            output_key=output_key or self.layout.video_key_of(recording=recording,
                                                              video_key=video_key),
            options=self.encoder)

    def _camera_jobs(self, recording: int, video_key: str, output_key: str, *,
                     frames: int, windows: bool) -> list[EncodeJob]:
        """One camera's job; or, with windows, the part after the windows sent while it
        was recorded; or its parts when a farm encodes a long episode (part_count; inline
        encoding never splits); each with the time limit of its frames."""
        job = self._video_job(recording, video_key, output_key)
        if windows and self.window_frames and frames > self.window_frames:
            ranges = window_ranges(frames, self.window_frames)
            jobs = [self._as_window(job, len(ranges) - 1, *ranges[-1], parts=len(ranges))]
        else:
            parts = part_count(frames, self.fps, self.farm) if self.farm.async_encoding else 1
            jobs = split_job(job, frames=frames, parts=parts)
        return [self._limited(each, video_key, frames=frames) for each in jobs]

    def _limited(self, job: EncodeJob, video_key: str, *, frames: int = 0) -> EncodeJob:
        """job with the time limit of its frames (a part's, else frames)."""
        width, height = self.frame_sizes[video_key]
        count = job.part.frame_count if job.part is not None else frames
        job.time_limit_s = encode_time_limit_s(frames=count, width=width, height=height)
        return job


def window_job_id(video_job_id: str, index: int) -> str:
    return f"{video_job_id}-window{index:04d}"


def video_job_ids(jobs: Iterable[EncodeJob]) -> list[str]:
    """One id per video: a split video's parts have their whole job's id."""
    return list(dict.fromkeys(j.video_job_id for j in jobs))


def encode_inline(job: EncodeJob) -> EncodeResult:
    """encode_job in the recorder's process; storage errors become a failed result."""
    try:
        return encode_job(job)
    except StorageError as exc:
        # The recording goes on; this episode's raw frames stay for a later encode.
        return EncodeResult.failed(job, f"StorageError: {exc}", reason=FailureReason.STORAGE)
    except OSError as exc:  # the encode's temp files on this host, not a storage call
        return EncodeResult.failed(job, f"{type(exc).__name__} in the encode's temp files: "
                                   f"{exc}", reason=FailureReason.STORAGE)
