"""The LeRobot comparisons' reports: pure functions of their results."""

from __future__ import annotations

import statistics

from recorder.benchmark.lerobot_results import (
    GOAL,
    VARIANTS,
    ComparedRun,
    LeRobotComparison,
    LeRobotRecordComparison,
    RecordRun,
    goal_misses,
)
from recorder.benchmark.report import RULE


def _ms_list(seconds: list[float]) -> str:
    return ", ".join(f"{1000 * s:.0f}" for s in seconds) + " ms"


def _complete(run: ComparedRun) -> str:
    after, ratio, total = (run.complete_after_last_frame_s, run.complete_ratio,
                           run.complete_from_start_ratio)
    if after is None or ratio is None or total is None:
        return "Dataset not complete (episodes left out: see the log)"
    return (f"Dataset complete {after:.1f} s after the last frame ({ratio:.2f}x the capture "
            f"time of {run.capture_time_s:.1f} s); from the first frame {total:.2f}x the "
            "capture time")


def run_lines(run: ComparedRun, *, synthetic: bool = False) -> list[str]:
    """What one variant made the robot's loop and its user go through.

    Args:
        synthetic: the cameras were synthetic ones, which make their frames in the loop.
    """
    episodes = run.episodes
    overruns = sum(len(ep.overrun_slots) for ep in episodes)
    harness = []
    if synthetic and overruns:
        harness = [f"  {overruns} slots took over a period of the loop's own work, and the "
                   "synthetic cameras make their frames inside the loop: partly the "
                   "harness's cost (replayed files, --mode real, decode in threads of their "
                   "own as camera drivers deliver)"]
    counted = all(ep.frames_in_videos for ep in episodes)
    lost = ", ".join(f"{camera} {n}" for camera, n in run.lost.items())
    return [
        f"{VARIANTS[run.variant]}:",
        f"  Late loop cycles per episode: {', '.join(str(len(ep.late_slots)) for ep in episodes)}"
        f" of {run.slots:,} (over a period of the loop's own work: {overruns}); the loop's "
        f"work per slot, median {statistics.median(ep.busy_ms_median for ep in episodes):.1f} "
        f"ms, of which the cameras' and robot's reads "
        f"{statistics.median(ep.read_ms_median for ep in episodes):.1f} ms",
        *harness,
        f"  Blocked at each episode end (save_episode): {_ms_list([ep.save_s for ep in episodes])}",
        f"  Frames lost per camera (added, not in its video): {lost}"
        + ("" if counted else " (an episode's videos were not counted: missing)"),
        f"  {_complete(run)}",
        f"  Recorder CPU per camera frame: {run.cpu_ms_per_frame(run.process_cpu_s):.1f} ms (the "
        f"process, all threads); its child processes: "
        f"{run.cpu_ms_per_frame(run.children_cpu_s):.1f} ms"
        + (" (LeRobot's encoder pool)" if run.variant == "lerobot_inline" else
           " (the local farm's workers and redis-server)" if run.variant == "farm" else ""),
    ]


def format_comparison(result: LeRobotComparison) -> str:
    c, env = result.config, result.environment
    source = (f"{c.cameras} synthetic cameras" if c.camera_mode == "synthetic"
              else f"{c.cameras} cameras replaying {', '.join(c.camera_sources)}")
    lines = [RULE, f"LEROBOT {result.lerobot}'S OWN DATASET AGAINST THE FARM", RULE, "",
             f"The same loop and frames, one run after the other: {source}, {c.width}x{c.height}"
             f" at {c.fps} fps, {c.episodes} x {c.episode_time_s:g} s (reset {c.reset_time_s:g}"
             f" s); {c.codec} crf {c.crf} g {c.gop} preset {c.preset}, {c.pix_fmt}", ""]
    for run in result.runs:
        lines += [*run_lines(run, synthetic=c.camera_mode == "synthetic"), ""]
    farm = [run for run in result.runs if run.variant == "farm"]
    if farm:
        misses = goal_misses(farm[0])
        lines.append(f"GOAL (issue 18), {GOAL}: "
                     + ("met" if not misses else f"NOT met ({'; '.join(misses)})"))
    lines += ["", f"Measured on {env.hostname}: {env.cpu_model}, {env.cpu_count} CPUs (load "
                  f"average {env.load_average_1m:.2f} at the start), Python {env.python}, PyAV "
                  f"{env.pyav}.", RULE]
    return "\n".join(lines)


def record_run_lines(run: RecordRun, asked: int) -> list[str]:
    """asked: the cycles an episode should run (fps x episode time)."""
    episodes = run.episodes
    return [
        f"{run.command} (exit code {run.exit_code}"
        + (f"; it raised {run.error}" if run.error else "") + "):",
        f"  Late loop cycles per episode (its sleep asked for 0 s): "
        f"{', '.join(str(len(ep.late_cycles)) for ep in episodes)} of {run.cycles:,}; "
        f"the loop's work per cycle, median {run.work_ms_median:.1f} ms",
        f"  Cycles per episode: {', '.join(str(ep.cycles) for ep in episodes)} of {asked} "
        f"asked (fps x episode time); the loop ran at "
        + ", ".join(f"{ep.cycles / ep.loop_s:.1f}" if ep.loop_s else "-" for ep in episodes)
        + " fps",
        f"  Blocked at each episode end (save_episode): {_ms_list(run.save_s)}",
        *([] if (after := run.complete_after_last_frame_s) is None else
          [f"  Dataset complete {after:.1f} s after the last frame (the command returned)"]),
    ]


def format_record_comparison(result: LeRobotRecordComparison) -> str:
    c, env = result.config, result.environment
    lines = [RULE, f"LEROBOT-RECORD {result.lerobot} AGAINST RECORDER LEROBOT-RECORD", RULE, "",
             f"LeRobot's own record loop, the synthetic robot: {c.cameras} {c.camera_mode} "
             f"cameras {c.width}x{c.height} at {c.fps} fps, {c.episodes} x "
             f"{c.episode_time_s:g} s (reset {c.reset_time_s:g} s)", ""]
    for run in result.runs:
        lines += [*record_run_lines(run, c.cycles_asked), ""]
    lines += [f"Measured on {env.hostname}: {env.cpu_model}, {env.cpu_count} CPUs (load "
              f"average {env.load_average_1m:.2f} at the start).", RULE]
    return "\n".join(lines)
