"""The job ledger: every key the farm keeps in Redis (the reaper, reaper.py, reads them).

    farm:lease:<job>        a short lease (redis-py's Lock, renewed by a heartbeat): one
                            copy of a job encodes at a time; a lapsed one means a dead worker
    farm:join:<video>       the same kind of lease on joining a split video's parts
                            (parts.py): one part job joins at a time, a dead joiner's lapses
    farm:claims             job -> {task_id, payload} of every job being encoded now
    farm:waiting            job -> {task_id, payload, due} of every job in a Celery countdown
    farm:attempts:<job>     encodes started and not finished (worker deaths)
    farm:time-limits:<job>  encodes stopped by the job's time limit
    farm:failed             job -> {task_id, payload, result, failed_at} of failed jobs, kept
                            for a set time (`encoder-worker failed`, `encoder-worker requeue`)
    farm:rejected           queue items that were not messages, set aside (transport.py)
    farm:capture:<host>     set while a recorder on that host captures an episode (a short
                            TTL it refreshes), naming the CPUs and the CPU time it keeps for
                            itself: workers there pause (--yield-to-capture) or encode on
                            the other CPUs, or capped to the rest of the CPU time
                            (--share-with-capture) meanwhile (priority.CaptureYield)
    farm:recorders          host -> {backlog, capturing, at}: what each recorder last said
                            (every second while it records; the key lapses a minute after
                            the last word): its episodes recorded and not encoded yet
    farm:progress           job -> {worker, frames_done, frames_total, fps, ...} of jobs
                            encoding now, at most one update a second (`encoder-worker status`)
    farm:done               the jobs that succeeded (sorted by time, trimmed at each add to
                            twice the visibility timeout): a copy of one's message that comes
                            back after its worker died unacknowledged is not encoded again
    farm:finished           the last hour's finished jobs (sorted by time, at most
                            FINISHED_MAX, expires an hour after the last one): status's
                            completed and failed counts, encode times and frame rates

Redis redelivers an unacknowledged task only after the visibility timeout (hours, so that
long encodes are not started twice). The lease, the claims and the waiting records are
how the farm notices within a lease period that a worker died, and sends its job again.
kombu's own keys (the queue list and its `unacked` hash) are read, never written, to
tell whether Redis still knows a job.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple

import redis
from redis.exceptions import LockError

logger = logging.getLogger(__name__)

LEASE_PREFIX = "farm:lease:"
JOIN_PREFIX = "farm:join:"
CAPTURE_PREFIX = "farm:capture:"
RECORDERS_KEY = "farm:recorders"
# A capture's word for "this capture keeps every CPU" (workers beside it pause)
ALL_CPUS = "all"
CLAIMS_KEY = "farm:claims"
WAITING_KEY = "farm:waiting"
ATTEMPTS_PREFIX = "farm:attempts:"
TIME_LIMITS_PREFIX = "farm:time-limits:"
REJECTED_KEY = "farm:rejected"
FAILED_KEY = "farm:failed"
PROGRESS_KEY = "farm:progress"
FINISHED_KEY = "farm:finished"
DONE_KEY = "farm:done"
# farm:finished keeps this long a history, and at most this many jobs of it.
FINISHED_WINDOW_S = 3600.0
FINISHED_MAX = 20_000
# kombu's Redis transport keeps delivered, not yet acknowledged messages here.
KOMBU_UNACKED_KEY = "unacked"
# ...and the queues bound to Celery's control exchange here: one per worker node.
KOMBU_PIDBOX_BINDINGS_KEY = "_kombu.binding.celery.pidbox"
_KOMBU_BINDING_SEP = "\x06\x16"
_PIDBOX_SUFFIX = ".celery.pidbox"

_DROP_CLAIM_IF_UNLEASED = ("if redis.call('exists', KEYS[2]) == 0 then "
                           "return redis.call('hdel', KEYS[1], ARGV[1]) else return 0 end")


class CaptureWord(NamedTuple):
    """What a capture keeps of its host: CPUs (ALL_CPUS: every one), and CPU time in CPUs
    (None: a recorder that names none; older recorders)."""

    cpus: frozenset[int] | str
    cpu_time: float | None


class LeaseLost(Exception):
    """The lease lapsed while the job ran: another copy may own the job now."""


class JobLease:
    """Hold the lease for one job while its encode runs (redis-py's Lock, non-blocking),
    or, with JOIN_PREFIX, the lease on joining one split video's parts."""

    def __init__(self, client: redis.Redis, job_id: str, *, ttl_s: float,
                 prefix: str = LEASE_PREFIX) -> None:
        self.client = client
        self.key = prefix + job_id
        self.ttl_s = ttl_s
        # Not thread-local: the heartbeat thread renews the token the task thread took.
        self._lock = client.lock(self.key, timeout=ttl_s, blocking=False, thread_local=False)
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self.lost = False

    def acquire(self, *, wait_s: float = 0.0) -> bool:
        """Take the lease, waiting up to wait_s for its holder to release it or to die (it
        lapses ttl_s after the last heartbeat); False when another holder kept it."""
        taken = (self._lock.acquire(blocking=True, blocking_timeout=wait_s) if wait_s > 0
                 else self._lock.acquire())
        if not taken:
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

    def join_lock(self, video_id: str, *, ttl_s: float) -> JobLease:
        """The lease on joining the parts of one video (video_id: parts.video_id)."""
        return JobLease(self.client, video_id, ttl_s=ttl_s, prefix=JOIN_PREFIX)

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
    def wait(self, job_id: str, *, task_id: str, payload: Any, due: float,
             reason: str = "", retry_at: float | None = None) -> None:
        """Record a countdown: due is when a reaper may send it again, retry_at when its
        worker means to run it, reason why it waits (for `encoder-worker status`)."""
        self.client.hset(WAITING_KEY, job_id, json.dumps(
            {"task_id": task_id, "payload": payload, "due": due, "reason": reason,
             "retry_at": retry_at}))

    def stop_waiting(self, job_id: str) -> None:
        self.client.hdel(WAITING_KEY, job_id)

    def waiting(self, job_id: str) -> bool:
        return bool(self.client.hexists(WAITING_KEY, job_id))

    # done: jobs that succeeded, for keep_s
    def record_done(self, job_id: str, *, now: float, keep_s: float) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(DONE_KEY, {job_id: now})
            pipe.zremrangebyscore(DONE_KEY, "-inf", f"({now - keep_s}")
            pipe.expire(DONE_KEY, max(1, int(keep_s)))
            pipe.execute()

    def done_before(self, job_id: str) -> bool:
        return self.client.zscore(DONE_KEY, job_id) is not None

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
        """A failed job's record, removed (to send it again); None if there is none. The
        job's counts of worker deaths and time limits start again: a job failed for them
        and sent again once the cause is fixed would otherwise fail at once."""
        raw = self.client.hget(FAILED_KEY, job_id)
        if raw is None or not self.client.hdel(FAILED_KEY, job_id):
            return None
        self.client.delete(ATTEMPTS_PREFIX + job_id, TIME_LIMITS_PREFIX + job_id)
        return dict(json.loads(raw))

    # a recorder capturing on a host, for the workers beside it
    def announce_capture(self, host: str, *, ttl_s: float, cpus: Sequence[int] | None = None,
                         cpu_time: float | None = None) -> None:
        """cpus: the CPUs the capture keeps for itself (empty: none, --capture-cpus 0);
        None: all of them. cpu_time: the CPU time it keeps, in CPUs, for workers that cap
        theirs (cpu_cap.py) instead of keeping off those CPUs."""
        kept: list[int] | str = ALL_CPUS if cpus is None else list(cpus)
        word: dict[str, Any] = {"cpus": kept}
        if cpu_time is not None:
            word["cpu_time"] = cpu_time
        self.client.set(CAPTURE_PREFIX + host, json.dumps(word), px=max(1, int(ttl_s * 1000)))

    def end_capture(self, host: str) -> None:
        self.client.delete(CAPTURE_PREFIX + host)

    def capturing(self, host: str) -> bool:
        return bool(self.client.exists(CAPTURE_PREFIX + host))

    def capture_word(self, host: str) -> CaptureWord | None:
        """What a capturing recorder on host keeps for itself; None: no capture. A word
        not understood keeps every CPU."""
        raw = self.client.get(CAPTURE_PREFIX + host)
        if raw is None:
            return None
        try:
            word = json.loads(raw)
            kept = word.get("cpus", ALL_CPUS)
            cpus = ALL_CPUS if kept == ALL_CPUS else frozenset(int(cpu) for cpu in kept)
            cpu_time = word.get("cpu_time")
            return CaptureWord(cpus, None if cpu_time is None else float(cpu_time))
        except (ValueError, AttributeError, TypeError):
            return CaptureWord(ALL_CPUS, None)

    # what each recorder last said of itself, for `encoder-worker status`
    def report_recorder(self, host: str, *, backlog: int, capturing: bool, now: float,
                        ttl_s: float) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(RECORDERS_KEY, host, json.dumps(
                {"backlog": backlog, "capturing": capturing, "at": now}))
            pipe.expire(RECORDERS_KEY, max(1, int(ttl_s)))
            pipe.execute()

    def forget_recorder(self, host: str) -> None:
        self.client.hdel(RECORDERS_KEY, host)

    # progress and history, for `encoder-worker status`
    def report_progress(self, job_id: str, record: dict[str, Any], *, ttl_s: float) -> None:
        """Set a running job's progress; the whole hash lapses ttl_s after the last update
        anywhere (a farm whose workers all died leaves nothing behind)."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(PROGRESS_KEY, job_id, json.dumps(record))
            pipe.expire(PROGRESS_KEY, max(1, int(ttl_s)))
            pipe.execute()

    def clear_progress(self, job_id: str) -> None:
        self.client.hdel(PROGRESS_KEY, job_id)

    def record_finished(self, entry: dict[str, Any], *, now: float) -> None:
        """Add a finished job to the last hour's history (entry holds finished_at); older
        and surplus entries go in the same round trip, and the key expires with the hour."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(FINISHED_KEY, {json.dumps(entry, sort_keys=True): now})
            pipe.zremrangebyscore(FINISHED_KEY, "-inf", f"({now - FINISHED_WINDOW_S}")
            pipe.zremrangebyrank(FINISHED_KEY, 0, -FINISHED_MAX - 1)
            pipe.expire(FINISHED_KEY, int(FINISHED_WINDOW_S))
            pipe.execute()

    def snapshot(self, *, queue: str, now: float) -> LedgerSnapshot:
        """Everything `encoder-worker status` shows from Redis, in two round trips and
        read-only (expired failures are left for `encoder-worker failed` to drop)."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.llen(queue)
            pipe.lindex(queue, -1)  # kombu LPUSHes and BRPOPs: the tail goes next
            pipe.hlen(KOMBU_UNACKED_KEY)
            pipe.hgetall(CLAIMS_KEY)
            pipe.hgetall(WAITING_KEY)
            pipe.hgetall(PROGRESS_KEY)
            pipe.zrangebyscore(FINISHED_KEY, now - FINISHED_WINDOW_S, "+inf")
            pipe.hlen(FAILED_KEY)
            pipe.llen(REJECTED_KEY)
            pipe.smembers(KOMBU_PIDBOX_BINDINGS_KEY)
            pipe.hgetall(RECORDERS_KEY)
            (depth, next_raw, delivered, claims, waiting, progress, finished, failed,
             rejected, pidboxes, recorders) = pipe.execute()
        claims = {k.decode(): json.loads(v) for k, v in claims.items()}
        with self.client.pipeline(transaction=False) as pipe:
            for job_id in claims:
                pipe.pttl(LEASE_PREFIX + job_id)
            ttls = pipe.execute() if claims else []
        return LedgerSnapshot(
            queue_depth=int(depth), next_queued=_payload_of(next_raw) if next_raw else None,
            delivered=int(delivered), claims=claims,
            lease_ttl_s={job_id: (ttl / 1000 if ttl >= 0 else None)
                         for job_id, ttl in zip(claims, ttls, strict=True)},
            waiting={k.decode(): json.loads(v) for k, v in waiting.items()},
            progress={k.decode(): json.loads(v) for k, v in progress.items()},
            finished=[json.loads(raw) for raw in finished], failed_kept=int(failed),
            rejected=int(rejected),
            recorders={k.decode(): json.loads(v) for k, v in recorders.items()},
            control_nodes=sorted(
                queue.removesuffix(_PIDBOX_SUFFIX) for queue in
                (member.decode(errors="replace").split(_KOMBU_BINDING_SEP)[-1]
                 for member in pidboxes) if queue.endswith(_PIDBOX_SUFFIX)))

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
                self.clear_progress(job_id)  # its worker died mid-encode
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


def _payload_of(raw: bytes | str) -> dict[str, Any]:
    """The job payload (the task's first argument) of a kombu message envelope on the
    queue list; {} for an item that is not one (transport.py sets those aside)."""
    try:
        envelope = json.loads(raw)
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        payload = args[0] if args else None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return {}
    return payload if isinstance(payload, dict) else {}


@dataclass
class LedgerSnapshot:
    """The farm's keys at one moment, decoded (JobLedger.snapshot)."""

    queue_depth: int
    next_queued: dict[str, Any] | None  # payload of the job next in line (the oldest)
    delivered: int  # kombu's unacked: running, or held in a countdown
    claims: dict[str, dict[str, Any]]
    lease_ttl_s: dict[str, float | None]  # per claimed job; None: no lease (lapsed)
    waiting: dict[str, dict[str, Any]]
    progress: dict[str, dict[str, Any]]
    finished: list[dict[str, Any]]
    failed_kept: int
    rejected: int
    # Worker nodes bound to Celery's control exchange (a stopped one until kombu expires
    # its binding): how many answers a broadcast can expect.
    control_nodes: list[str]
    recorders: dict[str, dict[str, Any]] = field(default_factory=dict)  # host -> its word
