"""The Celery glue: validate the payload, hold the job's lease, call encode_job.

A job that failed ends its task in Celery's FAILURE state, raising JobFailed with its
result, so that Flower, `celery events` and AsyncResult count it as failed; Celery
acknowledges it (acks_late acks a FAILURE; only a lost worker requeues) and never retries
it. JobFailed is in the task's `throws`: Celery logs it without a traceback.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from celery import Task, shared_task
from celery.exceptions import Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import task_failure, worker_ready, worker_shutdown
from pydantic import ValidationError
from redis.exceptions import RedisError

from encoder_worker.broker import redis_client
from encoder_worker.celery_app import ENCODE_TASK, worker_settings
from encoder_worker.encode import ProgressCallback, encode_job
from encoder_worker.jobs import EncodeJob, EncodeResult, FailureReason, JobFailed, Status
from encoder_worker.ledger import JobLease, JobLedger, LeaseLost
from encoder_worker.metrics import count_result, count_retry, count_takeover
from encoder_worker.mounts import localize, storage_mismatch, storage_not_allowed
from encoder_worker.parts import encode_part_and_join, video_id
from encoder_worker.priority import CAPTURE_YIELD_MAX_S, CaptureYield, idle_scheduling
from encoder_worker.progress import job_progress
from encoder_worker.raw_layout import manifest_key
from encoder_worker.reaper import LeaseReaper
from encoder_worker.settings import WorkerSettings
from encoder_worker.storage import StorageError, open_storage

logger = logging.getLogger(__name__)

# Transient failures (storage or network) are retried this often, with backoff.
MAX_TRANSIENT_RETRIES = 8
# While a job's manifest is not stored yet, look again after at most this long.
MANIFEST_POLL_MAX_S = 10.0
# A job whose encodes killed their worker this often fails instead of going round again.
MAX_ENCODE_ATTEMPTS = 3
# A job whose encodes ran over its time limit this often fails.
MAX_TIME_LIMIT_RUNS = 2


def manifest_pending(job: EncodeJob, settings: WorkerSettings) -> bool:
    """True while the job's manifest is not stored yet and may still come.

    Recorders upload raw episodes in the background and send the job at episode end, so
    a worker can be faster than the upload; storage that cannot be reached counts as
    not there yet. After manifest_wait_s, encode_job reports the missing manifest. A
    window's job needs none: it carries its window's copy.
    """
    if job.window_manifest is not None or time.time() - job.submitted_at > settings.manifest_wait_s:
        return False
    try:
        return not open_storage(job.raw_storage).exists(manifest_key(job.raw_prefix))
    except StorageError as exc:
        logger.warning("job %s: cannot look for its manifest yet: %s", job.job_id, exc)
        return True


@shared_task(name=ENCODE_TASK, bind=True, max_retries=None, throws=(JobFailed,))
def encode(self: Task, payload: dict[str, Any], transient_failures: int = 0) -> dict[str, Any]:
    """Run one job: its result (succeeded, already_done), or JobFailed with it; a failed
    one is also kept in the ledger for `encoder-worker failed`."""
    try:
        result = _encode_task(self, payload, transient_failures)
    except Retry:
        raise
    except Exception as exc:  # not the job's data but a bug: the traceback to the log
        logger.exception("job %s: the task failed unexpectedly", _job_id(payload))
        result = EncodeResult.failed_payload(
            payload, f"{type(exc).__name__}: {exc}", reason=FailureReason.EXCEPTION,
            **_this_worker())
    if result.ok:
        return result.model_dump(mode="json")
    _keep_failure(worker_settings(self.app), self.request.id, payload, result)
    raise JobFailed.of(result)


def _job_id(payload: Any) -> str:
    return str(payload.get("job_id", "?")) if isinstance(payload, dict) else "?"


def _this_worker() -> dict[str, Any]:
    return {"worker_host": socket.gethostname(), "worker_pid": os.getpid()}


def _keep_failure(settings: WorkerSettings, task_id: str, payload: Any,
                  result: EncodeResult, *, unclaim: bool = False) -> None:
    """Keep a failed job for `encoder-worker failed` (and `requeue`); unclaim: and drop
    its claim, for a run that ended without reaching its own unclaim."""
    job_id = _job_id(payload)
    try:
        ledger = JobLedger(redis_client(settings.broker))
        if unclaim:
            ledger.unclaim(job_id)
        ledger.record_failure(job_id, task_id=task_id, payload=payload,
                              result=result.model_dump(mode="json"),
                              keep_s=settings.failed_keep_s)
    except RedisError as exc:  # the result still reaches the recorder
        logger.warning("job %s: could not keep its failure for `encoder-worker failed`: %s",
                       job_id, exc)


@task_failure.connect
def _killed_at_hard_limit(sender: Task | None = None, task_id: str = "",
                          exception: BaseException | None = None, args: Any = None,
                          **_: Any) -> None:
    """A run killed at its hard time limit (Celery tells the worker's main process) never
    reached its own unclaim: the reaper would take the job for lost once its lease lapsed
    and run it again, its result unread. It failed: kept and counted as every failure."""
    if sender is None or sender.name != ENCODE_TASK \
            or not isinstance(exception, TimeLimitExceeded):
        return
    payload = args[0] if args else None
    limit = exception.args[0] if exception.args else "?"
    result = EncodeResult.failed_payload(
        payload, f"killed at its hard time limit ({limit}s): the encode could "
                 "not stop at its soft limit (a process stopped or stuck in the codec); "
                 "see the worker's log", reason=FailureReason.TIME_LIMIT, **_this_worker())
    _keep_failure(worker_settings(sender.app), task_id, payload, result, unclaim=True)
    count_result(result)


def _encode_task(self: Task, payload: dict[str, Any], transient_failures: int) -> EncodeResult:
    try:
        job = EncodeJob.model_validate(payload)
    except ValidationError as exc:
        return _invalid_payload(payload, exc)
    settings = worker_settings(self.app)
    sent = job
    job = localize(job, settings)
    if problem := storage_not_allowed(job, settings):
        return _refused(job, problem, FailureReason.STORAGE_NOT_ALLOWED)
    if problem := storage_mismatch(sent, job):  # only storage it may use is looked at
        return _refused(job, problem, FailureReason.STORAGE_MISMATCH)
    ledger = JobLedger(redis_client(settings.broker), keep_s=settings.result_expires_s)
    ledger.stop_waiting(job.job_id)  # this run is the one that waited, if any
    lease = ledger.lease(job.job_id, ttl_s=settings.lease_ttl_s)
    if not lease.acquire():
        # Another copy (a redelivery) is encoding it: come back when it is done.
        logger.info("job %s is leased by another worker; retrying later", job.job_id)
        raise _retry_later(self, ledger, payload, settings,
                           countdown=settings.lease_ttl_s / 2, reason="lease_held")
    try:
        if (done := _done_before(ledger, job)) is not None:
            return done
        try:
            ledger.claim(job.job_id, task_id=self.request.id, payload=payload)
            if manifest_pending(job, settings):
                # Often at first (a lagging upload), then every MANIFEST_POLL_MAX_S.
                countdown = min(MANIFEST_POLL_MAX_S,
                                max(0.5, (time.time() - job.submitted_at) / 4))
                logger.info("job %s: raw manifest not uploaded yet; looking again in %.1fs",
                            job.job_id, countdown)
                raise _retry_later(self, ledger, payload, settings, countdown=countdown,
                                   reason="manifest_pending")
            result = _encode_counted(ledger, job, settings, lease,
                                     progress=job_progress(self, ledger, job, settings),
                                     video=video_id(sent))
            if result.ok:  # before Celery stores the result and acknowledges the message
                _record_done(ledger, result, settings)
        finally:
            ledger.unclaim(job.job_id)
    except SoftTimeLimitExceeded:
        return _over_time_limit(self, ledger, job)
    except LeaseLost:
        logger.warning("job %s: lease lapsed mid-encode; not publishing", job.job_id)
        raise _retry_later(self, ledger, payload, settings,
                           countdown=settings.lease_ttl_s / 2, reason="lease_lost") from None
    except StorageError as exc:
        if exc.permanent:
            # A missing bucket or refused credentials: no retry fixes it; say so now.
            logger.error("job %s: %s", job.job_id, exc)
            return EncodeResult.failed(job, f"StorageError: {exc}", reason=FailureReason.STORAGE,
                                       **_this_worker())
        return _transient(self, ledger, payload, settings, job, exc, transient_failures)
    except OSError as exc:
        # The worker's own scratch files (its temp folders), not a storage call: another
        # run, or another worker, may have the room.
        return _transient(self, ledger, payload, settings, job, exc, transient_failures)
    finally:
        lease.release()
    return result


def _refused(job: EncodeJob, problem: str, reason: FailureReason) -> EncodeResult:
    logger.error("job %s: %s", job.job_id, problem)
    return EncodeResult.failed(job, problem, reason=reason, **_this_worker())


def _transient(task: Task, ledger: JobLedger, payload: dict[str, Any],
               settings: WorkerSettings, job: EncodeJob, exc: Exception,
               transient_failures: int) -> EncodeResult:
    """Celery's retry after a backoff; a failed result once MAX_TRANSIENT_RETRIES ran out.
    Counted apart from Celery's retries, which waiting for a lease or a manifest adds to."""
    if transient_failures >= MAX_TRANSIENT_RETRIES:
        logger.error("job %s: %s; still failing after %d retries", job.job_id, exc,
                     transient_failures)
        return EncodeResult.failed(
            job, f"{type(exc).__name__}: {exc} (still failing after {transient_failures} "
                 "retries)", reason=FailureReason.TRANSIENT_RETRIES, **_this_worker())
    logger.warning("job %s: %s; retry %d", job.job_id, exc, transient_failures + 1)
    raise _retry_later(task, ledger, payload, settings,
                       countdown=min(60, 2**transient_failures), exc=exc,
                       transient_failures=transient_failures + 1,
                       reason="transient_error") from exc


def _record_done(ledger: JobLedger, result: EncodeResult, settings: WorkerSettings) -> None:
    try:
        ledger.record_done(result.job_id, now=time.time(),
                           keep_s=2 * settings.visibility_timeout_s)
    except RedisError as exc:  # the video is published; only a later copy would redo it
        logger.warning("job %s: could not note it done (a copy of its message, should one "
                       "come back, would encode it again): %s", result.job_id, exc)


def _done_before(ledger: JobLedger, job: EncodeJob) -> EncodeResult | None:
    """An already_done result when a copy of the job succeeded before, else None.

    That copy's worker died before acknowledging the message, which came back (after the
    visibility timeout). Since then the recorder may have packed the video away, or
    deleted the episode's raw frames once the dataset counted it: encoding again would
    leave a stray video, or fail for want of raw frames. Nothing is read from storage.
    """
    if not ledger.done_before(job.job_id):
        return None
    logger.info("job %s succeeded before (a copy of its message came back, as after a worker "
                "died before acknowledging it); not encoded again", job.job_id)
    now = time.time()
    return EncodeResult(job_id=job.job_id, recording=job.recording, camera=job.camera,
                        status=Status.ALREADY_DONE, output_storage=job.output_storage,
                        output_key=job.output_key, codec=job.options.codec,
                        started_at=now, finished_at=now, **_this_worker())


def _retry_later(task: Task, ledger: JobLedger, payload: dict[str, Any],
                 settings: WorkerSettings, *, countdown: float,
                 exc: BaseException | None = None, transient_failures: int = 0,
                 reason: str = "other") -> BaseException:
    """Celery's retry after countdown, recorded in the ledger as waiting first.

    The retried message waits, unacknowledged, in the worker that takes it; if that
    worker is killed, Redis gives it back only after the visibility timeout (hours). The
    record lets any worker's reaper send the job again once it is overdue.
    """
    ledger.wait(str(payload.get("job_id")), task_id=task.request.id, payload=payload,
                due=time.time() + countdown + settings.lease_ttl_s, reason=reason,
                retry_at=time.time() + countdown)
    count_retry(reason)
    kwargs = {"transient_failures": transient_failures} if transient_failures else None
    return task.retry(countdown=countdown, max_retries=None, exc=exc, kwargs=kwargs)


def _encode_counted(ledger: JobLedger, job: EncodeJob, settings: WorkerSettings,
                    lease: JobLease, *, progress: ProgressCallback | None = None,
                    video: str | None = None) -> EncodeResult:
    """encode_job (a part job: its part, then the join if every part is there), unless
    this job already took its workers down too often. video: parts.video_id of the job."""
    if ledger.start_attempt(job.job_id) > MAX_ENCODE_ATTEMPTS:
        return EncodeResult.failed(
            job, f"the encode was started {MAX_ENCODE_ATTEMPTS} times and its worker died "
                 "each time (out of memory? a codec crash?); see the workers' logs",
            reason=FailureReason.WORKER_DEATHS, **_this_worker())
    pause = capture_yield(ledger, job, settings, progress)
    if pause is not None:
        job = pause.fitted(job)
    try:
        with idle_scheduling(settings.idle_priority):
            if job.part is not None:
                result = encode_part_and_join(
                    job, join_lock=ledger.join_lock(video or video_id(job),
                                                    ttl_s=settings.lease_ttl_s),
                    scratch_dir=settings.scratch_dir, before_publish=lease.check,
                    progress=progress, pause=pause)
            else:
                result = encode_job(job, scratch_dir=settings.scratch_dir,
                                    before_publish=lease.check, progress=progress,
                                    pause=pause)
        if pause is not None:
            result.timings.paused_s = pause.paused_s
            result.beside_capture = pause.summary()
    except Exception:
        # The worker lived: this start is not a worker death (only a killed worker skips
        # this). Transient errors have their own count (Celery's retries); without this,
        # 3 of them failed the job for good.
        ledger.take_back_attempt(job.job_id)
        raise
    finally:
        if pause is not None:
            pause.release()
    ledger.clear_attempts(job.job_id)
    return result


def capture_yield(ledger: JobLedger, job: EncodeJob, settings: WorkerSettings,
                  progress: ProgressCallback | None) -> CaptureYield | None:
    """The job's pause point with --yield-to-capture: paused at most half its time limit
    in all, so that pausing never makes it run over."""
    if not (settings.yield_to_capture or settings.share_with_capture):
        return None
    budget = job.time_limit_s / 2 if job.time_limit_s else CAPTURE_YIELD_MAX_S
    on_pause = getattr(progress, "paused", None)
    return CaptureYield(ledger, budget_s=budget, on_pause=on_pause,
                        share=settings.share_with_capture)


def _over_time_limit(task: Task, ledger: JobLedger, job: EncodeJob) -> EncodeResult:
    """A hung or starved encode was stopped: retried (another worker may take it) up to
    MAX_TIME_LIMIT_RUNS times, then a failed result that says so."""
    if ledger.count_time_limit(job.job_id) < MAX_TIME_LIMIT_RUNS:
        logger.warning("job %s ran over its time limit of %.0fs; sent again", job.job_id,
                       job.time_limit_s or 0)
        count_retry("time_limit")
        raise task.retry(countdown=1, max_retries=None)
    ledger.clear_time_limits(job.job_id)
    return EncodeResult.failed(
        job, f"the encode ran over its time limit of {job.time_limit_s:.0f}s "
             f"{MAX_TIME_LIMIT_RUNS} times and was stopped each time (a hung encoder, or a "
             "worker far slower than the limit assumes); see the workers' logs",
        reason=FailureReason.TIME_LIMIT, **_this_worker())


def _invalid_payload(payload: Any, exc: ValidationError) -> EncodeResult:
    now = time.time()
    return EncodeResult.failed_payload(payload, f"invalid EncodeJob payload: {exc}",
                                       reason=FailureReason.INVALID_PAYLOAD,
                                       started_at=now, finished_at=now, **_this_worker())


_reapers: list[LeaseReaper] = []


@worker_ready.connect
def _start_reaper(sender: Any = None, **_: Any) -> None:
    app = sender.app if sender is not None else None
    if app is None:
        return
    settings = worker_settings(app)

    def resend(task_id: str, payload: Any) -> None:
        app.send_task(ENCODE_TASK, args=[payload], task_id=task_id, queue=settings.queue)

    reaper = LeaseReaper(redis_client(settings.broker), lease_ttl_s=settings.lease_ttl_s,
                         resend=resend, is_done=lambda task_id: app.AsyncResult(task_id).ready(),
                         on_takeover=count_takeover)
    reaper.start()
    _reapers.append(reaper)


@worker_shutdown.connect
def _stop_reapers(**_: Any) -> None:
    for reaper in _reapers:
        reaper.stop()
