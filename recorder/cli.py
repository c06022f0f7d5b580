"""`recorder record`: capture episodes, encode them inline or on the farm, print a summary."""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import uuid
from collections.abc import Iterator, Sequence
from typing import NoReturn

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from encoder_worker.broker import BrokerUnreachable, check_broker
from encoder_worker.cli_settings import add_settings_arguments, settings_from_args
from encoder_worker.jobs import EncodeResult
from encoder_worker.storage import StorageError, open_storage
from recorder.benchmark.command import (
    add_analyze_arguments,
    add_benchmark_arguments,
    run_analyze_command,
    run_benchmark_command,
)
from recorder.cameras import CameraSource
from recorder.cameras.synthetic import SyntheticCamera
from recorder.farm_client import EncodingFarmClient
from recorder.farm_storage import check_farm_storage, check_storage_access
from recorder.local_farm import FarmStartError, LocalFarm
from recorder.pending import scan_pending
from recorder.raw_writer import WriterFailed
from recorder.session import (
    RecordingSession,
    SessionReport,
    encode_inline,
    episode_job,
    pending_uploads_note,
)
from recorder.settings import RecorderSettings
from recorder.upload_spool import SpoolBusy

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
}


# The settings that matter to encoding what is already recorded.
PENDING_FIELDS = ["async_encoding", "video_encoding_workers", "video_encoding_queue_size",
                  "broker", "storage", "output_storage", "output_dir", "repo_id", "codec", "crf",
                  "gop", "preset", "pix_fmt", "shared_folder"]


class RecorderError(Exception):
    """A problem the user can fix; printed without a traceback, exit code 1."""


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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    commands = {"record": run_record, "benchmark": run_benchmark_command,
                "analyze": run_analyze_command, "encode-pending": run_encode_pending}
    return commands[args.command](parser, args)


