"""`encoder-worker status` on a terminal: FarmStatus as rich tables, once or live (--watch).

Tables never cut a value: outside a terminal they keep a wide width, and a column too
narrow folds its values onto more lines.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from encoder_worker.status import FarmReader, FarmStatus

# Rich assumes 80 columns when output is not a terminal: too narrow for the tables.
REPORT_WIDTH = 160


def status_console() -> Console:
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, REPORT_WIDTH)
    return console


def run_status(broker: str, *, queue: str, as_json: bool, watch: bool, interval_s: float,
               inspect_timeout_s: float) -> int:
    """Print the farm's status once, or every interval_s until Ctrl-C (--watch)."""
    console = status_console()
    with FarmReader(broker, queue=queue, inspect_timeout_s=inspect_timeout_s) as reader:
        if not watch:
            show(reader.status(), console=console, as_json=as_json)
            return 0
        try:
            if as_json or not console.is_terminal:
                # One document (or one set of tables) per refresh, for a log or a pipe.
                while True:
                    show(reader.status(), console=console, as_json=as_json)
                    sys.stdout.flush()
                    time.sleep(interval_s)  # the refresh period
            with Live(render(reader.status()), console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(interval_s)  # the refresh period
                    live.update(render(reader.status()), refresh=True)
        except KeyboardInterrupt:
            return 0


def show(status: FarmStatus, *, console: Console, as_json: bool) -> None:
    if as_json:
        print(status.model_dump_json(indent=2))
    else:
        console.print(render(status))


def render(status: FarmStatus) -> RenderableType:
    """The status as text and tables."""
    q = status.queue
    at = datetime.fromtimestamp(status.taken_at).strftime("%Y-%m-%d %H:%M:%S")
    oldest = (f", the oldest submitted {duration(q.oldest_age_s)} ago ({q.next_job_id})"
              if q.depth and q.oldest_age_s is not None else "")
    answering = sum(w.answered for w in status.workers)
    parts: list[RenderableType] = [
        Text(f"Farm {status.broker} at {at} (answered in {status.answered_in_s:.2f}s)",
             style="bold"),
        Text(f"Queue {q.name}: {q.depth} queued{oldest}; {q.delivered} delivered to "
             "workers (running, or held in a countdown)"),
        Text(f"Workers: {answering} answered"
             + (f", {len(status.workers) - answering} known only from their jobs"
                if answering < len(status.workers) else "")
             + f"; {status.fps:.1f} frames/s encoding now. Failed jobs kept: "
             f"{status.failed_kept} (`encoder-worker failed`); rejected queue items: "
             f"{status.rejected}"),
    ]
    if status.recorders:
        recorders = _table("Recorders (episodes recorded and not encoded yet)", "host",
                           "backlog", "capturing", "said")
        for recorder in status.recorders:
            recorders.add_row(recorder.host, f"{recorder.backlog} episodes",
                              "yes" if recorder.capturing else "no",
                              f"{duration(recorder.said_s_ago)} ago")
        parts.append(recorders)
    if status.workers:
        parts.append(_workers_table(status))
    if status.leases:
        leases = _table("Leases (jobs being encoded)", "job", "worker", "lease left")
        for lease in status.leases:
            left = (duration(lease.lease_left_s) if lease.lease_left_s is not None
                    else "lapsed: to be sent again")
            leases.add_row(lease.job_id, lease.worker or "?", left)
        parts.append(leases)
    if status.waiting:
        waiting = _table("Waiting in a countdown", "job", "recording", "camera", "waiting for",
                         "retry in", "sent again in")
        for job in status.waiting:
            waiting.add_row(job.job_id, _text(job.recording), job.camera or "-",
                            job.reason or "?", duration(job.retry_in_s),
                            duration(job.resend_in_s) if job.resend_in_s > 0 else "overdue")
        parts.append(waiting)
    parts.append(Text(_recent_line(status)))
    return Group(*parts)


def _workers_table(status: FarmStatus) -> Table:
    table = _table("Workers", "worker", "host", "conc", "up", "job", "recording",
                   "camera", "frames", "fps", "running", "last hour")
    for w in status.workers:
        last_hour = f"{w.finished_last_hour} jobs, {w.frames_last_hour} frames"
        if w.encode_fps_last_hour is not None:
            last_hour += f", {w.encode_fps_last_hour:.0f} fps"
        name = w.name if w.answered else f"{w.name} (did not answer)"
        head = [name, w.host or "?", _text(w.concurrency), duration(w.uptime_s)]
        if not w.jobs:
            table.add_row(*head, "idle", "", "", "", "", "", last_hour)
        for i, job in enumerate(w.jobs):
            frames = "-"
            if job.frames_total:
                done = job.frames_done or 0
                frames = f"{done}/{job.frames_total} ({100 * done / job.frames_total:.0f}%)"
            table.add_row(*(head if i == 0 else [""] * len(head)), job.job_id,
                          _text(job.recording), job.camera or "-", frames,
                          f"{job.fps:.1f}" if job.fps is not None else "-",
                          duration(job.running_s), last_hour if i == 0 else "")
    return table


def _recent_line(status: FarmStatus) -> str:
    r = status.recent
    window = "Last hour" + (" (history full: its newest jobs only)" if r.capped else "")
    line = (f"{window}: {r.completed} completed ({r.succeeded} encoded, {r.already_done} "
            f"already done), {r.failed} failed")
    if r.failed_by_reason:
        line += " (" + ", ".join(f"{k} {v}" for k, v in r.failed_by_reason.items()) + ")"
    if r.mean_encode_s is not None:
        line += (f"; encode time mean {duration(r.mean_encode_s)}, p95 "
                 f"{duration(r.p95_encode_s)}")
    line += f"; {r.frames} frames"
    if r.encode_fps is not None:
        line += f", {r.encode_fps:.1f} frames per second of encode time"
    return line


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in columns:
        # fold: a narrow column wraps its values, never cuts them.
        table.add_column(column, overflow="fold")
    return table


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def duration(seconds: float | None) -> str:
    """1.5s, 2m05s, 3h02m; '-' for None."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
