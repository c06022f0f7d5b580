"""The wire contract between recorder and workers: EncodeJob in, EncodeResult out (JSON)."""

from __future__ import annotations

import itertools
import time
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, Field, field_validator, model_validator

# 2: `episode` became `recording` (the recording number, not LeRobot's episode index).
SCHEMA_VERSION = 2
# The Celery queue that recorders send EncodeJobs to and workers take them from.
ENCODE_QUEUE = "encode"


class Status(StrEnum):
    SUCCEEDED = "succeeded"
    # The verified output was already published by an earlier copy of this job.
    ALREADY_DONE = "already_done"
    FAILED = "failed"


class EncoderOptions(BaseModel):
    """Codec settings; the defaults equal LeRobot's (libsvtav1, crf 30, g 2, preset 12)."""

    codec: str = Field(default="libsvtav1",
                       description="libsvtav1, libx264, libx265, h264_nvenc, av1_nvenc...")
    crf: int | None = Field(default=30, ge=0, le=63, description="constant rate factor")
    gop: int | None = Field(default=2, ge=1, description="keyframe interval (ffmpeg's -g)")
    pix_fmt: str = Field(default="yuv420p", description="pixel format of the video")
    preset: str | None = Field(default="12", description="encoder preset")
    extra: dict[str, str] = Field(default_factory=dict,
                                  description="more ffmpeg codec options, as strings")

    def codec_options(self) -> dict[str, str]:
        """The ffmpeg options for this codec, as PyAV takes them."""
        options: dict[str, str] = {}
        if self.gop is not None:
            options["g"] = str(self.gop)
        if self.crf is not None:
            # The NVENC encoders take a constant-quality target as "cq", not "crf".
            options["cq" if self.codec.endswith("_nvenc") else "crf"] = str(self.crf)
        if self.preset is not None:
            options["preset"] = self._preset_for_codec(self.preset)
        options.update(self.extra)
        return options

    def _preset_for_codec(self, preset: str) -> str:
        # libsvtav1 counts presets 0..13; x264/x265 name them. Map the default sensibly.
        if self.codec in ("libx264", "libx265") and preset.isdigit():
            return "ultrafast" if int(preset) >= 8 else "medium"
        if self.codec.endswith("_nvenc") and preset.isdigit():
            return "p1" if int(preset) >= 8 else "p4"
        return preset


# Time limits assume a worker encodes at least this many pixels a second (SVT-AV1 preset
# 12 did about 37 Mpx/s per encode on one core here; x264 veryslow at 1080p about 10):
# an encode this slow is hung or starved, and is stopped and retried.
SLOWEST_PIXELS_PER_S = 1_000_000
TIME_LIMIT_BASE_S = 300.0


def encode_time_limit_s(*, frames: int, width: int, height: int) -> float:
    """The soft time limit of encoding frames frames of width x height."""
    return TIME_LIMIT_BASE_S + frames * width * height / SLOWEST_PIXELS_PER_S


class PartSpec(BaseModel):
    """One part of a long episode's video, encoded apart and joined (encoder_worker/parts.py).

    The part's frames are [first_frame, first_frame + frame_count) of the raw episode; the
    parts of one video share its output_key and parent_id and tile its frames in order.
    """

    parent_id: str = Field(min_length=1, description="the whole video's job id: the id of "
                                                     "the one result the recorder gets")
    index: int = Field(ge=0)
    count: int = Field(ge=1)
    first_frame: int = Field(ge=0)
    frame_count: int = Field(ge=1)

    @model_validator(mode="after")
    def _index_in_count(self) -> Self:
        if self.index >= self.count:
            raise ValueError(f"part index {self.index} is not below its count {self.count}")
        return self


