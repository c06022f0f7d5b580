"""The Celery glue: validate the payload, hold the job's lease, call encode_job."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from typing import Any

from celery import Celery, Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_ready, worker_shutdown
from pydantic import ValidationError

from encoder_worker.broker import redis_client
from encoder_worker.celery_app import ENCODE_TASK
from encoder_worker.encode import encode_job
from encoder_worker.jobs import EncodeJob, EncodeResult, Status
from encoder_worker.lease import LEASE_PREFIX, JobLease, LeaseLost, lease_held
from encoder_worker.raw_episode import manifest_key
from encoder_worker.settings import WorkerSettings
from encoder_worker.storage import StorageError, local_storage_id, open_storage

logger = logging.getLogger(__name__)

# job_id -> {"task_id", "payload"} for every job some worker is encoding right now.
CLAIMS_KEY = "farm:claims"
# job id -> {task_id, payload, due}: jobs waiting in a Celery countdown (for a manifest, a
# lease, a transient error to pass), sent again by a reaper once overdue.
WAITING_KEY = "farm:waiting"
# Transient failures (storage or network) are retried this often, with backoff.
MAX_TRANSIENT_RETRIES = 8
# While a job's manifest is not stored yet, look again after at most this long.
MANIFEST_POLL_MAX_S = 10.0
# A job whose encodes killed their worker this often fails instead of going round again.
MAX_ENCODE_ATTEMPTS = 3
ATTEMPTS_PREFIX = "farm:attempts:"
# Encodes of a job stopped by its soft time limit; a job fails after MAX_TIME_LIMIT_RUNS.
TIME_LIMITS_PREFIX = "farm:time-limits:"
MAX_TIME_LIMIT_RUNS = 2
_DROP_CLAIM_IF_UNLEASED = ("if redis.call('exists', KEYS[2]) == 0 then "
                           "return redis.call('hdel', KEYS[1], ARGV[1]) else return 0 end")


# kombu's Redis transport keeps delivered, not yet acknowledged messages here.
KOMBU_UNACKED_KEY = "unacked"


def job_is_known(client: Any, *, job_id: str, task_id: str, queue: str) -> bool:
    """True when the farm's Redis knows the job: queued, delivered (unacked), claimed,
    leased or with a result. False after a Redis that lost its data (restarted without
    its append-only file): the job must be sent again.
    """
    if client.hexists(CLAIMS_KEY, job_id) or lease_held(client, job_id):
        return True
    if client.exists(f"celery-task-meta-{task_id}"):
        return True
    for raw in client.lrange(queue, 0, -1):
        if _task_id_of(raw) == task_id:
            return True
    for raw in client.hvals(KOMBU_UNACKED_KEY):
        try:
            envelope = json.loads(raw)[0]
        except (ValueError, IndexError, KeyError, TypeError):
            continue
        if _task_id_of(json.dumps(envelope)) == task_id:
            return True
    return False


def _task_id_of(raw: bytes | str) -> str | None:
    try:
        headers = json.loads(raw).get("headers", {})
    except (ValueError, AttributeError):
        return None
    return headers.get("id") if isinstance(headers, dict) else None


def worker_settings(app: Celery) -> WorkerSettings:
    stored = app.conf.get("farm_worker_settings")
    return WorkerSettings.model_validate(stored) if stored else WorkerSettings()


def localize(job: EncodeJob, settings: WorkerSettings) -> EncodeJob:
    """Read local folders named in a job where this worker has them mounted.

    A worker's --storage stands for the job's raw folder, and for its video folder too
    when the job names the same one; --output-storage stands for a separate video folder.
    S3 URLs are used as sent.
    """
    updates = {}
    if settings.storage and is_local_url(job.raw_storage):
        updates["raw_storage"] = settings.storage
    output_mount = settings.output_storage or (
        settings.storage if job.output_storage == job.raw_storage else None)
    if output_mount and is_local_url(job.output_storage):
        updates["output_storage"] = output_mount
    return job.model_copy(update=updates)


def storage_mismatch(sent: EncodeJob, local: EncodeJob) -> str | None:
    """Why this worker's folders are not the recorder's (None: they are, or unknown).

    A worker that maps a job's folder to its own --storage would otherwise look for raw
    frames that are not there for as long as --manifest-wait-s, and the recorder wait.
    """
    for what, url, mapped, expected in (
            ("raw", sent.raw_storage, local.raw_storage, sent.raw_storage_id),
            ("video", sent.output_storage, local.output_storage, sent.output_storage_id)):
        if expected is None or not is_local_url(mapped):
            continue
        try:
            found = local_storage_id(open_storage(mapped))
        except (StorageError, OSError, ValueError):
            found = None
        if found != expected:
            return (f"this worker reads the job's {what} folder {url} at {mapped}, which is "
                    "not the recorder's folder (its .farm-storage-id differs or is missing): "
                    "record into the folder the workers mount (recorder --storage PATH, "
                    "with the worker's --storage naming its own mount of it) or use "
                    "s3:// storage")
    return None


def is_local_url(url: str) -> bool:
    return not url.startswith("s3://")


def manifest_pending(job: EncodeJob, settings: WorkerSettings) -> bool:
    """True while the job's manifest is not stored yet and may still come.

    Recorders upload raw episodes in the background and send the job at episode end, so
    a worker can be faster than the upload; storage that cannot be reached counts as
    not there yet. After manifest_wait_s, encode_job reports the missing manifest.
    """
    if time.time() - job.submitted_at > settings.manifest_wait_s:
        return False
    try:
        return not open_storage(job.raw_storage).exists(manifest_key(job.raw_prefix))
    except StorageError as exc:
        logger.warning("job %s: cannot look for its manifest yet: %s", job.job_id, exc)
        return True


@shared_task(name=ENCODE_TASK, bind=True, max_retries=None)
def encode(self: Task, payload: dict[str, Any], transient_failures: int = 0) -> dict[str, Any]:
    try:
        job = EncodeJob.model_validate(payload)
    except ValidationError as exc:
        return _invalid_payload(payload, exc).model_dump(mode="json")
    settings = worker_settings(self.app)
    sent = job
    job = localize(job, settings)
    if problem := storage_mismatch(sent, job):
        logger.error("job %s: %s", job.job_id, problem)
        return EncodeResult.failed(job, problem, worker_host=socket.gethostname(),
                                   worker_pid=os.getpid()).model_dump(mode="json")
    client = redis_client(settings.broker)
    client.hdel(WAITING_KEY, job.job_id)  # this run is the one that waited, if any
    lease = JobLease(client, job.job_id, ttl_s=settings.lease_ttl_s)
    if not lease.acquire():
        # Another copy (a redelivery) is encoding it: come back when it is done.
        logger.info("job %s is leased by another worker; retrying later", job.job_id)
        raise _retry_later(self, client, payload, settings,
                           countdown=settings.lease_ttl_s / 2)
    claim = json.dumps({"task_id": self.request.id, "payload": payload})
    try:
        try:
            client.hset(CLAIMS_KEY, job.job_id, claim)
            if manifest_pending(job, settings):
                # Often at first (a lagging upload), then every MANIFEST_POLL_MAX_S.
                countdown = min(MANIFEST_POLL_MAX_S,
                                max(0.5, (time.time() - job.submitted_at) / 4))
                logger.info("job %s: raw manifest not uploaded yet; looking again in %.1fs",
                            job.job_id, countdown)
                raise _retry_later(self, client, payload, settings, countdown=countdown)
            result = _encode_counted(client, job, settings, lease)
        finally:
            client.hdel(CLAIMS_KEY, job.job_id)
    except SoftTimeLimitExceeded:
        return _over_time_limit(self, client, job, settings)
    except LeaseLost:
        logger.warning("job %s: lease lapsed mid-encode; not publishing", job.job_id)
        raise _retry_later(self, client, payload, settings,
                           countdown=settings.lease_ttl_s / 2) from None
    except (StorageError, OSError) as exc:
        # Counted apart from Celery's retries, which waits for a lease or a manifest add to.
        if transient_failures >= MAX_TRANSIENT_RETRIES:
            raise
        logger.warning("job %s: %s; retry %d", job.job_id, exc, transient_failures + 1)
        raise _retry_later(self, client, payload, settings,
                           countdown=min(60, 2**transient_failures), exc=exc,
                           transient_failures=transient_failures + 1) from exc
    finally:
        lease.release()
    return result.model_dump(mode="json")


def _retry_later(task: Task, client: Any, payload: dict[str, Any], settings: WorkerSettings,
                 *, countdown: float, exc: BaseException | None = None,
                 transient_failures: int = 0) -> BaseException:
    """Celery's retry after countdown, recorded on WAITING_KEY first.

    The retried message waits, unacknowledged, in the worker that takes it; if that
    worker is killed, Redis gives it back only after the visibility timeout (hours). The
    record lets any worker's reaper send the job again once it is overdue.
    """
    job_id = str(payload.get("job_id"))
    due = time.time() + countdown + settings.lease_ttl_s
    client.hset(WAITING_KEY, job_id, json.dumps(
        {"task_id": task.request.id, "payload": payload, "due": due}))
    kwargs = {"transient_failures": transient_failures} if transient_failures else None
    return task.retry(countdown=countdown, max_retries=None, exc=exc, kwargs=kwargs)


def _encode_counted(client: Any, job: EncodeJob, settings: WorkerSettings,
                    lease: JobLease) -> EncodeResult:
    """encode_job, unless this job already took its workers down too often."""
    key = ATTEMPTS_PREFIX + job.job_id
    attempts = int(client.incr(key))
    client.expire(key, settings.result_expires_s)
    if attempts > MAX_ENCODE_ATTEMPTS:
        return EncodeResult.failed(
            job, f"the encode was started {MAX_ENCODE_ATTEMPTS} times and its worker died "
                 "each time (out of memory? a codec crash?); see the workers' logs",
            worker_host=socket.gethostname(), worker_pid=os.getpid())
    try:
        result = encode_job(job, scratch_dir=settings.scratch_dir, before_publish=lease.check)
    except (StorageError, OSError, LeaseLost, SoftTimeLimitExceeded):
        # The worker lived: this start is not a worker death. Transient errors have their
        # own count (Celery's retries); without this, 3 of them failed the job for good.
        client.decr(key)
        raise
    client.delete(key)
    return result


def _over_time_limit(task: Task, client: Any, job: EncodeJob,
                     settings: WorkerSettings) -> dict[str, Any]:
    """A hung or starved encode was stopped: retried (another worker may take it) up to
    MAX_TIME_LIMIT_RUNS times, then a failed result that says so."""
    key = TIME_LIMITS_PREFIX + job.job_id
    runs = int(client.incr(key))
    client.expire(key, settings.result_expires_s)
    if runs < MAX_TIME_LIMIT_RUNS:
        logger.warning("job %s ran over its time limit of %.0fs; sent again", job.job_id,
                       job.time_limit_s or 0)
        raise task.retry(countdown=1, max_retries=None)
    client.delete(key)
    return EncodeResult.failed(
        job, f"the encode ran over its time limit of {job.time_limit_s:.0f}s "
             f"{MAX_TIME_LIMIT_RUNS} times and was stopped each time (a hung encoder, or a "
             "worker far slower than the limit assumes); see the workers' logs",
        worker_host=socket.gethostname(), worker_pid=os.getpid()).model_dump(mode="json")


def _invalid_payload(payload: Any, exc: ValidationError) -> EncodeResult:
    fields = payload if isinstance(payload, dict) else {}
    episode = fields.get("episode")
    return EncodeResult(
        job_id=str(fields.get("job_id", "?")),
        episode=episode if isinstance(episode, int) and not isinstance(episode, bool) else -1,
        camera=str(fields.get("camera", "?")), status=Status.FAILED,
        error=f"invalid EncodeJob payload: {exc}",
        output_storage=str(fields.get("output_storage", "")),
        output_key=str(fields.get("output_key", "")),
        worker_host=socket.gethostname(), worker_pid=os.getpid(),
        started_at=time.time(), finished_at=time.time(),
    )


class LeaseReaper:
    """Re-queues the jobs of workers that died mid-encode (their lease lapsed).

    Runs in every worker's main process; the atomic claim removal decides which reaper
    re-queues a job.
    """

    def __init__(self, app: Celery, settings: WorkerSettings) -> None:
        self.app = app
        self.settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        client = redis_client(self.settings.broker)
        # A lapsed lease is seen within a quarter of its TTL: a killed worker's job is sent
        # again at most lease_ttl_s * 1.25 after its last heartbeat.
        while not self._stop.wait(self.settings.lease_ttl_s / 4):
            try:
                self.reap_once(client)
            except Exception:
                logger.exception("lease reaper pass failed; trying again")

    def reap_once(self, client: Any) -> list[str]:
        """Re-queue every claimed job whose lease lapsed; returns their job ids."""
        requeued = []
        for raw_job_id, raw_claim in client.hgetall(CLAIMS_KEY).items():
            job_id = raw_job_id.decode()
            if lease_held(client, job_id):
                continue
            claim = json.loads(raw_claim)
            # Atomic: a copy that took the lease since the check above keeps its claim.
            if not client.eval(_DROP_CLAIM_IF_UNLEASED, 2, CLAIMS_KEY, LEASE_PREFIX + job_id,
                               job_id):
                continue
            if self.app.AsyncResult(claim["task_id"]).ready():
                continue
            logger.warning("job %s lost its worker; re-queued", job_id)
            self.app.send_task(ENCODE_TASK, args=[claim["payload"]],
                               task_id=claim["task_id"], queue=self.settings.queue)
            requeued.append(job_id)
        return requeued + self.resend_overdue(client)

    def resend_overdue(self, client: Any) -> list[str]:
        """Send again the jobs whose countdown is long over: their worker went away."""
        resent = []
        now = time.time()
        for raw_job_id, raw_entry in client.hgetall(WAITING_KEY).items():
            job_id = raw_job_id.decode()
            entry = json.loads(raw_entry)
            if entry["due"] > now or lease_held(client, job_id):
                continue
            if not client.hdel(WAITING_KEY, job_id):  # another reaper took it
                continue
            if self.app.AsyncResult(entry["task_id"]).ready():
                continue
            logger.warning("job %s waited in a countdown on a worker that went away; sent "
                           "again", job_id)
            self.app.send_task(ENCODE_TASK, args=[entry["payload"]],
                               task_id=entry["task_id"], queue=self.settings.queue)
            resent.append(job_id)
        return resent


_reapers: list[LeaseReaper] = []


@worker_ready.connect
def _start_reaper(sender: Any = None, **_: Any) -> None:
    app = sender.app if sender is not None else None
    if app is None:
        return
    reaper = LeaseReaper(app, worker_settings(app))
    reaper.start()
    _reapers.append(reaper)


@worker_shutdown.connect
def _stop_reapers(**_: Any) -> None:
    for reaper in _reapers:
        reaper.stop()
