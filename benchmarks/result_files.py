"""The results files of the scripts in benchmarks/: one JSON document per run, a pydantic
model each, beside `recorder benchmark`'s own (recorder/benchmark/results.py).

Every file says what made it and where: the command line (no path of the machine in it),
the code's commit, the machine (CPU model, cores, Python, PyAV, FFmpeg), the date, and the
1-minute load average at the start, after waiting for a quiet machine when asked
(--quiet-load): on a shared machine, timings taken beside other work say little.
benchmarks/tables.py makes the README's tables from these files.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TypeVar

import av
from pydantic import BaseModel, Field

from recorder.benchmark import results_file
from recorder.benchmark.environment import cpu_count, cpu_model
from recorder.benchmark.portable import portable_command

SCHEMA_VERSION = 1
REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"


class Machine(BaseModel):
    cpu_model: str
    cores: int = Field(description="CPUs this process may run on")
    python: str
    pyav: str
    ffmpeg: str
    platform: str


class Load(BaseModel):
    """The host's 1-minute load average around the run: other work skews timings."""

    at_start: float = Field(description="when the measurement started (after any wait)")
    at_end: float
    quiet_below: float | None = Field(
        default=None, description="--quiet-load: the run waited for a load below this; "
                                  "at_start above it means the wait timed out")
    waited_s: float = 0.0


class ScriptResult(BaseModel):
    """What every script's results file holds besides its measurements."""

    schema_version: int = SCHEMA_VERSION
    benchmark: str
    command: str = Field(description="the command line, from the repository root")
    code: str | None = Field(description="git describe of the checkout (-dirty: changes "
                                         "not committed); None outside a checkout")
    started_at: datetime
    machine: Machine
    load: Load


# -- the scripts' measurements --------------------------------------------------------------

class WorkerEfficiencyResult(ScriptResult):
    benchmark: Literal["worker_efficiency"] = "worker_efficiency"
    frames: int
    width: int
    height: int
    rounds: int
    codec: str
    codec_options: dict[str, str]
    worker_codec_options: dict[str, str] = Field(
        default_factory=dict,
        description="the codec options the worker encoded with (encode.worker_codec_options); "
                    "empty in files written before workers chose SVT-AV1's threads")
    seconds: dict[str, list[float]] = Field(
        description="path (bare PyAV in its variants, the worker) -> seconds to encode the "
                    "frames, per round; rounds interleaved")
    worker_stages: list[dict[str, float]] = Field(
        description="the worker's EncodeResult.timings, per round")
    cpu_seconds: dict[str, list[float]] = Field(
        default_factory=dict,
        description="path -> CPU seconds of this process (every thread) for the same runs; "
                    "empty in files written before it was measured")


class SvtThreadsResult(ScriptResult):
    benchmark: Literal["svt_threads"] = "svt_threads"
    clip: str
    frames: int
    rounds: int
    cpu: int | str = Field(description="the CPUs both encodes of a round share (taskset's list)")
    idle: bool = Field(default=True, description="the encodes ran in SCHED_IDLE")
    verify: bool = Field(default=False,
                         description="each encode decoded its packets as workers do")
    cpu_s: dict[str, list[float]] = Field(
        description="SVT-AV1's lp (\"default\": its own) -> CPU seconds of each encode, "
                    "two per round unless encodes says otherwise, rounds alternated")
    encodes: int = Field(default=2, description="encodes at once per round")
    wall_s: dict[str, list[float]] = Field(description="the same encodes' wall seconds")
    span_s: dict[str, list[float]] = Field(
        default_factory=dict,
        description="lp -> seconds from a round's first encode start to its last end (the "
                    "encodes start together); empty in files written before it was measured")
    memory_mb: dict[str, list[float]] = Field(
        default_factory=dict,
        description="lp -> MB each encode's process grew by while it encoded (frames read "
                    "before); empty in files written before it was measured")


class RawFormatSample(BaseModel):
    bytes_per_frame: float
    write_cpu_ms: float = Field(description="the recorder's CPU (all threads) per frame written")
    write_wall_ms: float
    read_cpu_ms: float = Field(description="a worker's CPU per frame read back")


class RawFormatRounds(BaseModel):
    pix_fmt: str
    compression: str
    rounds: list[RawFormatSample]


class RawFormatsResult(ScriptResult):
    benchmark: Literal["raw_formats"] = "raw_formats"
    frames: int
    width: int
    height: int
    rounds: int
    rgb24_bytes_per_frame: int
    formats: list[RawFormatRounds]


class RawTransportOption(BaseModel):
    compression: str
    rounds: list[RawFormatSample] = Field(description="the robot's side, per round")
    psnr_db: float = Field(description="the final video against the camera's frames "
                                       "(yuv420p, all planes), encoded by the worker from "
                                       "the raw frames stored this way")


