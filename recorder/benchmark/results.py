"""The benchmark's results files: one JSON document per run, a pydantic model with a version."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field

from encoder_worker.jobs import EncodeResult
from recorder.benchmark import results_file
from recorder.benchmark.portable import portable_location
from recorder.capture.record_loop import CaptureStats
from recorder.session import EpisodeReport, SessionReport

SCHEMA_VERSION = 1
STAGES = ("queue_wait", "fetch", "encode", "verify", "publish")

Mode = Literal["sync", "async"]


class BenchmarkConfig(BaseModel):
    """What was asked for: the settings the run was made with."""

    mode: Mode
    camera_mode: Literal["synthetic", "real"] = "synthetic"
    camera_sources: list[str] = Field(default_factory=list, description="real mode only; "
                                      "a file by its name, devices and URLs as given")
    episodes: int
    episode_time_s: float
    reset_time_s: float = 0.0
    fps: int
    cameras: int
    width: int
    height: int
    codec: str
    crf: int | None
    gop: int | None
    preset: str | None
    pix_fmt: str
    raw_format: str = Field(default="rgb24", description="pixel format of the raw frames")
    raw_compression: str = Field(default="none", description="compression of them")
    segment_frames: int
    video_encoding_workers: int = Field(description="local workers started; with --broker only "
                                                    "recorded, the farm's own workers are used")
    video_encoding_queue_size: int
    broker: str | None = Field(default=None, description="external farm, password removed "
                                "(a unix socket by its file name)")
    storage: str = Field(description="where this run's raw episodes and videos went: "
                                     "relative to the results file's folder, a local folder "
                                     "elsewhere by its name, or a URL (portable.py)")
    background_load: int = Field(default=0, description="--background-load processes")
    capture_nice: int = Field(default=0, description="--capture-nice: the recorder's nice value")
    share_capture_host: bool | None = Field(
        default=None, description="local workers encoded on the CPUs a capture left "
                                  "(--share-capture-host), else paused; None: not recorded")
    capture_cpus: float | None = Field(default=None,
                                       description="--capture-cpus; None: not recorded")
    encode_window_s: float | None = Field(
        default=None, description="--encode-window-s (0: episodes sent only when saved); "
                                  "None: not recorded (before windows existed: 0)")


class EnvironmentInfo(BaseModel):
    hostname: str
    platform: str
    cpu_model: str
    cpu_count: int
    python: str
    pyav: str
    ffmpeg: str
    ffmpeg_libraries: dict[str, str]
    codec: str
    codec_description: str
    broker_kind: str
    workers_answering: int = Field(
        default=0, description="workers that answered a ping before recording (async)")
    recorder_pid: int
    load_average_1m: float = Field(
        default=0.0, description="host load when the run started: other work skews timings")


class EpisodeTiming(BaseModel):
    episode: int
    started_at: float = Field(description="unix time of the first frame's deadline")
    capture_s: float
    frames: int = Field(description="frames captured per camera")
    late_frames: int
    late_slots: list[int] = Field(default_factory=list, description="the late ones' indices")
    writer_waits: int
    busy_ms_median: float = Field(default=0.0, description="the loop's work per slot (cameras, "
                                                           "robot, add_frame): median")
    busy_ms_p99: float = Field(default=0.0, description="the same, 99th percentile")
    read_ms_median: float = Field(default=0.0, description="of the loop's work per slot, the "
                                  "cameras' and robot's reads (synthetic cameras make their "
                                  "frames there): median")
    read_ms_p99: float = Field(default=0.0, description="the same, 99th percentile")
    first_slot_busy_ms: float = Field(
        default=0.0, description="the loop's work in the episode's first slot, where it "
                                 "starts the episode's writers (0: not recorded)")
    overrun_slots: list[int] = Field(
        default_factory=list, description="slots whose own work (not waiting) took longer "
                                          "than a period: late whatever else ran")
    frames_recorded: dict[str, int] = Field(description="camera -> frames in its manifest")
    raw_bytes: int = Field(default=0, description="raw bytes stored or shipped, all cameras")
    save_s: float = Field(validation_alias=AliasChoices("save_s", "finalize_s"),
                          description="how long save_episode() held the robot")
    commit_s: float = Field(default=0.0, description="async: the episode's commit, run "
                                                     "behind the next episode's capture")
    submission_s: float
    inline_encode_s: float
    backlog: int = Field(default=0, description="farm: episodes recorded and not encoded yet "
                                                "once this one reached the farm")
    job_ids: list[str]

    @property
    def capture_end(self) -> float:
        return self.started_at + self.capture_s


class TaskTiming(BaseModel):
    """One encode job as the worker (or, for sync, the recorder) reported it."""

    job_id: str
    episode: int
    camera: str
    status: str
    error: str | None = None
    frames: int
    bytes: int
    worker: str = Field(description="host:pid that ran the encode")
    submitted_at: float
    started_at: float
    finished_at: float
    queue_wait_s: float
    fetch_s: float
    encode_s: float
    verify_s: float
    publish_s: float
    total_s: float
    beside_capture: str = Field(default="", description="how the worker shared its host with "
                                "the capture (EncodeResult.beside_capture); '': none")

    @property
    def worker_s(self) -> float:
        """Seconds a worker spent on the job, its start to its finish; no queue wait in it.

        Measured from the worker's own timestamps: EncodeResult.timings.total_s already
        leaves the queue wait out, so total_s - queue_wait_s would count it twice.
        """
        return self.finished_at - self.started_at


class StageStats(BaseModel):
    mean_s: float
    max_s: float


class Totals(BaseModel):
    total_recording_s: float = Field(description="recorder busy: capture + blocking encode or "
                                                 "submission, first frame to recorder free")
    capture_s: float
    encoding_s: float = Field(description="sync: recorder blocked encoding; async: worker time")
    blocking_s: float = Field(description="all that save_episode() made the robot wait for: "
                                          "committing the episode (finalize), then inline "
                                          "encode (sync) or job submission (async)")
    submission_s: float
    blocking_pct: float = Field(description="blocking_s as a share of total_recording_s")
    drain_from_first_frame_s: float | None = Field(
        description="first frame to every video verified and published")
    drain_from_last_frame_s: float | None = Field(
        description="last frame to every video verified and published")
    frames_captured: int = Field(description="all cameras")
    frames_recorded: int = Field(description="frames in the committed manifests")
    frames_in_videos: int = Field(description="frames in verified videos")
    late_frames: int = Field(description="loop iterations that missed their capture slot")
    complete_after_last_frame_s: float | None = Field(
        default=None, description="the last captured frame to the dataset complete (finalize "
                                  "returned, meta/info.json counting every episode); None: it "
                                  "was not complete")
    complete_after_last_frame_ratio: float | None = Field(
        default=None, description="complete_after_last_frame_s over the capture time asked "
                                  "for: the slots captured, at the set fps")
    complete_after_start_ratio: float | None = Field(
        default=None, description="the first frame's slot to the dataset complete, over the "
                                  "capture time asked for: the total the user waits, in "
                                  "capture times (late slots that stretched the capture, and "
                                  "episode ends that blocked, are in it)")
    backlog_max: int = Field(default=0, description="farm: the largest backlog, in episodes "
                                                    "recorded and not encoded yet")
    raw_left_bytes: int = Field(default=0, description="raw bytes left under raw/ of the run's "
                                                       "storage at the end")
    raw_bytes_per_frame: float = Field(default=0.0, description="raw bytes stored (or shipped) "
                                                               "per recorded camera frame")
    recorder_cpu_ms_per_frame: float = Field(
        default=0.0, description="the recorder process's CPU (all threads) per captured camera "
                                 "frame: synthetic cameras, loop, raw writers, commits; sync: "
                                 "inline encodes too")
    tasks: int
    tasks_failed: int
    stages: dict[str, StageStats] = Field(description="per-stage worker timings over the tasks")
    workers_used: list[str]


class Verdict(BaseModel):
    level: Literal["good", "info", "warning"]
    code: str
    message: str
    fix: str | None = None


class BenchmarkResult(BaseModel):
    schema_version: int = SCHEMA_VERSION
    mode: Mode
    created_at: float = Field(default_factory=time.time)
    config: BenchmarkConfig
    environment: EnvironmentInfo
    started_at: float
    recording_done_at: float
    all_ready_at: float | None
    episodes: list[EpisodeTiming]
    tasks: list[TaskTiming]
    totals: Totals
    verdicts: list[Verdict] = Field(default_factory=list)
    compared_with: str | None = Field(default=None, description="results file of the other mode")
    command: str | None = Field(default=None, description="the command line that made it, "
                                "without paths of the machine (portable_command); None in "
                                "files made before it was kept")
    dataset_complete_at: float | None = Field(
        default=None, description="unix time the dataset was complete (None: it was not)")
    raw_storage: str = Field(description="as config.storage: nothing of the machine's folders")
    output_storage: str
    raw_kept: bool = False


def episode_timing(ep: EpisodeReport) -> EpisodeTiming:
    c = ep.capture or CaptureStats(frames=ep.frames)
    return EpisodeTiming(
        episode=ep.recording, started_at=c.started_at, capture_s=c.capture_s, frames=c.frames,
        late_frames=c.late_frames, late_slots=list(c.late_slots),
        writer_waits=c.writer_waits,
        busy_ms_median=c.busy_ms(0.5), busy_ms_p99=c.busy_ms(0.99),
        read_ms_median=c.read_ms(0.5), read_ms_p99=c.read_ms(0.99),
        first_slot_busy_ms=1000 * c.busy_s[0] if c.busy_s else 0.0,
        overrun_slots=c.overrun_slots,
        frames_recorded=dict(ep.frames_recorded), raw_bytes=ep.raw_bytes,
        save_s=ep.save_s,
        commit_s=ep.commit_s,
        submission_s=ep.submission_s, inline_encode_s=ep.inline_encode_s,
        backlog=ep.backlog, job_ids=list(ep.job_ids),
    )


def task_timing(r: EncodeResult) -> TaskTiming:
    t = r.timings
    return TaskTiming(
        job_id=r.job_id, episode=r.recording, camera=r.camera, status=r.status.value,
        error=r.error, frames=r.frames, bytes=r.bytes, worker=f"{r.worker_host}:{r.worker_pid}",
        submitted_at=r.started_at - t.queue_wait_s, started_at=r.started_at,
        finished_at=r.finished_at, queue_wait_s=t.queue_wait_s, fetch_s=t.fetch_s,
        encode_s=t.encode_s, verify_s=t.verify_s, publish_s=t.publish_s, total_s=t.total_s,
        beside_capture=r.beside_capture,
    )


def summarize(mode: Mode, episodes: Sequence[EpisodeTiming], tasks: Sequence[TaskTiming], *,
              cameras: int, started_at: float, recording_done_at: float,
              all_ready_at: float | None, recorder_cpu_s: float = 0.0,
              dataset_complete_at: float | None = None, raw_left_bytes: int = 0,
              fps: float | None = None) -> Totals:
    """The run's totals, from what was measured per episode and per task."""
    submission = sum(ep.submission_s for ep in episodes)
    committing = sum(ep.save_s for ep in episodes)
    if mode == "sync":
        encoding = sum(ep.inline_encode_s for ep in episodes)
        blocking = committing + encoding
    else:
        encoding = sum(t.worker_s for t in tasks if t.status != "failed")
        blocking = committing + submission
    total = recording_done_at - started_at
    stages = {}
    for stage in STAGES:
        values = [getattr(t, f"{stage}_s") for t in tasks]
        if values:
            stages[stage] = StageStats(mean_s=statistics.fmean(values), max_s=max(values))
    recorded = sum(sum(ep.frames_recorded.values()) for ep in episodes)
    captured = sum(ep.frames for ep in episodes) * cameras
    first = min((ep.started_at for ep in episodes), default=None)
    last = max((ep.capture_end for ep in episodes), default=None)
    capture = sum(ep.capture_s for ep in episodes)
    asked = capture_time_s(episodes, fps) if fps else capture
    after_last = None if dataset_complete_at is None or last is None \
        else dataset_complete_at - last
    return Totals(
        total_recording_s=total, capture_s=capture,
        encoding_s=encoding, blocking_s=blocking, submission_s=submission,
        blocking_pct=100 * blocking / total if total > 0 else 0.0,
        drain_from_first_frame_s=None if all_ready_at is None or first is None
        else all_ready_at - first,
        drain_from_last_frame_s=None if all_ready_at is None or last is None
        else all_ready_at - last,
        frames_captured=captured, frames_recorded=recorded,
        frames_in_videos=sum(t.frames for t in tasks if t.status != "failed"),
        late_frames=sum(ep.late_frames for ep in episodes),
        complete_after_last_frame_s=after_last,
        complete_after_last_frame_ratio=_ratio(after_last, asked),
        complete_after_start_ratio=_ratio(None if dataset_complete_at is None or first is None
                                          else dataset_complete_at - first, asked),
        backlog_max=max((ep.backlog for ep in episodes), default=0),
        raw_left_bytes=raw_left_bytes,
        raw_bytes_per_frame=sum(ep.raw_bytes for ep in episodes) / recorded if recorded else 0.0,
        recorder_cpu_ms_per_frame=1000 * recorder_cpu_s / captured if captured else 0.0,
        tasks=len(tasks), tasks_failed=sum(t.status == "failed" for t in tasks),
        stages=stages, workers_used=sorted({t.worker for t in tasks}),
    )


