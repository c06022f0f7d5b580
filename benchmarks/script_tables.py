"""The tables of the benchmarks/*.py scripts' results files, as the README and the scripts
themselves print them."""

from __future__ import annotations

import statistics
from pathlib import Path

from markdown_tables import Table, joined
from result_files import (
    RawFormatsResult,
    RawTransportResult,
    SplitEpisodeResult,
    StatusLatencyResult,
    SvtThreadsResult,
    WorkerEfficiencyResult,
)

# worker_efficiency.py's paths, as the README names them.
WORKER_PATHS = {
    "bare yuv420p": "bare PyAV, yuv420p frames from memory (as root: SVT's threads real-time)",
    "bare yuv420p, threads demoted": "bare PyAV, the same, SVT's threads demoted as the "
                                     "workers' are (any encode not run as root)",
    "bare + verify, threads demoted": "bare PyAV, threads demoted, with the worker's "
                                      "verification (every packet decoded as it comes)",
    "bare rgb24": "bare PyAV from rgb24 frames (what an inline encoder is given)",
    "worker": "worker: `encode_job` (read ahead, encode, verify, check the file, publish)",
    "bare yuv420p, threads demoted, worker's SVT level":
        "bare PyAV, threads demoted, at the worker's SVT-AV1 level of parallelism",
    "bare + verify, threads demoted, worker's SVT level":
        "bare PyAV, threads demoted, the worker's verification and SVT level",
}
# (numerator, denominator): the ratios the README compares, per round.
WORKER_RATIOS = [
    ("worker", "bare yuv420p, threads demoted"),
    ("worker", "bare yuv420p"),
    ("bare + verify, threads demoted", "bare yuv420p, threads demoted"),
    ("worker", "bare + verify, threads demoted"),
    ("worker", "bare yuv420p, threads demoted, worker's SVT level"),
    ("bare + verify, threads demoted, worker's SVT level",
     "bare yuv420p, threads demoted, worker's SVT level"),
    ("worker", "bare + verify, threads demoted, worker's SVT level"),
]
STAGES = ("fetch_s", "encode_s", "verify_s", "publish_s", "total_s")


def _fps(result: WorkerEfficiencyResult) -> dict[str, list[float]]:
    return {path: [result.frames / s for s in seconds] for path, seconds in result.seconds.items()}


def _cpu_ms_per_frame(result: WorkerEfficiencyResult, path: str) -> float | None:
    cpu = result.cpu_seconds.get(path)
    return statistics.median(cpu) * 1000 / result.frames if cpu else None


def worker_efficiency(result: WorkerEfficiencyResult, source: Path | None = None) -> Table:
    """fps of each path per round and their median; with the CPU it used per frame, in
    files that measured it."""
    with_cpu = bool(result.cpu_seconds)
    rows = []
    for path, values in _fps(result).items():
        row = [WORKER_PATHS.get(path, path), joined(f"{v:.1f}" for v in values),
               f"{statistics.median(values):.1f}"]
        if with_cpu:
            cpu_ms = _cpu_ms_per_frame(result, path)
            row.append("-" if cpu_ms is None else f"{cpu_ms:.2f}")
        rows.append(row)
    header = ["path", "fps per round", "median fps"]
    if with_cpu:
        header.append("median CPU ms per frame (all threads)")
    return Table(header, rows, right=[False, False, *[True] * (len(header) - 2)],
                 sources=[source] if source else [])


def worker_ratios(result: WorkerEfficiencyResult, source: Path | None = None) -> Table:
    """The paths' fps against each other, per round (rounds are interleaved) and median;
    then the worker's stages."""
    fps = _fps(result)
    rows = []
    for top, bottom in WORKER_RATIOS:
        if top not in fps or bottom not in fps:
            continue  # a file from before that path was measured
        ratios = [a / b for a, b in zip(fps[top], fps[bottom], strict=True)]
        rows.append([f"{top} / {bottom}", joined(f"{r:.3f}" for r in ratios),
                     f"**{statistics.median(ratios):.3f}**"])
    stages = ", ".join(f"{key.removesuffix('_s')} "
                       f"{statistics.median(s[key] for s in result.worker_stages):.2f}"
                       for key in STAGES)
    rows.append(["worker stages, median s", stages, ""])
    return Table(["fps ratio", "per round", "median"], rows, right=[False, False, True],
                 sources=[source] if source else [])


