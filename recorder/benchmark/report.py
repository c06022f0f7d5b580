"""The comparison report and its verdicts: pure functions of BenchmarkResults."""

from __future__ import annotations

import statistics

from recorder.benchmark.results import STAGES, BenchmarkResult, Verdict, capture_time_s

RULE = "=" * 80

# Thresholds of the verdicts.
SUBMISSION_GOOD_PCT = 1.0
SUBMISSION_WARN_PCT = 5.0
BLOCKING_REDUCTION_GOOD_PCT = 90.0
SPEEDUP_GOOD = 2.0
SPEEDUP_WARN = 1.5
# Background (worker) encode time over the sync inline encode time.
BACKGROUND_CLOSE_RATIO = 1.25
BACKGROUND_SLOW_RATIO = 1.5
LATE_FRAMES_WARN_PCT = 1.0


def speedup(sync: BenchmarkResult, async_: BenchmarkResult) -> float:
    total = async_.totals.total_recording_s
    return sync.totals.total_recording_s / total if total > 0 else float("inf")


def blocking_reduction_pct(sync: BenchmarkResult, async_: BenchmarkResult) -> float:
    blocked = sync.totals.blocking_s
    if blocked <= 0:
        return 0.0
    return 100 * (blocked - async_.totals.blocking_s) / blocked


def submission_pct(result: BenchmarkResult) -> float:
    """Task submission (waiting for queue room included) as a share of recording time."""
    t = result.totals
    return 100 * t.submission_s / t.total_recording_s if t.total_recording_s > 0 else 0.0


def commit_s(result: BenchmarkResult) -> float:
    """Time save_episode() spent committing episodes: raw flush, manifests, rows, record."""
    return sum(ep.save_s for ep in result.episodes)


def verdicts(sync: BenchmarkResult | None, async_: BenchmarkResult | None) -> list[Verdict]:
    """Good signs and warnings, each warning with the fix it suggests."""
    out: list[Verdict] = []
    if async_ is not None:
        pct = submission_pct(async_)
        if pct > SUBMISSION_WARN_PCT:
            out.append(Verdict(
                level="warning", code="submission_slow",
                message=f"task submission took {pct:.1f}% of the recording time (> "
                        f"{SUBMISSION_WARN_PCT:g}%): the recorder waited for room in the queue",
                fix=f"raise --video-encoding-queue-size (now "
                    f"{async_.config.video_encoding_queue_size}) or add workers"))
        elif pct < SUBMISSION_GOOD_PCT:
            out.append(Verdict(level="good", code="submission_fast",
                               message=f"task submission took {pct:.2f}% of the recording "
                                       f"time (< {SUBMISSION_GOOD_PCT:g}%)"))
        else:
            out.append(Verdict(level="info", code="submission_moderate",
                               message=f"task submission took {pct:.1f}% of the recording time"))
    if sync is not None and async_ is not None:
        out += _comparison_verdicts(sync, async_)
    for result in (r for r in (sync, async_) if r is not None):
        out += _health_verdicts(result)
    return out


def _comparison_verdicts(sync: BenchmarkResult, async_: BenchmarkResult) -> list[Verdict]:
    out = []
    reduction = blocking_reduction_pct(sync, async_)
    if reduction > BLOCKING_REDUCTION_GOOD_PCT:
        out.append(Verdict(level="good", code="blocking_reduced",
                           message=f"blocking time reduced by {reduction:.1f}% (> "
                                   f"{BLOCKING_REDUCTION_GOOD_PCT:g}%)"))
    else:
        out.append(Verdict(level="info", code="blocking_reduction",
                           message=f"blocking time reduced by {reduction:.1f}%"))
    factor = speedup(sync, async_)
    workers = async_.config.video_encoding_workers
    if factor > SPEEDUP_GOOD:
        out.append(Verdict(level="good", code="speedup_high",
                           message=f"recording is {factor:.2f}x faster with the farm (> "
                                   f"{SPEEDUP_GOOD:g}x)"))
    elif factor < SPEEDUP_WARN:
        out.append(Verdict(
            level="warning", code="speedup_low",
            message=f"speedup only {factor:.2f}x (< {SPEEDUP_WARN:g}x): encoding is not the "
                    f"bottleneck of this recording (sync encoding was "
                    f"{sync.totals.blocking_pct:.0f}% of its time)",
            fix="inline encoding is affordable at these settings; the farm pays off with "
                "longer episodes, more cameras, higher resolution or a slower codec"))
    else:
        out.append(Verdict(level="info", code="speedup_moderate",
                           message=f"recording is {factor:.2f}x faster with the farm"))
    sync_encode = sync.totals.encoding_s
    if sync_encode > 0:
        ratio = async_.totals.encoding_s / sync_encode
        if ratio > BACKGROUND_SLOW_RATIO:
            out.append(Verdict(
                level="warning", code="background_slow",
                message=f"background encoding took {ratio:.2f}x the inline encoding time "
                        f"({async_.totals.encoding_s:.2f}s vs {sync_encode:.2f}s): workers are "
                        f"slow (CPU shared with the recorder or with each other?)",
                fix=f"run fewer workers per core than {workers} on "
                    f"{async_.environment.cpu_count} CPUs, or move workers to other machines "
                    f"(--broker)"))
        elif ratio <= BACKGROUND_CLOSE_RATIO:
            out.append(Verdict(level="good", code="background_close",
                               message=f"background encoding is not slower than inline "
                                       f"({ratio:.2f}x the inline encoding time)"))
        else:
            out.append(Verdict(level="info", code="background_slower",
                               message=f"background encoding took {ratio:.2f}x the inline "
                                       f"encoding time"))
    return out