def capture_time_s(episodes: Sequence[EpisodeTiming], fps: float) -> float:
    """The capture time asked for: every slot captured, at the set fps. A loop that ran
    late took longer; that is time the user waited, not capture."""
    return sum(ep.frames for ep in episodes) / fps


def _ratio(part: float | None, whole: float | None) -> float | None:
    return None if part is None or not whole else part / whole


def from_session(report: SessionReport, *, config: BenchmarkConfig,
                 environment: EnvironmentInfo, raw_kept: bool = False, raw_left_bytes: int = 0,
                 output_dir: Path | None = None) -> BenchmarkResult:
    """A BenchmarkResult from a finished recording session.

    Args:
        raw_left_bytes: raw bytes left in the run's storage at the end (retention deletes
            an episode's once the dataset counts it).
        output_dir: where the results file goes: the run's storage is kept relative to it
            (portable_location), never as this machine's absolute path.
    """
    episodes = [episode_timing(ep) for ep in report.episodes]
    tasks = sorted((task_timing(r) for r in report.results), key=lambda t: t.started_at)
    totals = summarize(report.mode, episodes, tasks, cameras=config.cameras,
                       started_at=report.started_at, recording_done_at=report.recording_done_at,
                       all_ready_at=report.all_ready_at, recorder_cpu_s=report.recorder_cpu_s,
                       dataset_complete_at=report.dataset_complete_at,
                       raw_left_bytes=raw_left_bytes, fps=config.fps)
    return BenchmarkResult(
        mode=report.mode, config=config, environment=environment, started_at=report.started_at,
        recording_done_at=report.recording_done_at, all_ready_at=report.all_ready_at,
        dataset_complete_at=report.dataset_complete_at, episodes=episodes, tasks=tasks,
        totals=totals,
        raw_storage=portable_location(report.raw_storage, base=output_dir),
        output_storage=portable_location(report.output_storage, base=output_dir),
        raw_kept=raw_kept,
    )


def result_path(output_dir: Path, result: BenchmarkResult) -> Path:
    """<mode>_benchmark_<unix-ts>.json, the unix time being when the run started."""
    return output_dir / f"{result.mode}_benchmark_{int(result.started_at)}.json"


def load(path: Path) -> BenchmarkResult:
    """Read a `recorder benchmark` results file.

    Raises:
        ResultsFileError: missing, not JSON of this schema, or of a newer schema version.
    """
    return results_file.load(path, BenchmarkResult, what="a benchmark results file",
                             newest=SCHEMA_VERSION, upgrade="upgrade the recorder")
