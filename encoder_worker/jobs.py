"""The wire contract between recorder and workers: EncodeJob in, EncodeResult out (JSON)."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, field_validator

SCHEMA_VERSION = 1


class Status(StrEnum):
    SUCCEEDED = "succeeded"
    # The verified output was already published by an earlier copy of this job.
    ALREADY_DONE = "already_done"
    FAILED = "failed"


class EncoderOptions(BaseModel):
    """Codec settings; the defaults equal LeRobot's (libsvtav1, crf 30, g 2, preset 12)."""

    codec: str = "libsvtav1"
    crf: int | None = Field(default=30, ge=0, le=63)
    gop: int | None = Field(default=2, ge=1, description="keyframe interval (ffmpeg's -g)")
    pix_fmt: str = "yuv420p"
    preset: str | None = "12"
    # Extra ffmpeg codec options, passed through as strings.
    extra: dict[str, str] = Field(default_factory=dict)

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


class EncodeJob(BaseModel):
    """One (episode, camera) to encode: where its raw frames are and where the MP4 goes."""

    schema_version: int = SCHEMA_VERSION
    job_id: str
    episode: int = Field(ge=0)
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
    fetch_s: float = 0.0
    encode_s: float = 0.0
    verify_s: float = 0.0
    publish_s: float = 0.0
    total_s: float = 0.0


class EncodeResult(BaseModel):
    schema_version: int = SCHEMA_VERSION
    job_id: str
    episode: int
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

    @property
    def ok(self) -> bool:
        return self.status in (Status.SUCCEEDED, Status.ALREADY_DONE)

    @classmethod
    def failed(cls, job: EncodeJob, error: str, **fields: Any) -> EncodeResult:
        """A FAILED result for job, with the reason."""
        return cls(job_id=job.job_id, episode=job.episode, camera=job.camera,
                   status=Status.FAILED, error=error, output_storage=job.output_storage,
                   output_key=job.output_key, codec=job.options.codec, **fields)