def _health_verdicts(result: BenchmarkResult) -> list[Verdict]:
    out = []
    t = result.totals
    name = "sync" if result.mode == "sync" else "async"
    if t.tasks_failed:
        out.append(Verdict(level="warning", code=f"{name}_tasks_failed",
                           message=f"{name}: {t.tasks_failed} of {t.tasks} encodes failed",
                           fix="see the errors in the results file's tasks"))
    if t.frames_in_videos != t.frames_recorded:
        out.append(Verdict(level="warning", code=f"{name}_frames_missing",
                           message=f"{name}: {t.frames_recorded} frames recorded but "
                                   f"{t.frames_in_videos} in verified videos"))
    loop_frames = sum(ep.frames for ep in result.episodes)
    if loop_frames and 100 * t.late_frames / loop_frames > LATE_FRAMES_WARN_PCT:
        fix = ("encoding shares this host's CPUs with the capture loop: fewer local workers, "
               "or workers on other machines" if result.mode == "async" else
               "the capture loop cannot keep up at this fps and size on this host")
        env = result.environment
        busy = env.load_average_1m > env.cpu_count
        if busy:
            # Other work on the host takes the CPU from the loop: the run says little then.
            fix += (f" (the host was busy: load average {env.load_average_1m:.2f} on "
                    f"{env.cpu_count} CPUs at the start; measure again on a quiet host)")
        if (busy or result.config.background_load) and not result.config.capture_nice:
            fix += ("; where other programs must share the host, run the recorder ahead of "
                    "them: --capture-nice -10")
        out.append(Verdict(level="warning", code=f"{name}_late_frames",
                           message=f"{name}: {t.late_frames} of {loop_frames} frames missed "
                                   f"their capture deadline", fix=fix))
    if harness := _harness_verdict(result, name):
        out.append(harness)
    return out


def _harness_verdict(result: BenchmarkResult, name: str) -> Verdict | None:
    """Slots late by the loop's own work, not by waiting: with synthetic cameras, which make
    their frames inside the loop, the benchmark's harness and not the farm."""
    overruns = sum(len(ep.overrun_slots) for ep in result.episodes)
    if not overruns:
        return None
    late = result.totals.late_frames
    period_ms = 1000 / result.config.fps
    reads = statistics.median(ep.read_ms_median for ep in result.episodes)
    busy = statistics.median(ep.busy_ms_median for ep in result.episodes)
    message = (f"{name}: {overruns} of the {late} late slots took longer than a period "
               f"({period_ms:.1f} ms) of the loop's own work, not of waiting; a slot's work "
               f"is a median {busy:.1f} ms, of which the cameras' and robot's reads "
               f"{reads:.1f} ms")
    if result.config.camera_mode == "synthetic":
        c = result.config
        return Verdict(
            level="warning", code=f"{name}_harness_cost",
            message=message + f". The {c.cameras} synthetic cameras make their "
                    f"{c.width}x{c.height} frames inside the loop: that is the benchmark "
                    "harness's cost, not the farm's (a camera's driver delivers frames from "
                    "a thread of its own)",
            fix="measure with --mode real --camera FILE (replayed files, decoded ahead in "
                "threads of their own), or fewer or smaller synthetic cameras")
    return Verdict(level="warning", code=f"{name}_loop_overrun", message=message,
                   fix="the capture loop cannot keep up at this fps and size on this host")