def run_record(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    settings = settings_from_args(parser, RecorderSettings, args)
    if not settings.wait and settings.async_encoding and settings.broker is None:
        parser.error("--no-wait needs a lasting farm (--broker URL): the private farm of the "
                     "zero-config default stops when the recorder exits")
    console = Console()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = record(settings, console=console)
    except (RecorderError, StorageError, WriterFailed) as exc:
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


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def record(settings: RecorderSettings, *, console: Console,
           cameras: Sequence[CameraSource] | None = None) -> SessionReport:
    """Run a whole recording session as the settings say; returns its report.

    Args:
        cameras: the sources to record; default settings.cameras synthetic cameras.

    Raises:
        RecorderError: the farm cannot be reached or started.
    """
    if cameras is None:
        cameras = synthetic_cameras(settings)
    with farm_for(settings) as farm, progress_display(console) as progress:
        session = RecordingSession(settings, cameras, farm=farm, progress=progress)
        return session.run()


def synthetic_cameras(settings: RecorderSettings) -> list[SyntheticCamera]:
    return [SyntheticCamera(f"cam{i}", width=settings.width, height=settings.height,
                            fps=settings.fps, seed=settings.seed + i)
            for i in range(settings.cameras)]


@contextlib.contextmanager
def farm_for(settings: RecorderSettings) -> Iterator[EncodingFarmClient | None]:
    """The farm client for these settings (None: inline), once storage and farm answer.

    Raises:
        RecorderError: storage or broker cannot be reached, local workers did not start
        or all died.
    """
    try:
        check_storage_access(settings)
    except StorageError as exc:
        raise RecorderError(str(exc)) from exc
    if not settings.async_encoding:
        yield None
        return
    try:
        check_farm_storage(settings)
        if settings.broker is not None:
            check_broker(settings.broker)
            with EncodingFarmClient(settings.broker,
                                    queue_size=settings.video_encoding_queue_size) as client:
                yield client
            return
        with LocalFarm(workers=settings.video_encoding_workers) as local, \
                EncodingFarmClient(local.broker_url,
                                   queue_size=settings.video_encoding_queue_size) as client:
            client.health_check = local.check_workers
            yield client
    except (BrokerUnreachable, FarmStartError, ValueError) as exc:
        raise RecorderError(str(exc)) from exc


def progress_display(console: Console) -> Progress:
    """A live progress display, silent when output is not a terminal."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, disable=not console.is_terminal,
                    transient=True)


def print_summary(report: SessionReport, *, console: Console) -> None:
    episodes = Table(title=f"Episodes ({report.mode} encoding)")
    for column in ("episode", "frames/camera", "late", "capture s", "finalize s",
                   "submit s" if report.mode == "async" else "inline encode s"):
        episodes.add_column(column, justify="right")
    for ep in report.episodes:
        blocking = ep.submission_s if report.mode == "async" else ep.inline_encode_s
        episodes.add_row(str(ep.episode), str(ep.capture.frames), str(ep.capture.late_frames),
                         f"{ep.capture.capture_s:.2f}", f"{ep.finalize_s:.2f}", f"{blocking:.2f}")
    console.print(episodes)

    print_videos(report.results, console=console)
    console.print(f"recording took {report.total_recording_s:.2f}s; raw episodes in "
                  f"{report.raw_storage}, videos in {report.output_storage}")
    if report.all_ready_at is None:
        console.print("not waiting for the farm (--no-wait): videos appear as workers finish")


def print_videos(results: Sequence[EncodeResult], *, console: Console) -> None:
    videos = Table(title="Videos (worker timings in seconds)")
    for column in ("ep", "camera", "status", "frames", "worker", "queue", "fetch", "encode",
                   "verify", "publish", "total"):
        videos.add_column(column, justify="right")
    for r in sorted(results, key=lambda r: (r.episode, r.camera)):
        t = r.timings
        status = "ok" if r.ok else "[red]FAILED[/red]"
        videos.add_row(str(r.episode), r.camera, status, str(r.frames), str(r.worker_pid),
                       *(f"{v:.2f}" for v in (t.queue_wait_s, t.fetch_s, t.encode_s,
                                               t.verify_s, t.publish_s, t.total_s)))
    console.print(videos)
    for r in results:
        if not r.ok:
            console.print(f"[red]episode {r.episode} camera {r.camera} failed: {r.error}[/red]")


def run_encode_pending(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    settings = settings_from_args(parser, RecorderSettings, args)
    console = Console()
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        results = encode_pending(settings, console=console, dry_run=args.dry_run)
    except (RecorderError, StorageError) as exc:
        print(f"recorder: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("recorder: interrupted; run encode-pending again for what is left",
              file=sys.stderr)
        return 130
    print_videos(results, console=console)
    return 1 if any(not r.ok for r in results) else 0


def encode_pending(settings: RecorderSettings, *, console: Console,
                   dry_run: bool = False) -> list[EncodeResult]:
    """Encode every committed raw episode that has no video yet; returns the results.

    Raises:
        RecorderError, StorageError: storage or farm cannot be reached.
    """
    raw = open_storage(settings.raw_storage_url)
    output = open_storage(settings.output_storage_url)
    options = settings.encoder_options()
    scan = scan_pending(raw, output, options)
    console.print(f"{len(scan.pending)} videos to encode, {scan.done} already there; "
                  f"raw episodes in {raw.url}")
    for episode, camera in scan.interrupted:
        console.print(f"episode {episode} camera {camera} was interrupted while recording: "
                      "its frames are kept but it is not encoded")
    if dry_run or not scan.pending:
        return []
    run_id = "pending-" + uuid.uuid4().hex[:8]
    jobs = [episode_job(episode, camera, run_id=run_id, raw=raw, output=output,
                        options=options) for episode, camera in scan.pending]
    with farm_for(settings) as farm, progress_display(console) as progress:
        task = progress.add_task("encoding", total=len(jobs))
        if farm is None:
            results = []
            for job in jobs:
                results.append(encode_inline(job))
                progress.advance(task)
            return results
        for job in jobs:
            farm.submit(job)
        return farm.wait(on_result=lambda _: progress.advance(task))


if __name__ == "__main__":
    sys.exit(main())
