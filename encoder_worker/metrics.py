"""What a worker tells about its work, from Celery's signals.

- Prometheus metrics, served on --metrics-port by the worker's main process. Encodes run
  in the prefork pool's child processes, so prometheus-client's multiprocess mode
  collects them: each worker gets a private PROMETHEUS_MULTIPROC_DIR (a new temp folder,
  removed at shutdown), so several workers on one host never mix their files; the live
  gauge of a child that exited, however it died, is dropped at the next scrape.
- For `encoder-worker status`, through the ledger: each running job's progress (at most
  one update a second, from encode_job's progress callback) and the last hour's finished
  jobs.
- The `farm_worker` inspect command that status broadcasts: host, pid, concurrency,
  uptime and the jobs running now.

Reasons are labels from fixed sets (FAILURE_REASONS, RETRY_REASONS, TAKEOVER_KINDS), never
free text, so that a metric's series stay few.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from typing import Any

from celery import Celery, Task
from celery.signals import (
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)
from celery.worker.control import inspect_command
from redis.exceptions import RedisError

from encoder_worker.broker import redis_client
from encoder_worker.celery_app import ENCODE_TASK
from encoder_worker.jobs import EncodeJob
from encoder_worker.ledger import JobLedger
from encoder_worker.settings import WorkerSettings
from encoder_worker.storage import StorageError

logger = logging.getLogger(__name__)

FAILURE_REASONS = ("invalid_payload", "storage_not_allowed", "storage_mismatch",
                   "raw_episode", "encode", "storage", "worker_deaths", "time_limit",
                   "transient_retries", "exception", "other")
RETRY_REASONS = ("manifest_pending", "lease_held", "lease_lost", "transient_error",
                 "time_limit", "other")
TAKEOVER_KINDS = ("lease_lapsed", "countdown_overdue")
STAGES = ("fetch", "encode", "verify", "publish")

# The start of a failed result's error (tasks.py, encode.py) -> its reason.
_FAILURE_PREFIXES = (
    ("invalid EncodeJob payload", "invalid_payload"),
    ("this worker reads the job's", "storage_mismatch"),
    ("RawEpisodeError", "raw_episode"),
    ("EncodeError", "encode"),
    ("StorageError", "storage"),
    ("the encode was started", "worker_deaths"),
    ("the encode ran over its time limit", "time_limit"),
)

_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_WAIT_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 21600, 86400)


def failure_reason(error: str | None) -> str:
    """The FAILURE_REASONS label of a failed result's error message."""
    error = error or ""
    if "is not one this worker may use" in error:
        return "storage_not_allowed"
    for prefix, reason in _FAILURE_PREFIXES:
        if error.startswith(prefix):
            return reason
    return "other"


# -- Prometheus -----------------------------------------------------------------------

class _Metrics:
    """The metric objects; built after PROMETHEUS_MULTIPROC_DIR is set (the value class
    prometheus-client uses is chosen then)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.started = Counter("farm_jobs_started", "Runs of the encode task started (a "
                               "retried job runs again)")
        self.succeeded = Counter("farm_jobs_succeeded", "Jobs whose video is published; "
                                 "outcome already_done: it was there already",
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
        for outcome in ("encoded", "already_done"):
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


def count_takeover(kind: str) -> None:
    """The lease reaper sent a job of a dead worker again."""
    if (m := metrics()) is not None and kind in TAKEOVER_KINDS:
        m.takeovers.labels(kind).inc()


# -- progress, for `encoder-worker status` ---------------------------------------------

class JobProgress:
    """encode_job's progress callback: the job's frames and frame rate, in the ledger.

    Never raises: a Redis that does not answer costs the status display, not the encode.
    """

    def __init__(self, ledger: JobLedger, job: EncodeJob, *, task_id: str, worker: str,
                 ttl_s: float) -> None:
        self.ledger = ledger
        self.job_id = job.job_id
        self.ttl_s = ttl_s
        self.record: dict[str, Any] = {
            "task_id": task_id, "worker": worker, "host": socket.gethostname(),
            "pid": os.getpid(), "recording": job.recording, "camera": job.camera,
            "started_at": time.time()}
        self._first: float | None = None
        self._failed = False

    def paused(self, paused: bool) -> None:
        """Say in the ledger whether the encode waits for a recorder's capture to end."""
        self.record["paused_for_capture"] = paused
        self._publish()

    def __call__(self, frames_done: int, frames_total: int) -> None:
        now = time.time()
        if self._first is None:
            self._first = now
        elapsed = now - self._first
        self.record.update(frames_done=frames_done, frames_total=frames_total,
                           fps=frames_done / elapsed if elapsed > 0 else 0.0, updated_at=now)
        self._publish()

    def _publish(self) -> None:
        try:
            self.ledger.report_progress(self.job_id, self.record, ttl_s=self.ttl_s)
        except RedisError as exc:
            if not self._failed:
                logger.warning("job %s: cannot publish its progress: %s", self.job_id, exc)
                self._failed = True


