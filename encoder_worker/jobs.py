"""The wire contract between recorder and workers: EncodeJob in, EncodeResult out (JSON)."""

from __future__ import annotations

import itertools
import time
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from encoder_worker.raw_episode import Manifest

# 2: `episode` became `recording` (the recording number, not LeRobot's episode index).
SCHEMA_VERSION = 2
# The Celery queue that recorders send EncodeJobs to and workers take them from.
ENCODE_QUEUE = "encode"


class Status(StrEnum):
    SUCCEEDED = "succeeded"
    # The verified output was already published by an earlier copy of this job.
    ALREADY_DONE = "already_done"
    # A window of an episode that the recorder cleared or interrupted: nothing is kept.
    DISCARDED = "discarded"
    FAILED = "failed"


class FailureReason(StrEnum):
    """Why a job failed, decided where it failed: a fixed set (metric labels, status,
    `encoder-worker failed`); the error message says the rest."""

    INVALID_PAYLOAD = "invalid_payload"  # not an EncodeJob this worker reads
    STORAGE_NOT_ALLOWED = "storage_not_allowed"  # outside the worker's allow-list
    STORAGE_MISMATCH = "storage_mismatch"  # the worker's mount is another folder
    RAW_EPISODE = "raw_episode"  # raw frames missing, corrupt, interrupted, invalid
    ENCODE = "encode"  # the codec failed
    VERIFY = "verify"  # the encoded video (or the joined parts) did not verify
    OUTPUT_TAKEN = "output_taken"  # the output key holds another recording's video
    STORAGE = "storage"  # a permanent storage error (missing bucket, refused, disk full)
    TRANSIENT_RETRIES = "transient_retries"  # transient errors outlasted the retries
    WORKER_DEATHS = "worker_deaths"  # its encodes killed their worker too often
    TIME_LIMIT = "time_limit"  # its encodes ran over the time limit too often
    REVOKED = "revoked"  # cancelled (Flower, `celery control revoke`)
    EXCEPTION = "exception"  # an unexpected error in the worker: see its log
    OTHER = "other"  # a failed result without a known reason (an older worker's)


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

    def svt_level(self) -> str | None:
        """SVT-AV1's level of parallelism these options give (svtav1-params lp=), if any."""
        params = self.extra.get("svtav1-params", "")
        return next((v for k, _, v in (p.partition("=") for p in params.split(":"))
                     if k == "lp"), None)

    def with_svt_level(self, level: int) -> EncoderOptions:
        """These options with SVT-AV1 at this level of parallelism (its threads), kept
        with the other svtav1-params (LeRobot's fast-decode=1); unchanged for another
        codec or where they give a level already. Threads change the speed, not the video."""
        if self.codec != "libsvtav1" or self.svt_level() is not None:
            return self
        params = self.extra.get("svtav1-params")
        extra = {**self.extra,
                 "svtav1-params": f"{params}:lp={level}" if params else f"lp={level}"}
        return self.model_copy(update={"extra": extra})

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


# Parts wait here, in the output storage, for their join; a dotted folder is no dataset's.
PARTS_ROOT = ".farm-parts"


def parts_folder(output_key: str) -> str:
    """Where the parts of the video at output_key wait for their join (output keys are
    unique per storage)."""
    return f"{PARTS_ROOT}/{output_key}.parts"


class PartSpec(BaseModel):
    """One part of a video, encoded apart and joined (encoder_worker/parts.py).

    The part's frames are [first_frame, first_frame + frame_count) of the raw episode; the
    parts of one video share its output_key and parent_id and tile its frames in order.
    Two kinds: a long episode split once it is saved (split_job: count known), and the
    windows of an episode encoded while it is recorded (window_frames set: windows are
    sent before the episode's length, so the count, is known; the last part, sent when
    the episode is saved, has it).
    """

    parent_id: str = Field(min_length=1, description="the whole video's job id: the id of "
                                                     "the one result the recorder gets")
    index: int = Field(ge=0)
    count: int | None = Field(default=None, ge=1, description="parts of the video; None: a "
                                                             "window sent while recording")
    first_frame: int = Field(ge=0)
    frame_count: int = Field(ge=1)
    window_frames: int | None = Field(default=None, ge=1, description="set: the video's "
                                      "parts are windows of this many frames (window_ranges)")

    @model_validator(mode="after")
    def _index_in_count(self) -> Self:
        if self.count is None and self.window_frames is None:
            raise ValueError("a part without a count must be a window (window_frames)")
        if self.count is not None and self.index >= self.count:
            raise ValueError(f"part index {self.index} is not below its count {self.count}")
        return self


