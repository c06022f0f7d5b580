"""Tables of `recorder benchmark` results files, and of issue 10's goals across them.

A Metric is a label and a function of a Run (one results file, with the other run of its
compare); by_metric() puts runs side by side as columns, by_run() as rows.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from markdown_tables import Results, Table, joined, ms, quiet, when
from result_files import (
    RawFormatsResult,
    ScriptResult,
    SplitEpisodeResult,
    WorkerEfficiencyResult,
)

from recorder.benchmark.results import BenchmarkResult

# -- `recorder benchmark` runs ---------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """One `recorder benchmark` results file, and the other run of its compare if committed."""

    name: str
    result: BenchmarkResult
    partner: BenchmarkResult | None

    @property
    def slots(self) -> int:
        return sum(ep.frames for ep in self.result.episodes)

    @property
    def late(self) -> int:
        return sum(ep.late_frames for ep in self.result.episodes)


def read_run(results: Results, name: str) -> Run:
    result = results.run(name)
    other = result.compared_with
    partner = None
    if other and (results.folder / other).is_file():
        partner = results.run(other)
    return Run(name=name, result=result, partner=partner)


@dataclass(frozen=True)
class Metric:
    label: str
    value: Callable[[Run], str]
    right: bool = True


def _set(model: object, name: str) -> bool:
    """The file holds this field (older files lack some: shown as '-', never as 0)."""
    return name in getattr(model, "model_fields_set", set())


def _wait(run: Run) -> str:
    waits = [ep.save_s for ep in run.result.episodes]
    return f"{ms(statistics.median(waits))} / {ms(max(waits))} ms"


def _commit(run: Run) -> str:
    episodes = run.result.episodes
    if not all(_set(ep, "commit_s") for ep in episodes):
        return "-"
    return f"{statistics.median(ep.commit_s for ep in episodes):.2f} s"


def _busy(run: Run) -> str:
    episodes = run.result.episodes
    if not all(_set(ep, "busy_ms_median") for ep in episodes):
        return "-"
    return joined(f"{ep.busy_ms_median:.1f} / {ep.busy_ms_p99:.1f}" for ep in episodes) + " ms"


def _raw(run: Run) -> str:
    t, c = run.result.totals, run.result.config
    if not _set(t, "raw_bytes_per_frame"):
        return "-"
    rgb24 = c.width * c.height * 3
    return f"{t.raw_bytes_per_frame / 1024:.0f} KiB ({t.raw_bytes_per_frame / rgb24:.2f}x)"


def _cpu(run: Run) -> str:
    t = run.result.totals
    return f"{t.recorder_cpu_ms_per_frame:.1f} ms" if _set(t, "recorder_cpu_ms_per_frame") else "-"


def _inline_or_sent(run: Run) -> str:
    eps = run.result.episodes
    if run.result.mode == "sync":
        return f"{sum(ep.inline_encode_s for ep in eps):.2f} s"
    return f"{sum(ep.submission_s for ep in eps):.2f} s"


def _vs_sync(run: Run, value: Callable[[BenchmarkResult, BenchmarkResult], str]) -> str:
    """A comparison shown in the async run's column, against its compare's sync run."""
    if run.result.mode != "async" or run.partner is None:
        return ""
    return value(run.partner, run.result)


def _slots(indices: Sequence[int]) -> str:
    """Slot indices as runs: 0-3, 11."""
    spans: list[list[int]] = []
    for index in sorted(indices):
        if spans and index == spans[-1][1] + 1:
            spans[-1][1] = index
        else:
            spans.append([index, index])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans) or "-"


def _which(run: Run) -> str:
    episodes = run.result.episodes
    if not all(_set(ep, "late_slots") for ep in episodes):
        return "not in the file"
    return "; ".join(_slots(ep.late_slots) for ep in episodes)


def _ready(run: Run) -> str:
    drain = run.result.totals.drain_from_last_frame_s
    return "-" if drain is None else f"{drain:.1f} s"


def _complete(run: Run) -> str:
    t = run.result.totals
    if not _set(t, "complete_after_start_ratio"):
        return "-"  # made before the file kept it
    if t.complete_after_last_frame_s is None or t.complete_after_last_frame_ratio is None:
        return "not complete"
    return f"{t.complete_after_last_frame_s:.1f} s ({t.complete_after_last_frame_ratio:.2f}x)"


def _complete_start(run: Run) -> str:
    t = run.result.totals
    if not _set(t, "complete_after_start_ratio"):
        return "-"
    ratio = t.complete_after_start_ratio
    return "not complete" if ratio is None else f"{ratio:.2f}"


def _backlog(run: Run) -> str:
    if run.result.mode == "sync":
        return "-"  # inline: nothing waits for a worker
    episodes = run.result.episodes
    if not all(_set(ep, "backlog") for ep in episodes):
        return "-"
    return f"{run.result.totals.backlog_max} ({joined(ep.backlog for ep in episodes)})"


def _raw_left(run: Run) -> str:
    t = run.result.totals
    if not _set(t, "raw_left_bytes"):
        return "-"
    return f"{t.raw_left_bytes / 1e6:.0f} MB" if t.raw_left_bytes else "0"


def _overruns(run: Run) -> str:
    episodes = run.result.episodes
    if not all(_set(ep, "overrun_slots") for ep in episodes):
        return "-"
    return joined(len(ep.overrun_slots) for ep in episodes)


def _workers(run: Run) -> str:
    r = run.result
    if r.mode == "sync":
        return "the recorder"
    return f"{len(r.totals.workers_used)} of {r.environment.workers_answering}"


def _stage(run: Run, stage: str) -> str:
    stats = run.result.totals.stages.get(stage)
    return "-" if stats is None else f"{stats.mean_s:.2f} s"


FILE = Metric("results file", lambda run: f"`{run.name}`", right=False)
TIME = Metric("time (UTC)", lambda run: when(run.result))
LOAD = Metric("load at start", lambda run: f"{run.result.environment.load_average_1m:.2f}")
NICE = Metric("`--capture-nice`", lambda run: str(run.result.config.capture_nice))


def _workers_beside(run: Run) -> str:
    config = run.result.config
    if config.share_capture_host is None:
        return "-"
    if not config.share_capture_host:
        return "pause"
    caps = sorted({part for task in run.result.tasks
                   for part in task.beside_capture.split(", ") if part.startswith("capped")})
    kept = f"capture keeps {config.capture_cpus:g} CPU"
    return f"share, {kept}: workers {' / '.join(caps)}" if caps else f"share, {kept}"


def _windows(run: Run) -> str:
    seconds = run.result.config.encode_window_s
    return f"{seconds:g} s" if seconds else "no (sent when saved)"


WINDOWS = Metric("encoded while recorded, in windows of", _windows, right=False)
STAGES_SUMMED = Metric(
    "workers' fetch + encode + verify + publish, summed over the videos (no pauses, no queue)",
    lambda run: "{:.1f} s".format(sum(t.fetch_s + t.encode_s + t.verify_s + t.publish_s
                                      for t in run.result.tasks if t.status != "failed")))
BACKGROUND_LOAD = Metric("`--background-load`",
                         lambda run: str(run.result.config.background_load))
WORKERS_BESIDE = Metric("local workers during a capture", _workers_beside, right=False)
SHAPE = Metric("cameras, size, raw compression", lambda run: (
    f"{run.result.config.cameras} x {run.result.config.width}x{run.result.config.height}, "
    f"{run.result.config.raw_compression}"), right=False)
LATE = Metric("late capture slots per episode (of the run's slots)",
              lambda run: f"{joined(ep.late_frames for ep in run.result.episodes)} of "
                          f"{run.slots:,}", right=False)
LATE_WHICH = Metric("which slots were late, per episode", _which, right=False)
WAIT = Metric("robot wait at an episode end, median / max", _wait)
COMMIT = Metric("commit behind the next capture, median", _commit)
TOTAL_CAPTURE = Metric("total recording time / capture time",
                       lambda run: f"{_ratio(run):.3f}")
READY = Metric("all videos verified, after the last frame", _ready)
COMPLETE = Metric("dataset complete after the last frame (x capture time)", _complete)
COMPLETE_START = Metric("dataset complete after capture start / capture time", _complete_start)
BACKLOG = Metric("largest backlog, episodes (per episode)", _backlog)
RAW_LEFT = Metric("raw bytes left at the end", _raw_left)
OVERRUNS = Metric("slots over a period of the loop's own work, per episode", _overruns,
                  right=False)
RAW = Metric("raw bytes per camera frame", _raw)
CPU = Metric("recorder CPU per camera frame (sync: inline encodes too)", _cpu)
BUSY = Metric("loop's work per slot, median / p99, per episode (of 33.3 ms)", _busy, right=False)
FRAMES = Metric("frames recorded / in verified videos",
                lambda run: f"{run.result.totals.frames_recorded} / "
                            f"{run.result.totals.frames_in_videos}")
RECORDING = Metric("total recording time (recorder busy)",
                   lambda run: f"{run.result.totals.total_recording_s:.2f} s")
ENCODING = Metric("video encoding time (sync: blocking; async: worker time, summed)",
                  lambda run: f"{run.result.totals.encoding_s:.2f} s")
BLOCKED = Metric("save_episode() blocked, in all (its % of the recording time)",
                 lambda run: f"{run.result.totals.blocking_s:.2f} s "
                             f"({run.result.totals.blocking_pct:.1f} %)")
COMMITTING = Metric("of which committing episodes (raw flush, manifests, rows, record)",
                    lambda run: f"{sum(ep.save_s for ep in run.result.episodes):.2f} s")
INLINE_OR_SENT = Metric("of which inline encoding (sync) / job submission (async)", _inline_or_sent)
ENCODE_STAGE = Metric("encode stage per video, mean", partial(_stage, stage="encode"))
FIRST_SLOT = Metric("the loop's work in each episode's first slot",
                    lambda run: joined(f"{ep.first_slot_busy_ms:.1f}" for ep in run.result.episodes)
                    + " ms" if _set(run.result.episodes[0], "first_slot_busy_ms") else "-")
FETCH_STAGE = Metric("fetch stage per job, mean (the encoder waiting for frames)",
                     partial(_stage, stage="fetch"))
WORKERS = Metric("workers that ran an encode, of those answering", _workers)
SPEEDUP = Metric("speedup (sync / async recording time)", lambda run: _vs_sync(
    run, lambda s, a: f"{s.totals.total_recording_s / a.totals.total_recording_s:.2f}x"))
REDUCTION = Metric("blocking time reduction", lambda run: _vs_sync(
    run, lambda s, a: f"{100 * (1 - a.totals.blocking_s / s.totals.blocking_s):.1f} %"))
BACKGROUND = Metric("background / inline encoding time", lambda run: _vs_sync(
    run, lambda s, a: f"{a.totals.encoding_s / s.totals.encoding_s:.2f}x"))


def by_metric(results: Results, runs: Sequence[tuple[str, str]],
              metrics: Sequence[Metric]) -> Table:
    """One column per run (label, results file), one row per metric."""
    read = [read_run(results, name) for _, name in runs]
    rows = [[metric.label, *(metric.value(run) for run in read)] for metric in metrics]
    return Table(["metric", *(label for label, _ in runs)], rows,
                 sources=[results.path(name) for _, name in runs], files_shown=FILE in metrics)


def by_run(results: Results, names: Sequence[str], metrics: Sequence[Metric]) -> Table:
    """One row per results file, one column per metric."""
    read = [read_run(results, name) for name in names]
    return Table([m.label for m in metrics], [[m.value(run) for m in metrics] for run in read],
                 right=[m.right for m in metrics],
                 sources=[results.path(name) for name in names], files_shown=FILE in metrics)


def late_summary(results: Results, names: Sequence[str], label: str) -> Table:
    """Late slots over several runs: one row per --capture-nice, with its loads."""
    read = [read_run(results, name) for name in names]
    rows = []
    for nice in sorted({run.result.config.capture_nice for run in read}, reverse=True):
        group = [run for run in read if run.result.config.capture_nice == nice]
        loads = [run.result.environment.load_average_1m for run in group]
        rows.append([label, str(nice), str(len(group)),
                     f"{sum(run.late for run in group):,} of {sum(run.slots for run in group):,}",
                     joined("/".join(str(ep.late_frames) for ep in run.result.episodes)
                            for run in group),
                     f"{min(loads):.2f}-{max(loads):.2f}"])
    return Table(["cameras", "`--capture-nice`", "runs", "late slots, all runs",
                  "per run (per episode)", "load at start, min-max"], rows,
                 right=[False, True, True, True, False, True],
                 sources=[results.path(name) for name in names])


# -- issue 10's goals ------------------------------------------------------------------------

def _runs(results: Results, names: Sequence[str]) -> list[Run]:
    return [read_run(results, name) for name in names]


def _late(runs: Sequence[Run]) -> str:
    late, slots = sum(run.late for run in runs), sum(run.slots for run in runs)
    return f"{late:,} late of {slots:,} slots in {len(runs)} run{'s' * (len(runs) > 1)}"


def _span(values: Sequence[float], fmt: str) -> str:
    low, high = format(min(values), fmt), format(max(values), fmt)
    return low if low == high else f"{low}-{high}"


def _ratio(run: Run) -> float:
    return run.result.totals.total_recording_s / run.result.totals.capture_s


def _yes(met: bool) -> str:
    return "yes" if met else "**no**"


def _verdict(result: ScriptResult, met: bool) -> str:
    """A run made on a busy machine (its quiet wait timed out) decides no goal."""
    if not quiet(result):
        return f"not shown: measured at load {result.load.at_start:.2f}, rerun"
    return _yes(met)


@dataclass(frozen=True)
class Goal:
    goal: str
    section: str
    measure: Callable[[Results], tuple[str, str, list[Path]]]  # measured, met, files


def goals_table(results: Results, goals: Sequence[Goal]) -> Table:
    rows, sources = [], []
    for goal in goals:
        measured, met, files = goal.measure(results)
        rows.append([goal.goal, measured, met, goal.section])
        sources += [path for path in files if path not in sources]
    return Table(["goal", "latest measured", "met", "section"], rows,
                 right=[False, False, False, False], sources=sources)


def goal_late(results: Results, *, synthetic: Sequence[str], replayed: Sequence[str]
              ) -> tuple[str, str, list[Path]]:
    syn, rep = _runs(results, synthetic), _runs(results, replayed)
    met = all(run.late == 0 for run in [*syn, *rep])
    return (f"4 synthetic cameras: {_late(syn)}; 4 replayed real-content cameras: {_late(rep)}",
            _yes(met), [results.path(n) for n in [*synthetic, *replayed]])


def goal_late_loaded(results: Results, *, synthetic: Sequence[str], replayed: Sequence[str]
                     ) -> tuple[str, str, list[Path]]:
    syn, rep = _runs(results, synthetic), _runs(results, replayed)
    parts, met = [], []
    for label, runs in (("replayed cameras (frames decoded in their own threads)", rep),
                        ("synthetic cameras (frames made in the loop)", syn)):
        nices = sorted({run.result.config.capture_nice for run in runs})
        parts.append(f"{label}: " + "; ".join(
            f"`--capture-nice {nice}`: "
            f"{_late([r for r in runs if r.result.config.capture_nice == nice])}"
            for nice in nices))
        met.append(f"{label.split()[0]}: {_yes(all(run.late == 0 for run in runs))}")
    return "; ".join(parts), ", ".join(met), [results.path(n) for n in [*replayed, *synthetic]]


def goal_total(results: Results, *, synthetic: Sequence[str], replayed: Sequence[str],
               most: float) -> tuple[str, str, list[Path]]:
    syn, rep = _runs(results, synthetic), _runs(results, replayed)
    ratios = [_ratio(run) for run in [*syn, *rep]]
    return (f"synthetic: {_span([_ratio(r) for r in syn], '.3f')}; replayed: "
            f"{_span([_ratio(r) for r in rep], '.3f')}", _yes(max(ratios) <= most),
            [results.path(n) for n in [*synthetic, *replayed]])


def goal_wait(results: Results, *, synthetic: Sequence[str], replayed: Sequence[str],
              most_s: float) -> tuple[str, str, list[Path]]:
    def waits(runs: Sequence[Run]) -> list[float]:
        return [ep.save_s for run in runs for ep in run.result.episodes]

    syn, rep = waits(_runs(results, synthetic)), waits(_runs(results, replayed))
    return (f"synthetic: median {ms(statistics.median(syn))} ms, max {ms(max(syn))} ms; "
            f"replayed: median {ms(statistics.median(rep))} ms, max {ms(max(rep))} ms",
            _yes(max(syn + rep) <= most_s), [results.path(n) for n in [*synthetic, *replayed]])


def goal_raw(results: Results, name: str) -> tuple[str, str, list[Path]]:
    result = results.script(name, RawFormatsResult)
    m = {(f.pix_fmt, f.compression): f for f in result.formats}

    def median(pix_fmt: str, compression: str, key: str) -> float:
        return statistics.median(getattr(s, key) for s in m[pix_fmt, compression].rounds)

    rgb = result.rgb24_bytes_per_frame
    yuv = median("yuv420p", "none", "bytes_per_frame") / rgb
    over = (median("yuv420p", "none", "write_cpu_ms")
            - median("rgb24", "none", "write_cpu_ms"))
    ffv1 = median("yuv420p", "ffv1", "bytes_per_frame") / rgb
    return (f"yuv420p {yuv:.2f}x at {over:+.2f} ms robot CPU per frame; FFV1 {ffv1:.2f}x",
            _verdict(result, yuv <= 0.5 and over <= 1.0 and ffv1 <= 0.25), [results.path(name)])


def goal_worker(results: Results, name: str, *, least: float) -> tuple[str, str, list[Path]]:
    result = results.script(name, WorkerEfficiencyResult)

    def ratio(bare: str) -> float:
        pairs = zip(result.seconds["worker"], result.seconds[bare], strict=True)
        return statistics.median(b / w for w, b in pairs)

    against_own = ratio("bare yuv420p, threads demoted")
    text = (f"{against_own:.3f} (median of {result.rounds} rounds, against bare PyAV with the "
            "workers' thread priorities")
    level = "bare yuv420p, threads demoted, worker's SVT level"
    if level in result.seconds:
        text += (f" and SVT-AV1's own threads, as LeRobot runs it; {ratio(level):.3f} against "
                 "bare PyAV given the worker's SVT level")
    return (text + ")", _verdict(result, against_own >= least), [results.path(name)])


def goal_split(results: Results, name: str, *, most: float) -> tuple[str, str, list[Path]]:
    result = results.script(name, SplitEpisodeResult)
    base = next(r.latency_s for r in result.runs if r.workers == 1 and r.parts == 1)
    ratios = {r.workers: r.latency_s / (base / r.workers) for r in result.runs if r.parts > 1}
    return ("; ".join(f"K = {k}: {ratio:.2f} x T1 / K" for k, ratio in sorted(ratios.items()))
            + f" ({result.seconds:g} s episode); K = 4-8 not measured (2 cores)",
            _verdict(result, all(r <= most for r in ratios.values())), [results.path(name)])