class RawTransportResult(ScriptResult):
    benchmark: Literal["raw_transport"] = "raw_transport"
    frames: int
    width: int
    height: int
    fps: int
    cameras: int = Field(description="the MB/s are for this many cameras")
    rounds: int
    codec: str
    codec_options: dict[str, str]
    options: list[RawTransportOption]


class SplitRun(BaseModel):
    workers: int
    parts: int = Field(description="1: unsplit")
    latency_s: float = Field(description="submission to the joined video published")
    worker_s: float = Field(description="the workers' time on the video, all parts and join")
    join_s: float


class SplitEpisodeResult(ScriptResult):
    benchmark: Literal["split_episode"] = "split_episode"
    seconds: float
    fps: int
    width: int
    height: int
    frames: int
    codec: str
    runs: list[SplitRun]


class StatusCase(BaseModel):
    workers: int = Field(description="workers answering the status broadcast")
    cli_s: list[float] = Field(description="`encoder-worker status --json`, Python start "
                                           "included, per repeat")
    api_s: list[float] = Field(description="farm_status() in a running process, per repeat")
    answered_in_s: list[float] = Field(description="farm_status()'s own answered_in_s")
    queue_depth: int = Field(description="the queue depth status reported")


class StatusLatencyResult(ScriptResult):
    benchmark: Literal["status_latency"] = "status_latency"
    queued_jobs: int
    repeats: int
    cases: list[StatusCase]


# -- writing and reading ------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every script shares: where its file goes, and the quiet-machine wait."""
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR,
                        help="where the results file goes (default: benchmarks/results)")
    parser.add_argument("--quiet-load", type=float, default=None, metavar="LOAD",
                        help="first wait until the 1-minute load average is below LOAD")
    parser.add_argument("--quiet-timeout-s", type=float, default=1200.0,
                        help="measure anyway after waiting this long (the file says so)")
    parser.add_argument("--quiet-poll-s", type=float, default=30.0)


def wait_for_quiet(below: float | None, *, timeout_s: float, poll_s: float) -> float:
    """Wait until the 1-minute load average is below `below`, or timeout_s; seconds waited."""
    started = time.monotonic()
    while below is not None and os.getloadavg()[0] >= below:
        waited = time.monotonic() - started
        if waited >= timeout_s:
            print(f"load average {os.getloadavg()[0]:.2f} still >= {below} after "
                  f"{waited:.0f} s: measuring anyway (the results file says so)",
                  file=sys.stderr, flush=True)
            break
        print(f"load average {os.getloadavg()[0]:.2f} >= {below}: waiting", file=sys.stderr,
              flush=True)
        time.sleep(poll_s)
    return time.monotonic() - started


def machine() -> Machine:
    return Machine(cpu_model=cpu_model(), cores=cpu_count(), python=platform.python_version(),
                   pyav=av.__version__, ffmpeg=str(getattr(av, "ffmpeg_version_info", "unknown")),
                   platform=platform.platform())


def code_version() -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def command_line(argv: list[str] | None = None) -> str:
    """This script's command line, from the repository root, with no path of this machine."""
    script = Path(sys.argv[0]).resolve()
    name = str(script.relative_to(REPO)) if script.is_relative_to(REPO) else script.name
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", name, *portable_command(args)])


class Header(BaseModel):
    """The fields begin() measures before a run; finish() adds the end load."""

    command: str
    code: str | None
    started_at: datetime
    machine: Machine
    load: Load


def begin(args: argparse.Namespace, argv: list[str] | None = None) -> Header:
    """Wait for a quiet machine if asked, then note what the run starts with."""
    waited = wait_for_quiet(args.quiet_load, timeout_s=args.quiet_timeout_s,
                            poll_s=args.quiet_poll_s)
    load = os.getloadavg()[0]
    return Header(command=command_line(argv), code=code_version(),
                  started_at=datetime.now(UTC).replace(microsecond=0), machine=machine(),
                  load=Load(at_start=load, at_end=load, quiet_below=args.quiet_load,
                            waited_s=round(waited, 1)))


R = TypeVar("R", bound=ScriptResult)


def save(result: R, output_dir: Path) -> Path:
    """<benchmark>_<unix time of the start>.json in output_dir; the load at the end noted."""
    result.load.at_end = os.getloadavg()[0]
    name = f"{result.benchmark}_{int(result.started_at.timestamp())}.json"
    return results_file.save(result, output_dir / name)


def load(path: Path, model: type[R]) -> R:
    """Read one script's results file.

    Raises:
        ResultsFileError: missing, another benchmark's, not this schema, or newer.
    """
    return results_file.load(path, model, what="a benchmarks/ results file",
                             newest=SCHEMA_VERSION, upgrade="update it")