def window_ranges(frames: int, window_frames: int) -> list[tuple[int, int]]:
    """(first_frame, frame_count) of the parts of an episode of frames frames encoded in
    windows while recorded: whole windows, then the rest (1..window_frames frames).

    A window is sent once the frame after it is written, so the episode's last part is
    never empty and is the one sent when the episode is saved.
    """
    starts = range(0, max(frames, 1), window_frames)
    return [(first, min(window_frames, frames - first)) for first in starts]


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
    # A window sent while its episode is recorded: the raw episode's manifest is not
    # written yet, so the job carries what the window's frames need of it (its format
    # and the window's segments, raw_episode.window_of).
    window_manifest: Manifest | None = None
    submitted_at: float = Field(default_factory=time.time, description="unix time")

    @property
    def video_job_id(self) -> str:
        """The id of the video this job encodes, or encodes a part of (its one result's)."""
        return self.part.parent_id if self.part is not None else self.job_id

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
    # Set on every failed result (older workers sent none: read as OTHER).
    reason: FailureReason | None = None
    output_storage: str
    output_key: str
    frames: int = 0  # succeeded: the verified video's frame count
    # Succeeded: the verified video's duration (its stream's, as LeRobot reads it); None
    # when not verified by this job (already_done, older workers).
    duration_s: float | None = None
    bytes: int = 0
    codec: str = ""
    timings: Timings = Field(default_factory=Timings)
    worker_host: str = ""
    worker_pid: int = 0
    started_at: float = 0.0
    finished_at: float = 0.0
    # A part job's result: True when this job joined the parts and published the video.
    joined: bool = False
    # How the encode shared its host with a recorder's capture (priority.CaptureYield):
    # "capped at 1.30 CPUs", "on CPUs 1", "paused", "svtav1-params lp=1"; "": no capture.
    beside_capture: str = ""

    @field_validator("reason", mode="before")
    @classmethod
    def _known_reason(cls, reason: Any) -> Any:
        # A newer worker's reason that this release does not know is still a failure.
        if isinstance(reason, str):
            try:
                return FailureReason(reason)
            except ValueError:
                return FailureReason.OTHER
        return reason

    @model_validator(mode="after")
    def _failed_has_reason(self) -> Self:
        if self.status is Status.FAILED and self.reason is None:
            self.reason = FailureReason.OTHER
        return self

    @property
    def ok(self) -> bool:
        return self.status in (Status.SUCCEEDED, Status.ALREADY_DONE, Status.DISCARDED)

    @classmethod
    def failed(cls, job: EncodeJob, error: str, *, reason: FailureReason,
               **fields: Any) -> EncodeResult:
        """A FAILED result for job, with the reason."""
        return cls(job_id=job.job_id, recording=job.recording, camera=job.camera,
                   status=Status.FAILED, error=error, reason=reason,
                   output_storage=job.output_storage, output_key=job.output_key,
                   codec=job.options.codec, **fields)

    @classmethod
    def failed_payload(cls, payload: Any, error: str, *, reason: FailureReason,
                       **fields: Any) -> EncodeResult:
        """A FAILED result for a payload that may not be an EncodeJob: what it names."""
        values = payload if isinstance(payload, dict) else {}
        recording = values.get("recording")
        return cls(job_id=str(values.get("job_id", "?")),
                   recording=recording if isinstance(recording, int)
                   and not isinstance(recording, bool) else -1,
                   camera=str(values.get("camera", "?")), status=Status.FAILED, error=error,
                   reason=reason, output_storage=str(values.get("output_storage", "")),
                   output_key=str(values.get("output_key", "")), **fields)


