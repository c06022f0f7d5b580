"""The job ledger: every key the farm keeps in Redis, and the reaper that reads them.

    farm:lease:<job>        a short lease (redis-py's Lock, renewed by a heartbeat): one
                            copy of a job encodes at a time; a lapsed one means a dead worker
    farm:claims             job -> {task_id, payload} of every job being encoded now
    farm:waiting            job -> {task_id, payload, due} of every job in a Celery countdown
    farm:attempts:<job>     encodes started and not finished (worker deaths)
    farm:time-limits:<job>  encodes stopped by the job's time limit
    farm:failed             job -> {task_id, payload, result, failed_at} of failed jobs, kept
                            for a set time (`encoder-worker failed`, `encoder-worker requeue`)
    farm:rejected           queue items that were not messages, set aside (transport.py)

Redis redelivers an unacknowledged task only after the visibility timeout (hours, so that
long encodes are not started twice). The lease, the claims and the waiting records are
how the farm notices within a lease period that a worker died, and sends its job again.
kombu's own keys (the queue list and its `unacked` hash) are read, never written, to
tell whether Redis still knows a job.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import redis
from redis.exceptions import LockError

logger = logging.getLogger(__name__)

LEASE_PREFIX = "farm:lease:"
CLAIMS_KEY = "farm:claims"
WAITING_KEY = "farm:waiting"
ATTEMPTS_PREFIX = "farm:attempts:"
TIME_LIMITS_PREFIX = "farm:time-limits:"
REJECTED_KEY = "farm:rejected"
FAILED_KEY = "farm:failed"
# kombu's Redis transport keeps delivered, not yet acknowledged messages here.
KOMBU_UNACKED_KEY = "unacked"

_DROP_CLAIM_IF_UNLEASED = ("if redis.call('exists', KEYS[2]) == 0 then "
                           "return redis.call('hdel', KEYS[1], ARGV[1]) else return 0 end")


class LeaseLost(Exception):
    """The lease lapsed while the job ran: another copy may own the job now."""


class JobLease:
    """Hold the lease for one job while its encode runs (redis-py's Lock, non-blocking)."""

    def __init__(self, client: redis.Redis, job_id: str, *, ttl_s: float) -> None:
        self.client = client
        self.key = LEASE_PREFIX + job_id
        self.ttl_s = ttl_s
        # Not thread-local: the heartbeat thread renews the token the task thread took.
        self._lock = client.lock(self.key, timeout=ttl_s, blocking=False, thread_local=False)
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self.lost = False

    def acquire(self) -> bool:
        """Take the lease; False when another copy of the job holds it."""
        if not self._lock.acquire():
            return False
        self._heartbeat = threading.Thread(target=self._renew, name=f"lease-{self.key}",
                                           daemon=True)
        self._heartbeat.start()
        return True

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self._lock.reacquire()
            except LockError:  # expired, or another copy holds it now
                self.lost = True
                logger.error("lease %s was lost (expired or taken over)", self.key)
                return
            except redis.RedisError as exc:
                # Keep trying: the lease lapses by itself if Redis stays away.
                logger.warning("could not renew lease %s: %s", self.key, exc)

    def check(self) -> None:
        """Raise LeaseLost when the heartbeat found the lease gone."""
        if self.lost:
            raise LeaseLost(f"{self.key} lapsed; another worker may have taken the job over")

    def release(self) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        try:
            self._lock.release()
        except LockError:
            pass  # lapsed, or another copy's now: never free someone else's lease
        except redis.RedisError as exc:
            logger.warning("could not release lease %s (it lapses by itself): %s", self.key, exc)

    def __enter__(self) -> JobLease:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


class JobLedger:
    """The farm's bookkeeping of jobs in one Redis; every method is one or two commands."""

    def __init__(self, client: Any, *, keep_s: float = 7 * 24 * 3600) -> None:
        self.client = client
        self.keep_s = keep_s  # counters live as long as results

    def lease(self, job_id: str, *, ttl_s: float) -> JobLease:
        return JobLease(self.client, job_id, ttl_s=ttl_s)

    def leased(self, job_id: str) -> bool:
        return bool(self.client.exists(LEASE_PREFIX + job_id))

    # claims: jobs being encoded
    def claim(self, job_id: str, *, task_id: str, payload: Any) -> None:
        self.client.hset(CLAIMS_KEY, job_id, json.dumps({"task_id": task_id,
                                                         "payload": payload}))

    def unclaim(self, job_id: str) -> None:
        self.client.hdel(CLAIMS_KEY, job_id)

    def claimed(self, job_id: str) -> bool:
        return bool(self.client.hexists(CLAIMS_KEY, job_id))

    # waiting: jobs in a Celery countdown
    def wait(self, job_id: str, *, task_id: str, payload: Any, due: float) -> None:
        self.client.hset(WAITING_KEY, job_id, json.dumps(
            {"task_id": task_id, "payload": payload, "due": due}))

    def stop_waiting(self, job_id: str) -> None:
        self.client.hdel(WAITING_KEY, job_id)

    def waiting(self, job_id: str) -> bool:
        return bool(self.client.hexists(WAITING_KEY, job_id))

    # counters
    def start_attempt(self, job_id: str) -> int:
        """Count one more encode started; returns the count."""
        return self._count(ATTEMPTS_PREFIX + job_id)

    def take_back_attempt(self, job_id: str) -> None:
        """The encode ended with its worker alive: it was not a worker death."""
        self.client.decr(ATTEMPTS_PREFIX + job_id)

    def clear_attempts(self, job_id: str) -> None:
        self.client.delete(ATTEMPTS_PREFIX + job_id)

    def count_time_limit(self, job_id: str) -> int:
        return self._count(TIME_LIMITS_PREFIX + job_id)

    def clear_time_limits(self, job_id: str) -> None:
        self.client.delete(TIME_LIMITS_PREFIX + job_id)

    def _count(self, key: str) -> int:
        count = int(self.client.incr(key))
        self.client.expire(key, int(self.keep_s))
        return count

    # failed jobs, for operators
    def record_failure(self, job_id: str, *, task_id: str, payload: Any,
                       result: dict[str, Any], keep_s: float) -> None:
        """Keep a failed job (its payload, to send it again) for keep_s."""
        self.client.hset(FAILED_KEY, job_id, json.dumps(
            {"task_id": task_id, "payload": payload, "result": result,
             "failed_at": time.time(), "keep_until": time.time() + keep_s}))
        self.failures()  # drops the expired ones

    def failures(self) -> dict[str, dict[str, Any]]:
        """Failed jobs kept now, by job id; expired ones are dropped on the way."""
        kept = {}
        now = time.time()
        for raw_job_id, raw in self.client.hgetall(FAILED_KEY).items():
            entry = json.loads(raw)
            if entry.get("keep_until", 0) < now:
                self.client.hdel(FAILED_KEY, raw_job_id)
                continue
            kept[raw_job_id.decode()] = entry
        return kept

    def take_failure(self, job_id: str) -> dict[str, Any] | None:
        """A failed job's record, removed (to send it again); None if there is none."""
        raw = self.client.hget(FAILED_KEY, job_id)
        if raw is None or not self.client.hdel(FAILED_KEY, job_id):
            return None
        return dict(json.loads(raw))

    def known(self, job_id: str, *, task_id: str, queue: str) -> bool:
        """True when Redis knows the job: queued, delivered (unacked), claimed, waiting,
        leased or with a result. False after a Redis that lost its data (restarted without
        its append-only file): the job must be sent again.
        """
        if self.claimed(job_id) or self.waiting(job_id) or self.leased(job_id):
            return True
        if self.client.exists(f"celery-task-meta-{task_id}"):
            return True
        if any(_task_id_of(raw) == task_id for raw in self.client.lrange(queue, 0, -1)):
            return True
        for raw in self.client.hvals(KOMBU_UNACKED_KEY):
            try:
                envelope = json.loads(raw)[0]
            except (ValueError, IndexError, KeyError, TypeError):
                continue
            if isinstance(envelope, dict) and _headers_id(envelope) == task_id:
                return True
        return False

    # what the reaper takes over
    def take_lapsed_claims(self) -> list[tuple[str, dict[str, Any]]]:
        """Claims whose lease lapsed (their worker died), removed atomically: only one
        reaper gets each."""
        taken = []
        for raw_job_id, raw_claim in self.client.hgetall(CLAIMS_KEY).items():
            job_id = raw_job_id.decode()
            if self.leased(job_id):
                continue
            # Atomic: a copy that took the lease since the check above keeps its claim.
            if self.client.eval(_DROP_CLAIM_IF_UNLEASED, 2, CLAIMS_KEY, LEASE_PREFIX + job_id,
                                job_id):
                taken.append((job_id, json.loads(raw_claim)))
        return taken

    def take_overdue_waiting(self, *, now: float) -> list[tuple[str, dict[str, Any]]]:
        """Countdowns long over (their worker went away), removed: one reaper gets each."""
        taken = []
        for raw_job_id, raw_entry in self.client.hgetall(WAITING_KEY).items():
            job_id = raw_job_id.decode()
            entry = json.loads(raw_entry)
            if entry["due"] > now or self.leased(job_id):
                continue
            if self.client.hdel(WAITING_KEY, job_id):
                taken.append((job_id, entry))
        return taken


def _headers_id(envelope: dict[str, Any]) -> str | None:
    headers = envelope.get("headers", {})
    return headers.get("id") if isinstance(headers, dict) else None


def _task_id_of(raw: bytes | str) -> str | None:
    try:
        envelope = json.loads(raw)
    except ValueError:
        return None
    return _headers_id(envelope) if isinstance(envelope, dict) else None


class LeaseReaper:
    """Sends again the jobs of workers that died: a lapsed lease on a claimed job, or a
    countdown long overdue. Runs in every worker's main process; the ledger's atomic
    removals decide which reaper sends a job.

    Args:
        resend: sends (task_id, payload) to the queue again.
        is_done: whether the task with this id has its final result already.
    """

    def __init__(self, client: Any, *, lease_ttl_s: float,
                 resend: Callable[[str, Any], None], is_done: Callable[[str], bool]) -> None:
        self.ledger = JobLedger(client)
        self.lease_ttl_s = lease_ttl_s
        self.resend = resend
        self.is_done = is_done
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        # A lapsed lease is seen within a quarter of its TTL: a killed worker's job is sent
        # again at most lease_ttl_s * 1.25 after its last heartbeat.
        while not self._stop.wait(self.lease_ttl_s / 4):
            try:
                self.reap_once()
            except Exception:
                logger.exception("lease reaper pass failed; trying again")

    def reap_once(self) -> list[str]:
        """Send again every job whose worker died; returns their job ids."""
        sent = []
        for job_id, claim in self.ledger.take_lapsed_claims():
            if not self.is_done(claim["task_id"]):
                logger.warning("job %s lost its worker; re-queued", job_id)
                self.resend(claim["task_id"], claim["payload"])
                sent.append(job_id)
        for job_id, entry in self.ledger.take_overdue_waiting(now=time.time()):
            if not self.is_done(entry["task_id"]):
                logger.warning("job %s waited in a countdown on a worker that went away; "
                               "sent again", job_id)
                self.resend(entry["task_id"], entry["payload"])
                sent.append(job_id)
        return sent