def job_progress(task: Task, ledger: JobLedger, job: EncodeJob,
                 settings: WorkerSettings) -> JobProgress:
    """The progress callback of this task run's encode."""
    return JobProgress(ledger, job, task_id=task.request.id,
                       worker=task.request.hostname or socket.gethostname(),
                       ttl_s=max(60.0, 3 * settings.lease_ttl_s))


# -- Celery signals ----------------------------------------------------------------------

_ledgers: dict[tuple[int, str], JobLedger] = {}


def _settings(app: Celery) -> WorkerSettings:
    stored = app.conf.get("farm_worker_settings")
    return WorkerSettings.model_validate(stored) if stored else WorkerSettings()


def _ledger(app: Celery) -> JobLedger:
    """One ledger (one Redis connection pool) per process and broker."""
    broker = _settings(app).broker
    key = (os.getpid(), broker)
    if key not in _ledgers:
        _ledgers[key] = JobLedger(redis_client(broker))
    return _ledgers[key]


@worker_init.connect
def _serve_metrics(sender: Any = None, **_: Any) -> None:
    # `celery -A encoder_worker worker` comes here; `encoder-worker run` started it already.
    app = getattr(sender, "app", None)
    if app is None or _server is not None:
        return
    port = _settings(app).metrics_port
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
    payload = args[0] if args and isinstance(args[0], dict) else {}
    m = metrics()
    if m is not None:
        m.running.dec()
    try:
        _observe(task, payload, retval, state, m)
    except Exception:  # reporting must never fail a task
        logger.exception("could not record the end of task %s", task.request.id)


def _observe(task: Task, payload: dict[str, Any], retval: Any, state: str | None,
             m: _Metrics | None) -> None:
    ledger = _ledger(task.app)
    job_id = str(payload.get("job_id", "?"))
    try:
        ledger.clear_progress(job_id)
    except RedisError as exc:
        logger.warning("job %s: cannot clear its progress: %s", job_id, exc)
    if state == "SUCCESS" and isinstance(retval, dict):
        result = retval
        status = result.get("status")
        reason = failure_reason(result.get("error")) if status == "failed" else None
    elif state == "FAILURE":
        result = {"error": f"{type(retval).__name__}: {retval}"}
        status = "failed"
        reason = ("transient_retries" if isinstance(retval, (StorageError, OSError))
                  else "exception")
    else:
        return  # RETRY: counted where the countdown was decided (count_retry)
    timings = result.get("timings") or {}
    if m is not None:
        if status == "succeeded":
            m.frames.inc(result.get("frames", 0))
            m.bytes.inc(result.get("bytes", 0))
            m.duration.observe(timings.get("total_s", 0.0))
            for stage in STAGES:
                m.stage.labels(stage).observe(timings.get(f"{stage}_s", 0.0))
        if result.get("started_at"):  # an encode started (not a job refused before it)
            m.queue_wait.observe(timings.get("queue_wait_s", 0.0))
        # The outcome last: a scrape that counts a job done finds its numbers too (CI
        # once read the outcome counter before the duration was observed).
        if status == "failed":
            m.failed.labels(reason).inc()
        elif status in ("succeeded", "already_done"):
            m.succeeded.labels("encoded" if status == "succeeded" else "already_done").inc()
    now = time.time()
    try:
        ledger.record_finished({
            "job_id": job_id, "recording": payload.get("recording"),
            "camera": payload.get("camera"),
            "status": status, "reason": reason, "worker": task.request.hostname,
            "host": result.get("worker_host") or socket.gethostname(),
            "frames": result.get("frames", 0), "bytes": result.get("bytes", 0),
            "total_s": timings.get("total_s"), "finished_at": now}, now=now)
    except RedisError as exc:
        logger.warning("job %s: cannot add it to the farm's history: %s", job_id, exc)


# -- what `encoder-worker status` asks every worker -------------------------------------

@inspect_command(name="farm_worker")
def farm_worker(state: Any, **_: Any) -> dict[str, Any]:
    """This worker's host, pid, concurrency, uptime and running jobs (for status)."""
    from celery.worker import state as worker_state

    controller = state.consumer.controller
    jobs = []
    now = time.time()
    for request in list(worker_state.active_requests):
        args = request.args or []
        payload = args[0] if args and isinstance(args[0], dict) else {}
        jobs.append({"task_id": request.id, "job_id": payload.get("job_id"),
                     "recording": payload.get("recording"), "camera": payload.get("camera"),
                     "running_s": now - request.time_start if request.time_start else None,
                     "worker_pid": request.worker_pid})
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "concurrency": controller.concurrency, "pool": type(controller.pool).__name__,
            "uptime_s": now - controller.startup_time.timestamp(),
            "metrics_port": _settings(state.app).metrics_port, "jobs": jobs}
