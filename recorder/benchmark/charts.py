"""PNG charts of benchmark results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless robot hosts and CI have no display

import matplotlib.pyplot as plt

from recorder.benchmark.results import BenchmarkResult

CAPTURE_COLOUR = "tab:blue"
QUEUE_COLOUR = "lightgrey"
STAGE_COLOURS = {"fetch": "tab:purple", "encode": "tab:orange", "verify": "tab:green",
                 "publish": "tab:red"}
LANE_HEIGHT = 0.6


def run_label(result: BenchmarkResult) -> str:
    c = result.config
    workers = f", {c.video_encoding_workers} workers" if result.mode == "async" else ""
    return (f"{result.mode}{workers}: {c.episodes} x {c.episode_time_s:g}s, {c.cameras} cam, "
            f"{c.width}x{c.height}@{c.fps}, {c.codec}")


def timeline_chart(results: Sequence[BenchmarkResult], path: Path) -> Path:
    """Per run (stacked), the recorder's capture intervals and every task's queue wait and
    stages on the process that ran it; time in seconds from the run's first frame."""
    # One time axis for all runs, so that their lengths compare at a glance.
    fig, axes = plt.subplots(len(results), 1, squeeze=False, sharex=True,
                             figsize=(12, 1.2 + sum(1 + 0.5 * _lane_count(r) for r in results)))
    for ax, result in zip(axes[:, 0], results, strict=True):
        _timeline(ax, result)
    handles = [plt.Rectangle((0, 0), 1, 1, color=CAPTURE_COLOUR, label="capture"),
               plt.Rectangle((0, 0), 1, 1, color=QUEUE_COLOUR, hatch="//", label="queue wait")]
    handles += [plt.Rectangle((0, 0), 1, 1, color=c, label=s) for s, c in STAGE_COLOURS.items()]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _lanes(result: BenchmarkResult) -> list[str]:
    """The recorder first, then every worker process that ran a task."""
    recorder = f"{result.environment.hostname}:{result.environment.recorder_pid}"
    return [recorder, *sorted({t.worker for t in result.tasks} - {recorder})]


def _lane_count(result: BenchmarkResult) -> int:
    return len(_lanes(result))


def _timeline(ax: plt.Axes, result: BenchmarkResult) -> None:
    t0 = result.started_at
    lanes = _lanes(result)
    y = {name: i for i, name in enumerate(lanes)}
    for ep in result.episodes:
        ax.broken_barh([(ep.started_at - t0, ep.capture_s)], (-LANE_HEIGHT / 2, LANE_HEIGHT),
                       color=CAPTURE_COLOUR)
        ax.text(ep.started_at - t0 + ep.capture_s / 2, 0, f"ep {ep.episode}", ha="center",
                va="center", color="white", fontsize=8)
    for task in result.tasks:
        lane = y[task.worker]
        if result.mode == "async" and task.queue_wait_s > 0:
            ax.broken_barh([(task.submitted_at - t0, task.queue_wait_s)],
                           (lane - LANE_HEIGHT / 4, LANE_HEIGHT / 2), facecolor=QUEUE_COLOUR,
                           hatch="//", edgecolor="grey", linewidth=0)
        start = task.started_at - t0
        for stage, colour in STAGE_COLOURS.items():
            # Stages run one after another on the worker; their sum is a little under its
            # wall time (setup and bookkeeping between them).
            width = getattr(task, f"{stage}_s")
            ax.broken_barh([(start, width)], (lane - LANE_HEIGHT / 2, LANE_HEIGHT),
                           color=colour)
            start += width
        ax.text(task.started_at - t0, lane + LANE_HEIGHT / 2, f"ep{task.episode} {task.camera}",
                fontsize=6, va="bottom")
    done = result.recording_done_at - t0
    ax.axvline(done, color="black", linestyle="--", linewidth=1)
    ax.text(done, len(lanes) - 0.45, " recorder free", fontsize=7, va="top")
    if result.all_ready_at is not None and result.mode == "async":
        ready = result.all_ready_at - t0
        ax.axvline(ready, color="tab:green", linestyle=":", linewidth=1)
        ax.text(ready, -0.65, " all videos ready", fontsize=7, va="bottom", color="tab:green")
    labels = ["recorder" + (" (inline encode)" if result.mode == "sync" else "")]
    labels += [f"worker {name}" for name in lanes[1:]]
    ax.set_yticks(range(len(lanes)), labels, fontsize=8)
    ax.set_ylim(-0.7, len(lanes) - 0.3)
    ax.set_xlim(left=0)
    ax.set_xlabel("seconds since the run's first frame")
    ax.xaxis.set_tick_params(labelbottom=True)
    ax.set_title(run_label(result), fontsize=9, loc="left")
    ax.grid(axis="x", alpha=0.3)


def workers_chart(results: Sequence[BenchmarkResult], path: Path) -> Path:
    """Async runs by worker count: recording time, background encode and drain time (the
    mean of the runs with that count)."""
    runs = [r for r in results if r.mode == "async"]
    # Several runs with the same worker count: their mean.
    by_workers: dict[int, list[BenchmarkResult]] = {}
    for r in runs:
        by_workers.setdefault(r.config.video_encoding_workers, []).append(r)
    workers = sorted(by_workers)

    def mean(value: Callable[[BenchmarkResult], float | None]) -> list[float]:
        return [statistics.fmean(v if (v := value(r)) is not None else 0.0
                                 for r in by_workers[w]) for w in workers]

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(workers, mean(lambda r: r.totals.total_recording_s), "o-",
            label="recording time (recorder busy)")
    ax.plot(workers, mean(lambda r: r.totals.drain_from_first_frame_s), "s-",
            label="all videos ready, from first frame")
    ax.plot(workers, mean(lambda r: r.totals.encoding_s), "^-",
            label="background encoding (worker time, summed)")
    syncs = [r for r in results if r.mode == "sync"]
    if syncs:
        ax.axhline(syncs[0].totals.total_recording_s, color="grey", linestyle="--",
                   label="sync recording time")
    ax.set_xticks(workers)
    ax.set_xlabel("workers (--video-encoding-workers)")
    ax.set_ylabel("seconds")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Async encoding by worker count ({runs[0].environment.cpu_count} CPUs, "
                 f"{runs[0].config.codec})" if runs else "Async encoding by worker count")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
