"""What `encoder-worker status` reads of a worker's jobs, kept in the ledger: each running
job's progress (at most one update a second, from encode_job's progress callback) and
the last hour's finished jobs (at each task's end, from Celery's task_postrun signal)."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from celery import Celery, Task
from celery.signals import task_postrun
from redis.exceptions import RedisError

from encoder_worker.broker import redis_client
from encoder_worker.celery_app import ENCODE_TASK, worker_settings
from encoder_worker.jobs import EncodeJob, EncodeResult, FailureReason, task_outcome
from encoder_worker.ledger import JobLedger
from encoder_worker.settings import WorkerSettings

logger = logging.getLogger(__name__)


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


def run_result(payload: Any, state: str | None, retval: Any) -> EncodeResult | None:
    """The result a run of the encode task ended its job with (task_postrun's state and
    retval); None for a run that put its job back to wait (RETRY)."""
    if state not in ("SUCCESS", "FAILURE"):
        return None
    try:
        result = task_outcome(state, retval)
    except ValueError:  # pydantic's ValidationError: not a result
        result = None
    if result is None:  # the task itself always returns or raises one: defensive
        result = EncodeResult.failed_payload(payload, f"{type(retval).__name__}: {retval}",
                                             reason=FailureReason.EXCEPTION)
    return result


_ledgers: dict[tuple[int, str], JobLedger] = {}


def process_ledger(app: Celery) -> JobLedger:
    """One ledger (one Redis connection pool) per process and broker."""
    broker = worker_settings(app).broker
    key = (os.getpid(), broker)
    if key not in _ledgers:
        _ledgers[key] = JobLedger(redis_client(broker))
    return _ledgers[key]


@task_postrun.connect
def _task_finished(task: Task | None = None, args: Any = None, retval: Any = None,
                   state: str | None = None, **_: Any) -> None:
    if task is None or task.name != ENCODE_TASK:
        return
    payload = args[0] if args and isinstance(args[0], dict) else {}
    try:
        _record_end(task, payload, run_result(payload, state, retval))
    except Exception:  # reporting must never fail a task
        logger.exception("could not record the end of task %s", task.request.id)


def _record_end(task: Task, payload: dict[str, Any], result: EncodeResult | None) -> None:
    ledger = process_ledger(task.app)
    job_id = str(payload.get("job_id", "?"))
    try:
        ledger.clear_progress(job_id)
    except RedisError as exc:
        logger.warning("job %s: cannot clear its progress: %s", job_id, exc)
    if result is None:
        return  # RETRY: the job waits in a countdown (the ledger's farm:waiting)
    now = time.time()
    try:
        ledger.record_finished({
            "job_id": job_id, "recording": payload.get("recording"),
            "camera": payload.get("camera"), "status": result.status.value,
            "reason": result.reason.value if result.reason and not result.ok else None,
            "worker": task.request.hostname,
            "host": result.worker_host or socket.gethostname(), "frames": result.frames,
            "bytes": result.bytes, "total_s": result.timings.total_s, "finished_at": now},
            now=now)
    except RedisError as exc:
        logger.warning("job %s: cannot add it to the farm's history: %s", job_id, exc)
