"""`recorder analyze`: summary tables across results files, and the charts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from recorder.benchmark import charts
from recorder.benchmark.results import BenchmarkResult, load

Metric = Callable[[BenchmarkResult], float | None]

# name -> how to read it from a result; a None value is left out of the statistics.
METRICS: dict[str, Metric] = {
    "total recording s": lambda r: r.totals.total_recording_s,
    "video encoding s": lambda r: r.totals.encoding_s,
    "blocking s": lambda r: r.totals.blocking_s,
    "blocking %": lambda r: r.totals.blocking_pct,
    "ready after first frame s": lambda r: r.totals.drain_from_first_frame_s,
    "ready after last frame s": lambda r: r.totals.drain_from_last_frame_s,
    "queue wait mean s": lambda r: _stage(r, "queue_wait") if r.mode == "async" else None,
    "fetch mean s": lambda r: _stage(r, "fetch"),
    "encode mean s": lambda r: _stage(r, "encode"),
    "verify mean s": lambda r: _stage(r, "verify"),
    "publish mean s": lambda r: _stage(r, "publish"),
    "late frames": lambda r: r.totals.late_frames,
    "frames recorded": lambda r: r.totals.frames_recorded,
    "frames in videos": lambda r: r.totals.frames_in_videos,
    "workers used": lambda r: len(r.totals.workers_used),
}


def _stage(result: BenchmarkResult, stage: str) -> float | None:
    stats = result.totals.stages.get(stage)
    return None if stats is None else stats.mean_s


def runs_table(named: Sequence[tuple[str, BenchmarkResult]]) -> Table:
    """One row per results file."""
    table = Table(title="Benchmark runs")
    table.add_column("file", no_wrap=True)
    for column in ("mode", "workers", "episodes", "cameras", "size", "codec",
                   "recording s", "encoding s", "blocking %", "verdicts"):
        table.add_column(column, justify="right")
    for name, r in named:
        c, t = r.config, r.totals
        warnings = sum(v.level == "warning" for v in r.verdicts)
        table.add_row(name, r.mode, str(c.video_encoding_workers) if r.mode == "async" else "-",
                      f"{c.episodes} x {c.episode_time_s:g}s", str(c.cameras),
                      f"{c.width}x{c.height}@{c.fps}", c.codec, f"{t.total_recording_s:.2f}",
                      f"{t.encoding_s:.2f}", f"{t.blocking_pct:.1f}",
                      f"{warnings} warning(s)" if warnings else "ok")
    return table


def summary_table(results: Sequence[BenchmarkResult]) -> Table:
    """Mean, min and max of every metric per mode, sync and async side by side."""
    modes = [m for m in ("sync", "async") if any(r.mode == m for r in results)]
    table = Table(title="Summary across files (mean / min / max)")
    table.add_column("metric")
    for mode in modes:
        count = sum(r.mode == mode for r in results)
        for stat in ("mean", "min", "max"):
            table.add_column(f"{mode} {stat}" + (f" (n={count})" if stat == "mean" else ""),
                             justify="right")
    for name, metric in METRICS.items():
        row = [name]
        for mode in modes:
            values = [v for r in results if r.mode == mode and (v := metric(r)) is not None]
            if values:
                row += [_fmt(statistics.fmean(values)), _fmt(min(values)), _fmt(max(values))]
            else:
                row += ["-", "-", "-"]
        table.add_row(*row)
    return table


def _fmt(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


def write_charts(results: Sequence[BenchmarkResult], output_dir: Path) -> list[Path]:
    """The timeline chart, and the worker-count chart when the async runs differ in workers."""
    stamp = int(time.time())
    ordered = sorted(results, key=lambda r: (r.mode != "sync", r.config.video_encoding_workers,
                                             r.started_at))
    paths = [charts.timeline_chart(ordered, output_dir / f"timeline_{stamp}.png")]
    workers = {r.config.video_encoding_workers for r in results if r.mode == "async"}
    if len(workers) > 1:
        paths.append(charts.workers_chart(ordered, output_dir / f"workers_{stamp}.png"))
    return paths


def analyze(files: Sequence[Path], *, output_dir: Path | None, console: Console) -> list[Path]:
    """Print the tables of the results files and write their charts; returns the charts.

    Raises:
        ResultsFileError: a file is missing or not a results file.
    """
    results = [load(path) for path in files]
    console.print(runs_table([(path.name, r) for path, r in zip(files, results, strict=True)]))
    console.print(summary_table(results))
    return write_charts(results, output_dir or files[0].parent)