def comparison_layout(sync: BenchmarkResult, async_: BenchmarkResult) -> list[str]:
    """The headline comparison, the layout operators know."""
    s, a = sync.totals, async_.totals
    saved = s.total_recording_s - a.total_recording_s
    improvement = 100 * saved / s.total_recording_s if s.total_recording_s > 0 else 0.0
    return [
        RULE, "PERFORMANCE COMPARISON RESULTS", RULE, "",
        *_sync_block(sync), "",
        *_async_block(async_), "",
        "PERFORMANCE IMPROVEMENTS:",
        f"  Time saved: {saved:.2f}s",
        f"  Speedup: {speedup(sync, async_):.2f}x",
        f"  Improvement: {improvement:.1f}%",
        "",
        "ENCODING EFFICIENCY:",
        f"  Sync encoding blocks recording for: {s.blocking_s:.2f}s",
        f"  Async encoding blocks recording for: {a.blocking_s:.2f}s",
        f"  Blocking time reduction: {blocking_reduction_pct(sync, async_):.1f}%",
    ]


def _sync_block(result: BenchmarkResult) -> list[str]:
    t = result.totals
    return ["SYNCHRONOUS ENCODING:",
            f"  Total recording time: {t.total_recording_s:.2f}s",
            f"  Video encoding time: {t.encoding_s:.2f}s",
            f"  Encoding percentage: {100 * t.encoding_s / t.total_recording_s:.1f}%"
            if t.total_recording_s > 0 else "  Encoding percentage: -"]


def _async_block(result: BenchmarkResult) -> list[str]:
    t = result.totals
    return ["ASYNCHRONOUS ENCODING:",
            f"  Total recording time: {t.total_recording_s:.2f}s",
            f"  Video encoding time (background): {t.encoding_s:.2f}s",
            f"  Task submission time: {t.submission_s:.2f}s",
            f"  Submission percentage: {submission_pct(result):.1f}%"]


def details(results: list[BenchmarkResult]) -> list[str]:
    """What the headline hides: drain time, stage timings, late frames, frames, workers."""
    lines = ["", "DETAILS:"]
    for r in results:
        t = r.totals
        label = "Sync" if r.mode == "sync" else "Async"
        lines.append(f"  {label} ({r.config.cameras} camera(s), {r.config.width}x"
                     f"{r.config.height} @ {r.config.fps} fps, {r.config.codec}"
                     + (f", {r.config.background_load} background load processes"
                        if r.config.background_load else "")
                     + (f", recorder at nice {r.config.capture_nice}"
                        if r.config.capture_nice else "") + "):")
        lines.append(_complete_line(r))
        if r.mode == "async":
            lines.append(f"    Backlog: at most {t.backlog_max} episodes recorded and not "
                         f"encoded yet (per episode, once it reached the farm: "
                         f"{', '.join(str(ep.backlog) for ep in r.episodes)})")
        lines.append(f"    Raw frames left on disk: {t.raw_left_bytes / 1e6:.1f} MB"
                     + (" (--keep-raw, or episodes not in the dataset)" if r.raw_kept else ""))
        if r.mode == "async":
            if t.drain_from_first_frame_s is None or t.drain_from_last_frame_s is None:
                lines.append("    All videos ready: not waited for")
            else:
                lines.append(f"    All videos verified and ready: "
                             f"{t.drain_from_first_frame_s:.2f}s after the first frame, "
                             f"{t.drain_from_last_frame_s:.2f}s after the last frame")
        if t.stages:
            lines.append("    Stage timings per task (mean / max):")
            stages = STAGES if r.mode == "async" else STAGES[1:]  # inline jobs never queue
            for stage in stages:
                st = t.stages.get(stage)
                if st is not None:
                    lines.append(f"      {stage.replace('_', ' '):<11} "
                                 f"{st.mean_s:7.2f}s / {st.max_s:7.2f}s")
        lines.append(f"    save_episode() blocked {t.blocking_s:.2f}s: committing episodes "
                     f"(raw flush, manifests, rows) {commit_s(r):.2f}s, "
                     + (f"sending jobs {t.submission_s:.2f}s" if r.mode == "async"
                        else f"inline encoding {t.encoding_s:.2f}s"))
        waits = sorted(ep.save_s for ep in r.episodes)
        if waits:
            lines.append(f"    Robot wait at an episode end (save_episode): median "
                         f"{1000 * statistics.median(waits):.0f} ms, max "
                         f"{1000 * waits[-1]:.0f} ms"
                         + (f"; commits behind the next capture: median "
                            f"{statistics.median(ep.commit_s for ep in r.episodes):.2f}s"
                            if r.mode == "async" else ""))
        if r.episodes:
            period_ms = 1000 / r.config.fps
            lines.append(
                "    Late slots per episode: "
                + ", ".join(str(ep.late_frames) for ep in r.episodes)
                + f"; the loop's work per slot (cameras, robot, add_frame): median "
                f"{statistics.median(ep.busy_ms_median for ep in r.episodes):.1f} ms, p99 "
                f"{max(ep.busy_ms_p99 for ep in r.episodes):.1f} ms of {period_ms:.1f} ms"
                f" (the cameras' and robot's reads: median "
                f"{statistics.median(ep.read_ms_median for ep in r.episodes):.1f} ms)")
            if overruns := sum(len(ep.overrun_slots) for ep in r.episodes):
                lines.append(f"    Slots whose own work took longer than a period: {overruns} "
                             "(late by the loop's work, not by waiting; see the verdict)")
        loop_frames = sum(ep.frames for ep in r.episodes)
        lines.append(f"    Frames that missed their capture deadline: {t.late_frames} of "
                     f"{loop_frames}")
        lines.append(f"    Frames recorded: {t.frames_recorded}, in verified videos: "
                     f"{t.frames_in_videos} ({t.tasks} videos, {t.tasks_failed} failed)")
        if t.raw_bytes_per_frame:
            frame_rgb = r.config.width * r.config.height * 3
            lines.append(f"    Raw frames: {r.config.raw_format}, compression "
                         f"{r.config.raw_compression}: {t.raw_bytes_per_frame / 1024:.0f} KiB "
                         f"per frame ({t.raw_bytes_per_frame / frame_rgb:.2f}x rgb24); "
                         f"recorder CPU {t.recorder_cpu_ms_per_frame:.1f} ms per camera frame")
        if r.mode == "async":
            lines.append(f"    Workers: {len(t.workers_used)} used of "
                         f"{r.environment.workers_answering} answering "
                         f"({r.environment.broker_kind}; "
                         f"--video-encoding-workers {r.config.video_encoding_workers}): "
                         f"{', '.join(t.workers_used) or 'none'}")
        else:
            lines.append(f"    Encoded inline by the recorder: {', '.join(t.workers_used)}")
    return lines


