"""The `recorder benchmark` and `recorder analyze` commands: flags in, report out."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from types import ModuleType

from rich.console import Console
from rich.table import Table

from encoder_worker.cli_settings import add_settings_arguments, settings_from_args
from recorder.benchmark.portable import portable_command
from recorder.benchmark.results import BenchmarkResult
from recorder.benchmark.settings import NOT_FLAGS, BenchmarkSettings
from recorder.progress import report_console

DEMO_EPISODE_TIME_S = 5.0
DEMO_WORKERS = (1, 2, 4)
LEROBOT_ACTIONS = ("lerobot", "lerobot-record")
# Settings the LeRobot comparisons refuse, and why.
NOT_FOR_LEROBOT = {
    "compare": ("--compare", "they record LeRobot's runs and the farm's themselves"),
    "async_encoding": ("--async-encoding", "they record LeRobot's runs and the farm's "
                                           "themselves"),
    "background_load": ("--background-load", "its processes would count as the recorder's "
                                             "child processes"),
    "storage": ("--storage", "every dataset goes under --output-dir, where its videos are "
                             "decoded and counted"),
    "output_storage": ("--output-storage", "every dataset goes under --output-dir, where its "
                                           "videos are decoded and counted"),
}


def add_benchmark_arguments(parser: argparse.ArgumentParser, *,
                            aliases: dict[str, str] | None = None) -> None:
    parser.add_argument("action", nargs="?", choices=["demo", *LEROBOT_ACTIONS],
                        help="demo: a short --compare, then an async sweep over "
                             f"{', '.join(map(str, DEMO_WORKERS))} workers, with charts; "
                             "lerobot: the same loop and frames through LeRobot's own dataset "
                             "(inline, then streaming) and through the farm; lerobot-record: "
                             "plain lerobot-record against recorder lerobot-record on the "
                             "synthetic robot (both need LeRobot: "
                             "pip install 'robot-encoding-farm[lerobot]')")
    fields = [f for f in BenchmarkSettings.model_fields if f not in NOT_FLAGS]
    add_settings_arguments(parser, BenchmarkSettings, fields=fields,
                           aliases={a: f for a, f in (aliases or {}).items() if f in fields})
    parser.add_argument("--camera", dest="camera", action="append", default=argparse.SUPPRESS,
                        metavar="SOURCE",
                        help="real mode: a V4L2 device (/dev/video0), a stream URL or a video "
                             "file replayed at its own rate; repeat for more cameras")


def add_analyze_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE",
                        help="sync_benchmark_*.json / async_benchmark_*.json results files")
    parser.add_argument("--output-dir", type=Path, default=None,
                        help="where the charts go (default: the first file's folder)")


def run_benchmark_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from recorder.benchmark import report, runner
    from recorder.benchmark.lerobot_results import ComparisonFailed
    from recorder.capture.cameras import CameraError
    from recorder.capture.priority import PriorityRefused, raised_priority
    from recorder.farm.setup import RecorderError
    from recorder.interrupts import interrupt_on_sigterm

    settings = settings_from_args(parser, BenchmarkSettings, args)
    command = command_line(args)
    if settings.mode == "real" and not settings.camera:
        parser.error("--mode real needs at least one --camera SOURCE (a V4L2 device, a "
                     "stream URL or a video file)")
    if settings.mode == "synthetic" and settings.camera:
        parser.error("--camera is for --mode real; synthetic mode uses --cameras N")
    if args.action == "demo" and settings.broker is not None:
        parser.error("benchmark demo sweeps the workers of the zero-config farm; leave out "
                     "--broker (an external farm's workers are its own)")
    lerobot_record = None
    if args.action in LEROBOT_ACTIONS:
        for name, (flag, why) in NOT_FOR_LEROBOT.items():
            if name in settings.model_fields_set:
                parser.error(f"benchmark {args.action}: leave out {flag} ({why})")
        from recorder.lerobot.compat import LeRobotUnsupported, check_lerobot

        try:
            lerobot_record = check_lerobot()
        except LeRobotUnsupported as exc:
            print(f"recorder benchmark {args.action}: {exc}", file=sys.stderr)
            return 2
    console = report_console()
    # As `recorder record`: SIGTERM unwinds like Ctrl-C, so the local farm is stopped.
    interrupt_on_sigterm()
    try:
        with raised_priority(settings.capture_nice):
            if lerobot_record is not None:
                return run_lerobot(args.action, settings, lerobot_record, console=console,
                                   command=command)
            if args.action == "demo":
                results = run_demo(settings, console=console, command=command)
            else:
                saved = runner.run_benchmark(settings, console=console, command=command)
                sync = saved["sync"][1] if "sync" in saved else None
                async_ = saved["async"][1] if "async" in saved else None
                _say(console, report.format_report(sync, async_))
                for path, _ in saved.values():
                    _say(console, f"results: {path}")
                results = [result for _, result in saved.values()]
    except PriorityRefused as exc:
        parser.error(str(exc))
    except (RecorderError, CameraError, ComparisonFailed) as exc:
        console.print(f"[red]recorder benchmark: {exc}[/red]")
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]recorder benchmark: interrupted; finished runs are saved in "
                      f"{settings.output_dir}[/yellow]")
        return 130
    return 1 if any(r.totals.tasks_failed for r in results) else 0


def run_lerobot(action: str, settings: BenchmarkSettings, lerobot_record: ModuleType, *,
                console: Console, command: str | None) -> int:
    """A LeRobot comparison (check_lerobot passed): report it; 1 when a run fell short
    (a dataset not complete, a command that failed)."""
    from recorder.benchmark import lerobot_report
    from recorder.lerobot.compat import installed_version

    version = str(installed_version())
    if action == "lerobot":
        from recorder.benchmark.lerobot_compare import compare

        path, result = compare(settings, lerobot_version=version, command=command)
        _say(console, lerobot_report.format_comparison(result))
        failed = any(run.complete_at is None for run in result.runs)
    else:
        import recorder.lerobot.synthetic  # noqa: F401  - the farm_synthetic robot and cameras
        from recorder.benchmark.lerobot_record import compare_record

        path, record = compare_record(settings, lerobot_record, lerobot_version=version,
                                      command=command)
        _say(console, lerobot_report.format_record_comparison(record))
        failed = any(run.exit_code or run.error for run in record.runs)
    _say(console, f"results: {path}")
    return 1 if failed else 0


def _say(console: Console, text: str) -> None:
    """Print plain text as it is: no markup, no highlighting, no re-wrapping."""
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def command_line(args: argparse.Namespace) -> str | None:
    """The command as a results file keeps it (cli.main notes its argv in args.argv)."""
    argv = getattr(args, "argv", None)
    return None if argv is None else shlex.join(["recorder", *portable_command(argv)])


def run_demo(settings: BenchmarkSettings, *, console: Console,
             command: str | None = None) -> list[BenchmarkResult]:
    """A short compare, then an async sweep over DEMO_WORKERS workers; table and charts."""
    from recorder.benchmark import analyze, report, runner
    from recorder.benchmark.results import result_path
    from recorder.benchmark.results_file import save

    update: dict[str, object] = {"compare": True}
    if "episode_time" not in settings.model_fields_set:
        update["episode_time"] = DEMO_EPISODE_TIME_S
    settings = settings.model_copy(update=update)
    saved = runner.run_benchmark(settings, console=console, command=command)
    (sync_path, sync), (async_path, async_) = saved["sync"], saved["async"]
    _say(console, report.format_report(sync, async_))
    paths, sweep = [sync_path, async_path], []
    for workers in sorted({*DEMO_WORKERS, async_.config.video_encoding_workers}):
        if workers == async_.config.video_encoding_workers:
            sweep.append(async_)  # measured by the compare already
            continue
        result = runner.run_once(settings, "async", console=console, workers=workers,
                                 command=command)
        result.verdicts = report.verdicts(sync, result)
        result.compared_with = sync_path.name
        paths.append(save(result, runner.unique_path(result_path(settings.output_dir,
                                                                 result))))
        sweep.append(result)
    console.print(sweep_table(sync, sweep))
    for chart in analyze.write_charts([sync, *sweep], settings.output_dir):
        _say(console, f"chart: {chart}")
    for path in paths:
        _say(console, f"results: {path}")
    return [sync, *sweep]


def sweep_table(sync: BenchmarkResult, sweep: list[BenchmarkResult]) -> Table:
    """One row per worker count, with the sync run as the baseline."""
    from recorder.benchmark.report import speedup

    table = Table(title="Async encoding by number of workers (sync baseline first)")
    for column in ("workers", "recording s", "speedup", "submission s", "background encode s",
                   "ready after last frame s", "late frames", "workers used"):
        table.add_column(column, justify="right")
    s = sync.totals
    sync_drain = s.drain_from_last_frame_s
    table.add_row("inline", f"{s.total_recording_s:.2f}", "1.00x", "-", f"{s.encoding_s:.2f}",
                  "-" if sync_drain is None else f"{sync_drain:.2f}", str(s.late_frames),
                  "recorder")
    for r in sweep:
        t = r.totals
        drain = t.drain_from_last_frame_s
        table.add_row(str(r.config.video_encoding_workers), f"{t.total_recording_s:.2f}",
                      f"{speedup(sync, r):.2f}x", f"{t.submission_s:.2f}", f"{t.encoding_s:.2f}",
                      "-" if drain is None else f"{drain:.2f}", str(t.late_frames),
                      str(len(t.workers_used)))
    return table


def run_analyze_command(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from recorder.benchmark import analyze
    from recorder.benchmark.results_file import ResultsFileError

    console = report_console()
    try:
        charts = analyze.analyze(args.files, output_dir=args.output_dir, console=console)
    except ResultsFileError as exc:
        console.print(f"[red]recorder analyze: {exc}[/red]")
        return 1
    for chart in charts:
        _say(console, f"chart: {chart}")
    return 0