class JobFailed(Exception):
    """Raised by the encode task with a failed job's result, so that Celery records the
    task as FAILURE (Flower, `celery events`, AsyncResult.state) and acknowledges it.

    Celery's JSON result backend keeps an exception as its type name, module and args:
    args are (summary, the EncodeResult as JSON data), so a client rebuilds the whole
    result (failed_result), whether or not it imported this module (Celery makes a
    stand-in class of the same name when it did not).
    """

    def __init__(self, summary: str, result: dict[str, Any]) -> None:
        super().__init__(summary, result)
        self.summary = summary
        self.result = result

    @classmethod
    def of(cls, result: EncodeResult) -> JobFailed:
        return cls(f"{result.reason}: {result.error}", result.model_dump(mode="json"))

    def __str__(self) -> str:
        return self.summary

    def __repr__(self) -> str:  # Celery's task-failed event carries this
        return f"{type(self).__name__}({self.summary!r})"


def failed_result(exc: BaseException) -> EncodeResult | None:
    """The result a JobFailed carries (the class itself or Celery's stand-in for it);
    None for any other exception."""
    args = exc.args
    if type(exc).__name__ != JobFailed.__name__ or len(args) != 2 \
            or not isinstance(args[1], dict):
        return None
    try:
        return EncodeResult.model_validate(args[1])
    except ValidationError:
        return None


def task_outcome(state: str, value: Any) -> EncodeResult | None:
    """The EncodeResult a run of the encode task ended with, from Celery's state and what
    the task returned (SUCCESS: the result as JSON data) or raised (FAILURE: JobFailed);
    None for a run that did not end its job (RETRY) or an exception without a result.

    Raises:
        ValidationError: a SUCCESS whose value is not an EncodeResult.
    """
    if state == "SUCCESS":
        return EncodeResult.model_validate(value)
    if state == "FAILURE" and isinstance(value, BaseException):
        return failed_result(value)
    return None


def merge_part_results(parent_id: str, parts: list[EncodeResult]) -> EncodeResult:
    """The one result of a video encoded as parts: failed if any part failed (the first
    failed part's reason); frames, bytes, verified durations and stage times summed
    (worker time), started_at..finished_at spanning them, each way a part shared its host
    with a capture named once."""
    if not parts:
        raise ValueError("merge_part_results needs at least one part's result")
    failed = [r for r in parts if not r.ok]
    last = max(parts, key=lambda r: (r.joined, r.finished_at))  # the joiner, if any
    timings = Timings(**{
        name: sum(getattr(r.timings, name) for r in parts) for name in Timings.model_fields})
    timings.queue_wait_s = min(r.timings.queue_wait_s for r in parts)
    reason = None
    if failed:
        status, error = Status.FAILED, "; ".join(r.error or "failed" for r in failed)
        reason = failed[0].reason
    elif any(r.status is Status.SUCCEEDED for r in parts):
        status, error = Status.SUCCEEDED, None
    else:
        status, error = Status.ALREADY_DONE, None
    durations = [r.duration_s for r in parts]
    # The join shifts each part by its real duration: the video's is their sum (up to
    # the floats' rounding).
    duration = None if failed or None in durations else sum(d or 0.0 for d in durations)
    return last.model_copy(update={
        "job_id": parent_id, "status": status, "error": error, "reason": reason,
        "frames": sum(r.frames for r in parts), "bytes": sum(r.bytes for r in parts),
        "duration_s": duration, "timings": timings, "joined": any(r.joined for r in parts),
        "beside_capture": ", ".join(dict.fromkeys(
            way for r in parts for way in r.beside_capture.split(", ") if way)),
        "started_at": min(r.started_at for r in parts),
        "finished_at": max(r.finished_at for r in parts)})