def _complete_line(result: BenchmarkResult) -> str:
    """When the dataset was complete, against the capture the user sat through."""
    t = result.totals
    after, ratio, whole = (t.complete_after_last_frame_s, t.complete_after_last_frame_ratio,
                           t.complete_after_start_ratio)
    if after is None or ratio is None or whole is None:
        return "    Dataset complete: not in this run (an episode's video is missing)"
    return (f"    Dataset complete {after:.2f}s after the last frame ({ratio:.2f}x the capture "
            f"time of {capture_time_s(result.episodes, result.config.fps):.1f}s); from the "
            f"capture's start "
            f"{whole:.2f}x the capture time")


def verdict_lines(items: list[Verdict]) -> list[str]:
    lines = ["", "VERDICT:"]
    marks = {"good": "[OK]  ", "info": "[INFO]", "warning": "[WARN]"}
    for v in items:
        lines.append(f"  {marks[v.level]} {v.message}")
        if v.fix:
            lines.append(f"         fix: {v.fix}")
    return lines


def single_layout(result: BenchmarkResult) -> list[str]:
    title = "SYNCHRONOUS" if result.mode == "sync" else "ASYNCHRONOUS"
    block = _sync_block(result) if result.mode == "sync" else _async_block(result)
    return [RULE, f"{title} ENCODING BENCHMARK RESULTS", RULE, "", *block]


def format_report(sync: BenchmarkResult | None, async_: BenchmarkResult | None) -> str:
    """The full report for one run or a comparison of two."""
    if sync is not None and async_ is not None:
        lines = comparison_layout(sync, async_)
    elif sync is not None or async_ is not None:
        lines = single_layout(sync or async_)  # type: ignore[arg-type]
    else:
        raise ValueError("nothing to report")
    present = [r for r in (sync, async_) if r is not None]
    lines += details(present)
    lines += verdict_lines(verdicts(sync, async_))
    env = present[0].environment
    lines += ["", f"Measured on {env.hostname}: {env.cpu_model}, {env.cpu_count} CPUs (load "
                  f"average {env.load_average_1m:.2f} at the start), Python {env.python}, PyAV "
                  f"{env.pyav} (FFmpeg {env.ffmpeg}), {env.codec}.", RULE]
    return "\n".join(lines)
