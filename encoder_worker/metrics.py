"""A worker's Prometheus metrics, counted from Celery's signals and served on
--metrics-port by the worker's main process.

Encodes run in the prefork pool's child processes, so prometheus-client's multiprocess
mode collects them: each worker gets a private PROMETHEUS_MULTIPROC_DIR (a new temp
folder, removed at shutdown), so several workers on one host never mix their files; the
live gauge of a child that exited, however it died, is dropped at the next scrape.

Reasons are labels from fixed sets (FAILURE_REASONS: the results' FailureReason codes,
RETRY_REASONS, TAKEOVER_KINDS), never free text, so that a metric's series stay few.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import tempfile
import threading
from typing import Any

from celery import Task
from celery.signals import (
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from encoder_worker.celery_app import ENCODE_TASK, worker_settings
from encoder_worker.jobs import EncodeResult, FailureReason, Status
from encoder_worker.progress import run_result

logger = logging.getLogger(__name__)

FAILURE_REASONS = tuple(reason.value for reason in FailureReason)
RETRY_REASONS = ("manifest_pending", "lease_held", "lease_lost", "transient_error",
                 "time_limit", "other")
TAKEOVER_KINDS = ("lease_lapsed", "countdown_overdue")
STAGES = ("fetch", "encode", "verify", "publish")

_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_WAIT_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 21600, 86400)


# -- Prometheus -----------------------------------------------------------------------

class _Metrics:
    """The metric objects; built after PROMETHEUS_MULTIPROC_DIR is set (the value class
    prometheus-client uses is chosen then)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.started = Counter("farm_jobs_started", "Runs of the encode task started (a "
                               "retried job runs again)")
        self.succeeded = Counter("farm_jobs_succeeded", "Jobs whose video is published; "
                                 "outcome already_done: it was there already; discarded: "
                                 "a window of an episode the recorder cleared",
                                 ["outcome"])
        self.failed = Counter("farm_jobs_failed", "Jobs that failed, by reason", ["reason"])
        self.retried = Counter("farm_jobs_retried", "Task runs that put their job back to "
                               "wait (a countdown), by reason", ["reason"])
        self.running = Gauge("farm_jobs_running", "Encode task runs in progress",
                             multiprocess_mode="livesum")
        self.duration = Histogram("farm_job_duration_seconds", "A worker's time on one job, "
                                  "start to publish (EncodeResult timings.total_s)",
                                  buckets=_DURATION_BUCKETS)
        self.stage = Histogram("farm_job_stage_duration_seconds", "Seconds per stage of an "
                               "encode: fetch, encode, verify, publish", ["stage"],
                               buckets=_DURATION_BUCKETS)
        self.queue_wait = Histogram("farm_job_queue_wait_seconds", "Submission to the "
                                    "start of the encode (clocks of two hosts: roughly)",
                                    buckets=_WAIT_BUCKETS)
        self.frames = Counter("farm_encoded_frames", "Frames in published videos")
        self.bytes = Counter("farm_encoded_bytes", "Bytes of published videos")
        self.takeovers = Counter("farm_lease_takeovers", "Jobs this worker's reaper sent "
                                 "again: lease_lapsed (its worker died mid-encode) or "
                                 "countdown_overdue (it died holding a countdown)", ["kind"])
        # Every label value from the start: a rate over a series that appears late is wrong.
        for outcome in ("encoded", "already_done", "discarded"):
            self.succeeded.labels(outcome)
        for reason in FAILURE_REASONS:
            self.failed.labels(reason)
        for reason in RETRY_REASONS:
            self.retried.labels(reason)
        for kind in TAKEOVER_KINDS:
            self.takeovers.labels(kind)
        for stage in STAGES:
            self.stage.labels(stage)


_metrics: _Metrics | None = None
_metrics_dir: str | None = None  # set in the main process; children inherit it by fork
_server: Any = None
_metrics_lock = threading.Lock()


def metrics() -> _Metrics | None:
    """This process's metrics, or None when the worker serves none."""
    global _metrics
    if _metrics_dir is None:
        return None
    with _metrics_lock:
        if _metrics is None:
            _metrics = _Metrics()
        return _metrics


class MetricsServerError(Exception):
    """The metrics port could not be served; the message says why."""


def start_metrics_server(port: int, *, addr: str = "0.0.0.0") -> None:
    """Serve this worker's metrics (all its processes') on http://addr:port/metrics.

    Call once in the worker's main process, before its pool starts. Raises
    MetricsServerError when the port is taken.
    """
    global _metrics_dir, _server
    if _server is not None:
        return
    from prometheus_client import CollectorRegistry, start_http_server, values

    path = tempfile.mkdtemp(prefix=f"farm-metrics-{port}-")
    # Private to this worker: another worker's files would be summed into ours.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    values.ValueClass = values.get_value_class()  # in case prometheus_client came first
    registry = CollectorRegistry()
    registry.register(_LiveProcessesCollector(path))
    try:
        _server, _ = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        shutil.rmtree(path, ignore_errors=True)
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        raise MetricsServerError(f"cannot serve metrics on port {port}: {exc} (another "
                                 "worker on this host uses it? give each its own "
                                 "--metrics-port)") from exc
    # The port is ours now: a folder of the same port is a killed worker's leftover.
    for stale in glob.glob(os.path.join(os.path.dirname(path), f"farm-metrics-{port}-*")):
        if stale != path:
            shutil.rmtree(stale, ignore_errors=True)
    _metrics_dir = path
    metrics()  # every series, at 0, before the first job (the pool's children add theirs)
    logger.info("metrics on http://%s:%d/metrics", addr, port)


