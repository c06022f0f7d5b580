"""Benchmark settings: the recorder's, with the benchmark's defaults and its own choices."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from recorder.settings import RecorderSettings

# Recorder fields that make no sense for a benchmark: it always waits for every video,
# and names its datasets itself.
NOT_FLAGS = ("wait", "repo_id", "camera")


class BenchmarkSettings(RecorderSettings):
    episodes: int = Field(default=2, ge=1, description="episodes per benchmark run")
    episode_time: float = Field(default=30.0, gt=0, le=3600, description="seconds per episode")
    cameras: int = Field(default=1, ge=1, le=16, description="synthetic cameras")
    output_dir: Path = Field(default=Path("benchmark_results"),
                             description="results files, charts and the runs' datasets")

    compare: bool = Field(
        default=False, description="run sync, then async, and compare (overrides --async-encoding)")
    mode: Literal["synthetic", "real"] = Field(
        default="synthetic", description="synthetic cameras, or the --camera sources")
    camera: list[str] = Field(
        default_factory=list, description="real mode: a V4L2 device, stream URL or video file")
    background_load: int = Field(
        default=0, ge=0, le=64,
        description="processes of reproducible background load during each run's capture, "
                    "at normal priority: CPU work plus 64 MB written and fsynced every 2 s "
                    "each (recorder/benchmark/background.py)")

    def modes(self) -> list[Literal["sync", "async"]]:
        """The runs to make, in the order the report reads them."""
        if self.compare:
            return ["sync", "async"]
        return ["async"] if self.async_encoding else ["sync"]

    @property
    def camera_count(self) -> int:
        return len(self.camera) if self.mode == "real" else self.cameras
