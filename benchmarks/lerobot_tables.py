"""Tables of the LeRobot comparisons' results files (recorder/benchmark/lerobot_results.py):
`recorder benchmark lerobot` and `recorder benchmark lerobot-record`, and issue 18's goal
across them."""

from __future__ import annotations

from collections.abc import Sequence

from markdown_tables import Results, Table, joined, ms

from recorder.benchmark.lerobot_results import (
    GOAL,
    ComparedRun,
    LeRobotComparison,
    LeRobotRecordComparison,
    RecordRun,
    goal_misses,
)

VARIANT_LABELS = {
    "lerobot_inline": "LeRobot inline (4 image-writer threads per camera)",
    "lerobot_streaming": "LeRobot streaming",
    "farm": "FarmDataset, zero-config farm",
}


def _late(counts: Sequence[int], slots: int) -> str:
    return f"{joined(counts)} of {slots:,}"


def _blocked(seconds: Sequence[float]) -> str:
    return joined(ms(s) for s in seconds) + " ms"


def _lost(run: ComparedRun) -> str:
    return joined(f"{n}" for n in run.lost.values())


def _complete(after: float | None, ratio: float | None) -> str:
    if after is None:
        return "not complete"
    return f"{after:.1f} s" + ("" if ratio is None else f" ({ratio:.2f}x)")


def _cpu(run: ComparedRun) -> str:
    own = run.cpu_ms_per_frame(run.process_cpu_s)
    children = run.cpu_ms_per_frame(run.children_cpu_s)
    return f"{own:.1f} ms ({children:.1f} ms)"


def compare_table(results: Results, names: Sequence[str]) -> Table:
    """One row per run (LeRobot inline, LeRobot streaming, the farm) of each comparison."""
    rows = []
    for name in names:
        result = results.lerobot(name, LeRobotComparison)
        for run in result.runs:
            rows.append([
                f"`{name}`", f"{result.environment.load_average_1m:.2f}",
                VARIANT_LABELS.get(run.variant, run.variant),
                _late([len(ep.late_slots) for ep in run.episodes], run.slots),
                _blocked([ep.save_s for ep in run.episodes]), _lost(run),
                _complete(run.complete_after_last_frame_s, run.complete_ratio),
                "-" if (total := run.complete_from_start_ratio) is None else f"{total:.2f}",
                _cpu(run)])
    return Table(["results file", "load at start", "dataset", "late loop cycles per episode "
                  "(of the run's slots)", "blocked at each episode end", "frames lost per "
                  "camera", "dataset complete after the last frame (x capture time)",
                  "dataset complete after capture start / capture time",
                  "recorder CPU per camera frame (its child processes)"], rows,
                 right=[False, True, False, False, True, True, True, True, True],
                 sources=[results.path(name) for name in names], files_shown=True)


def goal_table(results: Results, names: Sequence[str]) -> Table:
    """Issue 18's goal over the farm's runs of every comparison named."""
    farm = [run for name in names for run in results.lerobot(name, LeRobotComparison).runs
            if run.variant == "farm"]
    late, slots = sum(run.late for run in farm), sum(run.slots for run in farm)
    blocked = max((ep.save_s for run in farm for ep in run.episodes), default=0.0)
    lost = sum(max(0, n) for run in farm for n in run.lost.values())
    misses = [miss for run in farm for miss in goal_misses(run)]
    return Table(["goal", "farm runs", "late loop cycles", "blocked at an episode end, max",
                  "frames lost", "met"],
                 [[GOAL, str(len(farm)), f"{late:,} of {slots:,}", f"{ms(blocked)} ms",
                   str(lost), "yes" if farm and not misses else "**no**"]],
                 right=[False, True, True, True, True, False],
                 sources=[results.path(name) for name in names])


def _record_row(name: str, load: float, asked: int, run: RecordRun) -> list[str]:
    return [f"`{name}`", f"{load:.2f}", f"`{run.command}`",
            _late([len(ep.late_cycles) for ep in run.episodes], run.cycles),
            f"{joined(ep.cycles for ep in run.episodes)} of {asked}",
            _blocked(run.save_s), f"{run.work_ms_median:.1f} ms",
            _complete(run.complete_after_last_frame_s, None), str(run.exit_code)]


def record_table(results: Results, names: Sequence[str]) -> Table:
    """One row per command (plain lerobot-record, recorder lerobot-record) of each file."""
    rows = [_record_row(name, result.environment.load_average_1m, result.config.cycles_asked,
                        run)
            for name in names
            for result in [results.lerobot(name, LeRobotRecordComparison)]
            for run in result.runs]
    return Table(["results file", "load at start", "command", "late loop cycles per episode "
                  "(of the run's cycles)", "cycles per episode (of fps x episode time)",
                  "blocked at each episode end", "loop's work per cycle, median",
                  "dataset complete after the last frame", "exit code"], rows,
                 right=[False, True, False, False, True, True, True, True, True],
                 sources=[results.path(name) for name in names], files_shown=True)