def stop_metrics_server() -> None:
    global _server, _metrics_dir
    if _server is not None:
        _server.shutdown()
        _server.server_close()
        _server = None
    if _metrics_dir is not None:
        shutil.rmtree(_metrics_dir, ignore_errors=True)
        _metrics_dir = None


class _LiveProcessesCollector:
    """prometheus-client's MultiProcessCollector, after dropping the live gauges of
    processes that are gone (a pool child killed without its shutdown signal)."""

    def __init__(self, path: str) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self.path = path
        self._collector = MultiProcessCollector(None, path=path)

    def collect(self) -> Any:
        from prometheus_client.multiprocess import mark_process_dead

        for name in glob.glob(os.path.join(self.path, "gauge_live*_*.db")):
            found = re.search(r"_(\d+)\.db$", name)
            if found and not _alive(int(found.group(1))):
                mark_process_dead(int(found.group(1)), self.path)
        return self._collector.collect()


def _alive(pid: int) -> bool:
    """False for a process that is gone or a zombie (dead, not yet reaped by the pool)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def count_retry(reason: str) -> None:
    """A task run put its job back to wait (tasks.py's countdowns)."""
    if (m := metrics()) is not None:
        m.retried.labels(reason if reason in RETRY_REASONS else "other").inc()


def count_result(result: EncodeResult) -> None:
    """A run that ended outside its task (killed at its hard time limit)."""
    if (m := metrics()) is not None:
        _observe(result, m)


def count_takeover(kind: str) -> None:
    """The lease reaper sent a job of a dead worker again."""
    if (m := metrics()) is not None and kind in TAKEOVER_KINDS:
        m.takeovers.labels(kind).inc()


# -- Celery signals ----------------------------------------------------------------------

@worker_init.connect
def _serve_metrics(sender: Any = None, **_: Any) -> None:
    # `celery -A encoder_worker worker` comes here; `encoder-worker run` started it already.
    app = getattr(sender, "app", None)
    if app is None or _server is not None:
        return
    port = worker_settings(app).metrics_port
    if port is not None:
        start_metrics_server(port)


@worker_shutdown.connect
def _stop_metrics(**_: Any) -> None:
    stop_metrics_server()


@worker_process_init.connect
def _child_started(**_: Any) -> None:
    if _metrics_dir is not None:
        from prometheus_client.multiprocess import mark_process_dead

        # A reused pid must not inherit a dead child's live gauge.
        mark_process_dead(os.getpid(), _metrics_dir)


@worker_process_shutdown.connect
def _child_stopped(pid: int | None = None, **_: Any) -> None:
    if _metrics_dir is not None:
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid or os.getpid(), _metrics_dir)


@task_prerun.connect
def _task_started(task: Task | None = None, **_: Any) -> None:
    if task is None or task.name != ENCODE_TASK:
        return
    if (m := metrics()) is not None:
        m.started.inc()
        m.running.inc()


@task_postrun.connect
def _task_finished(task: Task | None = None, args: Any = None, retval: Any = None,
                   state: str | None = None, **_: Any) -> None:
    if task is None or task.name != ENCODE_TASK:
        return
    m = metrics()
    if m is None:
        return
    m.running.dec()
    payload = args[0] if args and isinstance(args[0], dict) else {}
    try:
        if (result := run_result(payload, state, retval)) is not None:
            _observe(result, m)
        # else RETRY: counted where the countdown was decided (count_retry)
    except Exception:  # counting must never fail a task
        logger.exception("could not count the end of task %s", task.request.id)


def _observe(result: EncodeResult, m: _Metrics) -> None:
    timings = result.timings
    if result.status is Status.SUCCEEDED:
        m.frames.inc(result.frames)
        m.bytes.inc(result.bytes)
        m.duration.observe(timings.total_s)
        for stage in STAGES:
            m.stage.labels(stage).observe(getattr(timings, f"{stage}_s"))
    if result.started_at:  # an encode started (not a job refused before it)
        m.queue_wait.observe(timings.queue_wait_s)
    # The outcome last: a scrape that counts a job done finds its numbers too (CI once
    # read the outcome counter before the duration was observed).
    if result.status is Status.FAILED:
        m.failed.labels((result.reason or FailureReason.OTHER).value).inc()
    else:
        m.succeeded.labels("encoded" if result.status is Status.SUCCEEDED
                           else result.status.value).inc()
