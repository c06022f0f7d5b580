"""The encode jobs of a dataset's episodes: one per (recording, camera), or its parts
when the farm encodes a long episode at once on several workers."""

from __future__ import annotations

import math
from collections.abc import Iterable

from encoder_worker.encode import encode_job
from encoder_worker.jobs import (
    EncodeJob,
    EncodeResult,
    EncoderOptions,
    FailureReason,
    encode_time_limit_s,
    split_job,
)
from encoder_worker.raw_layout import raw_prefix
from encoder_worker.storage import Storage, StorageError, local_storage_id
from recorder.dataset.layout import camera_name
from recorder.settings import RecorderSettings


def episode_job(recording: int, video_key: str, *, run_id: str, raw: Storage,
                dataset: Storage, output_key: str, options: EncoderOptions) -> EncodeJob:
    """The EncodeJob of one committed (recording, camera)."""
    camera = camera_name(video_key)
    return EncodeJob(
        job_id=f"{run_id}-ep{recording:06d}-{camera}", recording=recording, camera=camera,
        raw_storage=raw.url, raw_prefix=raw_prefix(recording=recording, camera=camera),
        raw_storage_id=local_storage_id(raw, create=True), output_storage=dataset.url,
        output_storage_id=local_storage_id(dataset, create=True), output_key=output_key,
        options=options)


# A split episode's part count is a multiple of this: 1, 2 or 4 workers then have as many
# parts each and finish together (8 parts of a 60 s episode also keep 8 busy).
PART_COUNT_MULTIPLE = 4


def part_count(frames: int, fps: float, settings: RecorderSettings) -> int:
    """The parts a farm encodes an episode of frames frames as, at once (1: unsplit).

    Measured here (benchmarks/README.md, "Split episodes", 60 s at 640x480): 4-16 parts
    cost at most 4 % more worker time than one job, the join 0.3 s; at K = 2 workers, 8
    parts of 7.5 s were ready in 1.04 x T1 / 2 (4 parts: 1.10, 16: 1.14). Episodes up
    to split_after_s (20 s) keep one job per camera: the shortest split one gets 4
    parts of about 5 s, where a part's overhead stays a few percent, and shorter ones
    with two or more cameras already spread over workers.
    """
    seconds = frames / fps
    if not settings.split_after_s or seconds <= settings.split_after_s:
        return 1
    parts = math.ceil(seconds / settings.split_part_s)
    return -(-parts // PART_COUNT_MULTIPLE) * PART_COUNT_MULTIPLE


def farm_jobs(job: EncodeJob, *, frames: int, fps: float, width: int, height: int,
              settings: RecorderSettings) -> list[EncodeJob]:
    """The jobs a farm gets for job: its parts when the episode is long (part_count),
    each with the time limit of its frames."""
    jobs = split_job(job, frames=frames, parts=part_count(frames, fps, settings))
    for each in jobs:
        count = each.part.frame_count if each.part is not None else frames
        each.time_limit_s = encode_time_limit_s(frames=count, width=width, height=height)
    return jobs


def video_job_ids(jobs: Iterable[EncodeJob]) -> list[str]:
    """One id per video: a split video's parts have their whole job's id."""
    return list(dict.fromkeys(j.part.parent_id if j.part else j.job_id for j in jobs))


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
