"""`recorder record`: capture episodes, encode them inline or on the farm, print a summary."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from encoder_worker.cli_settings import add_settings_arguments, settings_from_args
from encoder_worker.jobs import EncodeResult
from encoder_worker.storage import StorageError, open_storage
from recorder.benchmark.command import (
    add_analyze_arguments,
    add_benchmark_arguments,
    run_analyze_command,
    run_benchmark_command,
)
from recorder.capture.priority import PriorityRefused, raised_priority
from recorder.capture.raw_writer import WriterFailed
from recorder.capture.record_loop import CaptureStats
from recorder.dataset import DatasetError
from recorder.dataset.complete import Completion
from recorder.dataset.pack import PackError, pack_dataset
from recorder.farm.setup import RecorderError
from recorder.farm.upload_spool import SpoolBusy
from recorder.interrupts import interrupt_on_sigterm
from recorder.pending import encode_pending
from recorder.progress import report_console
from recorder.session import SessionReport, pending_uploads_note, record
from recorder.settings import RecorderSettings

logger = logging.getLogger("recorder")

# Flags that LeRobot users arrive with.
DATASET_ALIASES = {
    "--dataset.async_video_encoding": "async_encoding",
    "--dataset.video_encoding_workers": "video_encoding_workers",
    "--dataset.video_encoding_queue_size": "video_encoding_queue_size",
    "--dataset.num_episodes": "episodes",
    "--dataset.repo_id": "repo_id",
    "--dataset.episode_time_s": "episode_time",
    "--dataset.reset_time_s": "reset_time",
    "--dataset.fps": "fps",
    "--dataset.single_task": "task",
}


# The settings that matter to encoding what is already recorded.
PENDING_FIELDS = ["async_encoding", "video_encoding_workers", "video_encoding_queue_size",
                  "broker", "storage", "output_storage", "output_dir", "repo_id", "codec", "crf",
                  "gop", "preset", "pix_fmt", "shared_folder"]
# The settings that say where a dataset is.
DATASET_FIELDS = ["storage", "output_storage", "output_dir", "repo_id"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recorder", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    commands = parser.add_subparsers(dest="command", required=True)
    record = commands.add_parser("record", help="record episodes and encode their videos")
    add_settings_arguments(record, RecorderSettings, aliases=DATASET_ALIASES)
    add_benchmark_arguments(commands.add_parser(
        "benchmark", help="measure inline (sync) against farm (async) encoding"),
        aliases=DATASET_ALIASES)
    add_analyze_arguments(commands.add_parser(
        "analyze", help="summarise benchmark results files and chart them"))
    pending = commands.add_parser(
        "encode-pending", help="encode every recorded episode that has no video yet "
                               "(after a lost farm, --no-wait runs or failed jobs)")
    add_settings_arguments(pending, RecorderSettings, fields=PENDING_FIELDS)
    pending.add_argument("--dry-run", action="store_true",
                         help="only list what would be encoded")
    pack = commands.add_parser(
        "pack", help="pack a dataset's per-episode videos into LeRobot's files of up to "
                     "--max-file-mb per camera (lossless, verified)")
    add_settings_arguments(pack, RecorderSettings, fields=DATASET_FIELDS)
    pack.add_argument("--max-file-mb", type=int, default=200, metavar="MB",
                      help="largest packed video file (LeRobot's default: 200)")
    commands.add_parser(  # parsed by recorder/lerobot/command.py: LeRobot's flags pass on
        "lerobot-record", add_help=False,
        help="LeRobot's lerobot-record (robots, teleoperators, keyboard, --resume) with the "
             "farm as its encoder: put `recorder` in front of a lerobot-record command line")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lerobot-record"]:
        logging.basicConfig(level=logging.INFO,
                            format="%(levelname)s %(asctime)s %(name)s: %(message)s")
        from recorder.lerobot.command import main as lerobot_record

        return lerobot_record(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose and not sys.stderr.isatty():
        # In a log, the recorder says what it does and waits for (a terminal shows bars).
        logging.getLogger("recorder").setLevel(logging.INFO)
    commands = {"record": run_record, "benchmark": run_benchmark_command,
                "analyze": run_analyze_command, "encode-pending": run_encode_pending,
                "pack": run_pack}
    return commands[args.command](parser, args)


def run_record(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    settings = settings_from_args(parser, RecorderSettings, args)
    refuse_broker_without_farm(parser, args, settings)
    if not settings.wait and settings.async_encoding and settings.broker is None:
        parser.error("--no-wait needs a lasting farm (--broker URL): the private farm of the "
                     "zero-config default stops when the recorder exits")
    console = report_console()
    interrupt_on_sigterm()
    try:
        with raised_priority(settings.capture_nice):
            report = record(settings, console=console)
    except PriorityRefused as exc:
        parser.error(str(exc))  # before anything was recorded
    except (RecorderError, StorageError, WriterFailed, DatasetError) as exc:
        # Frames recorded before the failure stay where they were written.
        print(f"recorder: {exc}", file=sys.stderr)
        if not isinstance(exc, SpoolBusy) and (note := pending_uploads_note(settings)):
            print(f"recorder: {note}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"recorder: interrupted; frames recorded so far are kept under "
              f"{settings.raw_storage_url}", file=sys.stderr)
        if note := pending_uploads_note(settings):
            print(f"recorder: {note}", file=sys.stderr)
        return 130
    print_summary(report, console=console)
    return 1 if report.failed else 0


def print_summary(report: SessionReport, *, console: Console) -> None:
    episodes = Table(title=f"Episodes ({report.mode} encoding)")
    for column in ("recording", "frames/camera", "late", "capture s", "save s",
                   "submit s" if report.mode == "async" else "inline encode s"):
        episodes.add_column(column, justify="right")
    for ep in report.episodes:
        blocking = ep.submission_s if report.mode == "async" else ep.inline_encode_s
        capture = ep.capture or CaptureStats(frames=ep.frames)
        episodes.add_row(str(ep.recording), str(capture.frames), str(capture.late_frames),
                         f"{capture.capture_s:.2f}", f"{ep.save_s:.2f}", f"{blocking:.2f}")
    console.print(episodes)

    print_videos(report.results, console=console)
    console.print(f"recording took {report.total_recording_s:.2f}s; raw episodes in "
                  f"{report.raw_storage}")
    if report.all_ready_at is None:
        console.print("not waiting for the farm (--no-wait): videos appear as workers "
                      "finish; `recorder encode-pending` with the same flags completes the "
                      "dataset")
    if report.completion is not None:
        print_completion(report.completion, report.output_storage, console=console)


def print_completion(completion: Completion, url: str, *, console: Console) -> None:
    console.print(f"LeRobot dataset {url}: {completion.total_episodes} episodes, "
                  f"{completion.total_frames} frames", soft_wrap=True)
    if completion.waiting is not None:
        recording, why = completion.waiting
        console.print(f"{completion.staged_left} recorded episodes are not in it yet "
                      f"(recording {recording}: {why}); run `recorder encode-pending` with the "
                      "same flags to complete it", soft_wrap=True)


def print_videos(results: Sequence[EncodeResult], *, console: Console) -> None:
    videos = Table(title="Videos (worker timings in seconds)")
    for column in ("ep", "camera", "status", "frames", "worker", "queue", "fetch", "encode",
                   "verify", "publish", "total"):
        videos.add_column(column, justify="right")
    for r in sorted(results, key=lambda r: (r.recording, r.camera)):
        t = r.timings
        status = "ok" if r.ok else f"[red]FAILED ({r.reason})[/red]"
        videos.add_row(str(r.recording), r.camera, status, str(r.frames), str(r.worker_pid),
                       *(f"{v:.2f}" for v in (t.queue_wait_s, t.fetch_s, t.encode_s,
                                               t.verify_s, t.publish_s, t.total_s)))
    console.print(videos)
    for r in results:
        if not r.ok:
            console.print(f"[red]recording {r.recording} camera {r.camera} failed "
                          f"({r.reason}): {r.error}[/red]")


def refuse_broker_without_farm(parser: argparse.ArgumentParser, args: argparse.Namespace,
                               settings: RecorderSettings) -> None:
    """--broker without --async-encoding would be ignored silently: a usage error."""
    if "broker" in vars(args) and not settings.async_encoding:
        parser.error("--broker is used only with --async-encoding (inline encoding needs no "
                     "farm): add --async-encoding, or leave out --broker")


def run_encode_pending(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    settings = settings_from_args(parser, RecorderSettings, args)
    refuse_broker_without_farm(parser, args, settings)
    console = report_console()
    interrupt_on_sigterm()
    try:
        results, completion = encode_pending(settings, console=console, dry_run=args.dry_run)
    except (RecorderError, StorageError, DatasetError) as exc:
        print(f"recorder: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("recorder: interrupted; run encode-pending again for what is left",
              file=sys.stderr)
        return 130
    if results:
        print_videos(results, console=console)
    if completion is not None:
        print_completion(completion, settings.output_storage_url, console=console)
        if not completion.complete:
            return 1
    return 1 if any(not r.ok for r in results) else 0


def run_pack(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    settings = settings_from_args(parser, RecorderSettings, args)
    if args.max_file_mb < 1:
        parser.error(f"--max-file-mb must be at least 1, got {args.max_file_mb}")
    dataset = open_storage(settings.output_storage_url)
    try:
        report = pack_dataset(dataset, open_storage(settings.raw_storage_url),
                              max_file_mb=args.max_file_mb)
    except (PackError, DatasetError, StorageError) as exc:
        print(f"recorder pack: {exc}", file=sys.stderr)
        return 1
    files = sum(report.files_written.values())
    print(f"packed {report.episodes_packed} episodes into {files} video files "
          f"({report.bytes_written / 1e6:.1f} MB), verified; deleted {report.files_deleted} "
          f"per-episode files; dataset {dataset.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