def raw_formats(result: RawFormatsResult, source: Path | None = None) -> Table:
    """Per raw format, medians over the rounds."""
    rgb = result.rgb24_bytes_per_frame
    medians = {(f.pix_fmt, f.compression): {
        key: statistics.median(getattr(sample, key) for sample in f.rounds)
        for key in ("bytes_per_frame", "write_cpu_ms", "read_cpu_ms")} for f in result.formats}
    base = medians.get(("rgb24", "none"))
    rows = []
    for (pix_fmt, compression), m in medians.items():
        over = "-" if base is None else f"{m['write_cpu_ms'] - base['write_cpu_ms']:+.2f}"
        rows.append([pix_fmt, compression, f"{m['bytes_per_frame'] / 1024:.0f}",
                     f"{m['bytes_per_frame'] / rgb:.2f}", f"{m['write_cpu_ms']:.2f}", over,
                     f"{m['read_cpu_ms']:.2f}", f"{m['bytes_per_frame'] * 4 * 30 / 1e6:.0f}"])
    return Table(["raw format", "compression", "KiB per frame", "x rgb24",
                  "robot CPU ms per frame (write)", "over rgb24 none, ms",
                  "worker CPU ms per frame (read)", "MB/s for 4 cameras at 30 fps"], rows,
                 right=[False, False, *[True] * 6], sources=[source] if source else [])


def raw_transport(result: RawTransportResult, source: Path | None = None) -> Table:
    """Per transport: the robot's CPU and MB/s (medians over the rounds), and the dB the
    final video loses against raw frames stored uncompressed."""
    base = next((o.psnr_db for o in result.options if o.compression == "none"), None)
    rows = []
    for option in result.options:
        size = statistics.median(s.bytes_per_frame for s in option.rounds)
        cpu = statistics.median(s.write_cpu_ms for s in option.rounds)
        read = statistics.median(s.read_cpu_ms for s in option.rounds)
        lost = "-" if base is None else f"{base - option.psnr_db:.3f}"
        rows.append([option.compression, f"{size / 1024:.0f}", f"{cpu:.1f}", f"{read:.1f}",
                     f"{size * result.fps * result.cameras / 1e6:.1f}",
                     f"{option.psnr_db:.2f}", lost])
    return Table(["yuv420p raw, compression", "KiB per frame", "robot CPU ms per frame",
                  "worker CPU ms per frame (read)",
                  f"MB/s for {result.cameras} cameras at {result.fps} fps",
                  "final video PSNR dB", "dB lost against none"], rows,
                 right=[False, *[True] * 6], sources=[source] if source else [])


def split_episode(result: SplitEpisodeResult, source: Path | None = None) -> Table:
    """Latency per (K, parts) against the goal 1.2 x T1 / K (T1: K = 1 unsplit)."""
    base = next((r.latency_s for r in result.runs if r.workers == 1 and r.parts == 1), None)
    rows = []
    for run in result.runs:
        goal = "-" if base is None else f"{1.2 * base / run.workers:.1f}"
        ratio = "-" if base is None else f"{run.latency_s / (base / run.workers):.2f}"
        rows.append([str(run.workers), str(run.parts) if run.parts > 1 else "unsplit",
                     f"{run.latency_s:.1f}", goal, ratio, f"{run.worker_s:.1f}",
                     f"{run.join_s:.2f}"])
    return Table(["K workers", "parts", "latency s", "goal 1.2 x T1/K s", "latency / (T1/K)",
                  "worker time s", "join s"], rows, right=[True] * 7,
                 sources=[source] if source else [])


def status_latency(result: StatusLatencyResult, source: Path | None = None) -> Table:
    """Per case: the CLI's and farm_status()'s time, median and range over the repeats."""
    def spread(values: list[float]) -> str:
        return (f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")

    rows = [[str(case.workers), f"{case.queue_depth:,}", spread(case.cli_s), spread(case.api_s),
             f"{statistics.median(case.answered_in_s):.3f}"] for case in result.cases]
    return Table(["workers answering", "jobs queued",
                  "`encoder-worker status --json` s, median (range)",
                  "farm_status() s, median (range)", "its answered_in_s, median"], rows,
                 right=[True] * 5, sources=[source] if source else [])


def svt_threads(result: SvtThreadsResult, source: Path | None = None) -> Table:
    """Per SVT-AV1 thread count, each encode's CPU and wall seconds and their medians."""
    rows = []
    for lp, cpu in result.cpu_s.items():
        wall = result.wall_s[lp]
        name = "SVT-AV1's own (`lp` unset)" if lp == "default" else f"`svtav1-params lp={lp}`"
        row = [name, str(len(cpu)), joined(f"{v:.2f}" for v in cpu),
               f"**{statistics.median(cpu):.2f}**", f"{statistics.median(wall):.2f}"]
        if result.span_s and result.encodes > 1:
            row.append(f"**{statistics.median(result.span_s[lp]):.2f}**")
        if result.memory_mb:
            row.append(f"{statistics.median(result.memory_mb[lp]):.0f}")
        rows.append(row)
    header = ["threads", "encodes", "CPU s per encode", "median CPU s", "median wall s"]
    if result.span_s and result.encodes > 1:
        header.append("median s for both (started together)")
    if result.memory_mb:
        header.append("median MB an encode grew its process by")
    return Table(header, rows, right=[False, True, False, *[True] * (len(header) - 3)],
                 sources=[source] if source else [])