def split_frames(frames: int, parts: int) -> list[tuple[int, int]]:
    """(first_frame, frame_count) of parts near-equal parts of frames frames, in order."""
    bounds = [index * frames // parts for index in range(parts + 1)]
    return [(start, end - start) for start, end in itertools.pairwise(bounds)
            if end > start]


def split_job(job: EncodeJob, *, frames: int, parts: int) -> list[EncodeJob]:
    """The part jobs of job (job itself, unsplit, when parts <= 1).

    Each keeps the final output_key: a worker that ignores `part` (an older release)
    encodes the whole episode there instead, which is still correct.
    """
    if parts <= 1 or frames < 2:
        return [job]
    ranges = split_frames(frames, min(parts, frames))
    return [job.model_copy(update={
        "job_id": f"{job.job_id}-part{index:03d}",
        "part": PartSpec(parent_id=job.job_id, index=index, count=len(ranges),
                         first_frame=first, frame_count=count)})
        for index, (first, count) in enumerate(ranges)]


class EncodeJob(BaseModel):
    """One (episode, camera) to encode: where its raw frames are and where the MP4 goes."""

    schema_version: int = SCHEMA_VERSION
    job_id: str
    recording: int = Field(ge=0, description="the recording number: names the raw "
                                             "frames (raw_layout.py), not LeRobot's episode index")
    camera: str
    raw_storage: str = Field(description="storage URL holding the raw episode")
    raw_prefix: str = Field(description="key prefix of the raw episode in raw_storage")
    output_storage: str
    # Ids of local storage folders (STORAGE_ID_KEY): a worker that maps a folder to its own
    # mount checks that it is the same folder. None for S3 and older recorders.
    raw_storage_id: str | None = None
    output_storage_id: str | None = None
    time_limit_s: float | None = Field(
        default=None, gt=0, description="an encode running longer is stopped and retried "
                                        "(encode_time_limit_s); None: no limit")
    output_key: str = Field(description="where the video goes in output_storage; the "
                                        "recorder's dataset layout decides")
    options: EncoderOptions = Field(default_factory=EncoderOptions)
    # Set: encode only these frames, as one part of the video (split_job); None: all.
    part: PartSpec | None = None
    submitted_at: float = Field(default_factory=time.time, description="unix time")

    @field_validator("raw_prefix", "output_key")
    @classmethod
    def _key_inside_storage(cls, key: str) -> str:
        # Keys are relative to their storage: none may climb out of it.
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"key {key!r} must be relative and without '..' parts")
        return key

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, version: int) -> int:
        if version != SCHEMA_VERSION:
            raise ValueError(f"job schema_version {version}; this worker reads "
                             f"{SCHEMA_VERSION}: run the same release on recorder and workers")
        return version


class Timings(BaseModel):
    """Seconds per stage. total_s is the worker's time, start to publish; the queue wait
    comes before it (submission to start; clocks of two hosts, so only roughly)."""

    queue_wait_s: float = 0.0
    fetch_s: float = 0.0  # the encoder waiting for frames (they are read ahead)
    encode_s: float = 0.0  # encoding; every packet is decoded meanwhile, in a thread
    verify_s: float = 0.0  # after the last frame: the last decodes, the file's packets
    publish_s: float = 0.0
    join_s: float = 0.0  # a part job that joined the parts into the video: the join
    paused_s: float = 0.0  # --yield-to-capture: paused while a recorder captured
    total_s: float = 0.0


class EncodeResult(BaseModel):
    schema_version: int = SCHEMA_VERSION
    job_id: str
    recording: int
    camera: str
    status: Status
    error: str | None = None
    output_storage: str
    output_key: str
    frames: int = 0
    bytes: int = 0
    codec: str = ""
    timings: Timings = Field(default_factory=Timings)
    worker_host: str = ""
    worker_pid: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    # A part job's result: True when this job joined the parts and published the video.
    joined: bool = False

    @property
    def ok(self) -> bool:
        return self.status in (Status.SUCCEEDED, Status.ALREADY_DONE)

    @classmethod
    def failed(cls, job: EncodeJob, error: str, **fields: Any) -> EncodeResult:
        """A FAILED result for job, with the reason."""
        return cls(job_id=job.job_id, recording=job.recording, camera=job.camera,
                   status=Status.FAILED, error=error, output_storage=job.output_storage,
                   output_key=job.output_key, codec=job.options.codec, **fields)


def merge_part_results(parent_id: str, parts: list[EncodeResult]) -> EncodeResult:
    """The one result of a video encoded as parts: failed if any part failed; frames,
    bytes and stage times summed (worker time), started_at..finished_at spanning them."""
    if not parts:
        raise ValueError("merge_part_results needs at least one part's result")
    failed = [r for r in parts if not r.ok]
    last = max(parts, key=lambda r: (r.joined, r.finished_at))  # the joiner, if any
    timings = Timings(**{
        name: sum(getattr(r.timings, name) for r in parts) for name in Timings.model_fields})
    timings.queue_wait_s = min(r.timings.queue_wait_s for r in parts)
    if failed:
        status, error = Status.FAILED, "; ".join(r.error or "failed" for r in failed)
    elif any(r.status is Status.SUCCEEDED for r in parts):
        status, error = Status.SUCCEEDED, None
    else:
        status, error = Status.ALREADY_DONE, None
    return last.model_copy(update={
        "job_id": parent_id, "status": status, "error": error,
        "frames": sum(r.frames for r in parts), "bytes": sum(r.bytes for r in parts),
        "timings": timings, "joined": any(r.joined for r in parts),
        "started_at": min(r.started_at for r in parts),
        "finished_at": max(r.finished_at for r in parts)})
