"""Results files of the LeRobot comparisons (issue 18), one JSON document each, a pydantic
model with a version and nothing of the machine's folders in it (portable.py):

    lerobot_compare_<unix time>.json   `recorder benchmark lerobot`: the same loop and frames
                                       through LeRobot's own dataset (inline, streaming) and
                                       through the farm
    lerobot_record_<unix time>.json    `recorder benchmark lerobot-record`: plain lerobot-record
                                       against `recorder lerobot-record`, LeRobot's own loop
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, Field

from recorder.benchmark import results_file
from recorder.benchmark.results import EnvironmentInfo

SCHEMA_VERSION = 1

Variant = Literal["lerobot_inline", "lerobot_streaming", "farm"]
ORDER: tuple[Variant, ...] = ("lerobot_inline", "lerobot_streaming", "farm")  # as they run
VARIANTS: dict[str, str] = {
    "lerobot_inline": "LeRobot inline (lerobot-record's 4 image-writer threads per camera)",
    "lerobot_streaming": "LeRobot streaming (streaming_encoding, encoder queue of 30)",
    "farm": "FarmDataset on the farm",
}
RecordCommand = Literal["lerobot-record", "recorder lerobot-record"]


class ComparisonFailed(Exception):
    """A comparison's run failed; the message says which, why, and where the runs before
    it were saved."""


class LeRobotBenchmark(BaseModel):
    """What every LeRobot comparison's file holds besides its runs."""

    schema_version: int = SCHEMA_VERSION
    benchmark: str
    command: str | None = Field(default=None, description="the command line, without paths "
                                                          "of the machine")
    started_at: float = Field(description="unix time the comparison started")
    lerobot: str = Field(description="the LeRobot version measured")
    environment: EnvironmentInfo


# -- `recorder benchmark lerobot` --------------------------------------------------------------

class ComparisonConfig(BaseModel):
    camera_mode: Literal["synthetic", "real"]
    camera_sources: list[str] = Field(default_factory=list, description="real mode: each file "
                                      "by its name, devices and URLs as given")
    cameras: int
    width: int
    height: int
    fps: int
    episodes: int
    episode_time_s: float
    reset_time_s: float
    codec: str = Field(description="the encoder all three use (LeRobot's name for it too)")
    crf: int | None
    gop: int | None
    preset: str | None
    pix_fmt: str
    image_writer_threads: int = Field(description="LeRobot: lerobot-record's 4 per camera")
    encoder_queue_maxsize: int = Field(description="LeRobot streaming: frames a camera's "
                                                   "encoder queue holds")
    video_encoding_workers: int = Field(description="the farm's local workers (with --broker "
                                                    "only recorded)")
    broker: str | None = None
    capture_nice: int = 0


class ComparedEpisode(BaseModel):
    episode: int
    frames: int = Field(description="loop slots, each one add_frame: the episode's data rows")
    rows: int = Field(description="rows the dataset holds for it (0: not in the dataset)")
    late_slots: list[int]
    overrun_slots: list[int] = Field(description="slots whose own work took over a period")
    busy_ms_median: float
    busy_ms_p99: float
    read_ms_median: float = Field(description="of busy, the cameras' and robot's reads")
    capture_s: float = Field(description="the episode's capture, its first slot to its last")
    save_s: float = Field(description="save_episode(): how long the loop was blocked")
    frames_in_videos: dict[str, int] = Field(
        default_factory=dict, description="camera -> frames decoded from its video between "
                                          "the episode's from and to timestamps")

    @property
    def lost(self) -> dict[str, int]:
        """camera -> frames added that its video does not hold."""
        return {camera: self.frames - found for camera, found in self.frames_in_videos.items()}


class ComparedRun(BaseModel):
    variant: Variant
    dataset: str = Field(description="where it went, relative to the results file's folder")
    started_at: float = Field(description="unix time of the first frame's slot")
    last_frame_at: float = Field(description="unix time the last frame's slot ended")
    complete_at: float | None = Field(description="unix time finalize() returned with every "
                                                  "episode in the dataset; None: it was not")
    process_cpu_s: float = Field(description="the recording process (all its threads), the "
                                             "first frame to the dataset complete")
    children_cpu_s: float = Field(
        description="CPU of its child processes that ended meanwhile: LeRobot inline's "
                    "encoder pool; the zero-config farm's workers and redis-server (counted "
                    "when the farm stopped)")
    cameras: list[str]
    capture_time_s: float = Field(description="the capture time asked for: every slot at the "
                                              "set fps (a late loop took longer)")
    episodes: list[ComparedEpisode]

    @property
    def slots(self) -> int:
        return sum(ep.frames for ep in self.episodes)

    @property
    def late(self) -> int:
        return sum(len(ep.late_slots) for ep in self.episodes)

    @property
    def complete_after_last_frame_s(self) -> float | None:
        return None if self.complete_at is None else self.complete_at - self.last_frame_at

    @property
    def complete_ratio(self) -> float | None:
        """The dataset complete after the last frame, as a multiple of the capture time."""
        after = self.complete_after_last_frame_s
        return None if after is None or not self.capture_time_s else after / self.capture_time_s

    @property
    def complete_from_start_ratio(self) -> float | None:
        """The first frame to the dataset complete, over the capture time: what the user
        waits in all (a capture stretched by late slots, episode ends that blocked)."""
        if self.complete_at is None or not self.capture_time_s:
            return None
        return (self.complete_at - self.started_at) / self.capture_time_s

    @property
    def lost(self) -> dict[str, int]:
        """camera -> frames lost over every episode."""
        return {camera: sum(ep.lost.get(camera, ep.frames) for ep in self.episodes)
                for camera in self.cameras}

    def cpu_ms_per_frame(self, seconds: float) -> float:
        frames = self.slots * len(self.cameras)
        return 1000 * seconds / frames if frames else 0.0


class LeRobotComparison(LeRobotBenchmark):
    benchmark: Literal["lerobot_compare"] = "lerobot_compare"
    config: ComparisonConfig
    runs: list[ComparedRun] = Field(default_factory=list, description="in the order they ran")


# -- `recorder benchmark lerobot-record` -------------------------------------------------------

class RecordConfig(BaseModel):
    """What both commands were asked to record."""
    camera_mode: Literal["synthetic", "real"]
    camera_sources: list[str] = Field(default_factory=list)
    cameras: int
    width: int
    height: int
    fps: int
    episodes: int
    episode_time_s: float
    reset_time_s: float
    video_encoding_workers: int = Field(description="recorder lerobot-record's local workers")

    @property
    def cycles_asked(self) -> int:
        """Cycles an episode should run: fps x episode time."""
        return round(self.fps * self.episode_time_s)


class RecordEpisode(BaseModel):
    """One episode of LeRobot's own record_loop, as its sleeps between cycles tell it."""

    episode: int
    cycles: int
    late_cycles: list[int] = Field(description="cycles whose work took a whole period: the "
                                               "loop asked precise_sleep for 0 s")
    work_ms: list[float] = Field(description="each cycle's work: its start to its sleep")
    loop_s: float = Field(default=0.0, description="the episode's record_loop, called to "
                                                   "returned: a loop whose sleeps overran "
                                                   "ran fewer cycles than fps x episode time")

    def work_quantile_ms(self, quantile: float) -> float:
        if not self.work_ms:
            return 0.0
        ordered = sorted(self.work_ms)
        return ordered[min(len(ordered) - 1, round(quantile * (len(ordered) - 1)))]


class RecordRun(BaseModel):
    command: RecordCommand
    argv: list[str] = Field(description="its flags, without paths of the machine")
    exit_code: int
    error: str | None = Field(default=None, description="what it raised, if it did")
    dataset: str
    episodes: list[RecordEpisode]
    save_s: list[float] = Field(description="each save_episode()'s duration, in call order")
    last_frame_at: float | None = Field(description="unix time the last episode's loop ended")
    complete_at: float = Field(description="unix time record() returned (finalized)")

    @property
    def cycles(self) -> int:
        return sum(ep.cycles for ep in self.episodes)

    @property
    def late(self) -> int:
        return sum(len(ep.late_cycles) for ep in self.episodes)

    @property
    def complete_after_last_frame_s(self) -> float | None:
        return None if self.last_frame_at is None else self.complete_at - self.last_frame_at

    @property
    def work_ms_median(self) -> float:
        work = [w for ep in self.episodes for w in ep.work_ms]
        return statistics.median(work) if work else 0.0


class LeRobotRecordComparison(LeRobotBenchmark):
    benchmark: Literal["lerobot_record"] = "lerobot_record"
    config: RecordConfig
    runs: list[RecordRun] = Field(default_factory=list)


# -- writing and reading -----------------------------------------------------------------------

R = TypeVar("R", bound=LeRobotBenchmark)


def result_path(output_dir: Path, result: LeRobotBenchmark) -> Path:
    """<benchmark>_<unix time it started>.json in output_dir."""
    return output_dir / f"{result.benchmark}_{int(result.started_at)}.json"


def load(path: Path, model: type[R]) -> R:
    """Read one comparison's results file.

    Raises:
        ResultsFileError: missing, another kind's, not this schema, or newer.
    """
    return results_file.load(path, model, what="a LeRobot comparison's results file",
                             newest=SCHEMA_VERSION, upgrade="upgrade the recorder")


# -- issue 18's goal ---------------------------------------------------------------------------

GOAL_BLOCKED_S = 0.020
GOAL = "the farm: 0 late loop cycles, <= 20 ms blocked at each episode end, 0 frames lost"


def goal_misses(run: ComparedRun) -> list[str]:
    """What keeps a farm run from issue 18's goal; empty when it meets it."""
    misses = []
    if run.late:
        misses.append(f"{run.late} late cycles")
    if blocked := [ep.save_s for ep in run.episodes if ep.save_s > GOAL_BLOCKED_S]:
        misses.append(f"blocked {max(blocked) * 1000:.0f} ms at an episode end")
    if lost := sum(max(0, n) for n in run.lost.values()):
        misses.append(f"{lost} frames lost")
    if run.complete_at is None:
        misses.append("the dataset was not complete")
    return misses
