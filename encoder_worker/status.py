"""`encoder-worker status`: the farm at one moment, read-only.

Two sources: the ledger's keys in Redis (queue, claims and leases, jobs in a countdown,
progress, the last hour's finished jobs) in two pipelined round trips, then one Celery
broadcast of the `farm_worker` inspect command (control.py) that every worker answers with
its host, concurrency and running jobs. The broadcast ends once every worker node bound to
Celery's control exchange answered, else at its timeout (a worker stopped a moment ago
keeps its binding until kombu expires it): that sets the answer time.

Nothing is written but what any Celery control client writes: kombu's reply binding
bookkeeping (`_kombu.binding*`), which kombu expires itself.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from types import TracebackType
from typing import Any

from pydantic import BaseModel, Field

from encoder_worker.broker import redact, redis_client
from encoder_worker.jobs import ENCODE_QUEUE
from encoder_worker.ledger import FINISHED_MAX, FINISHED_WINDOW_S, JobLedger, LedgerSnapshot

# How long the broadcast waits for workers' answers: a worker on a busy host answers in
# milliseconds; the status answers in about this much more than its Redis reads.
INSPECT_TIMEOUT_S = 1.0


class QueueStatus(BaseModel):
    name: str
    depth: int = Field(description="jobs waiting on the queue list")
    next_job_id: str | None = Field(default=None, description="the job taken next: the oldest")
    oldest_age_s: float | None = Field(
        default=None, description="seconds since the oldest queued job was submitted")
    delivered: int = Field(description="taken by workers, not acknowledged yet: running, "
                                       "or held in a countdown")


class CurrentJob(BaseModel):
    job_id: str
    task_id: str | None = None
    recording: int | None = None
    camera: str | None = None
    frames_done: int | None = None
    frames_total: int | None = None
    fps: float | None = Field(default=None, description="frames encoded per second so far")
    running_s: float | None = None


class WorkerStatus(BaseModel):
    name: str = Field(description="Celery node name")
    host: str | None = None
    pid: int | None = None
    concurrency: int | None = None
    uptime_s: float | None = None
    metrics_port: int | None = None
    answered: bool = Field(description="False: known only from its jobs' progress (it did not "
                                       "answer the broadcast in time, e.g. a busy solo pool)")
    jobs: list[CurrentJob] = Field(default_factory=list)
    fps: float = Field(default=0.0, description="frames per second of its running encodes")
    finished_last_hour: int = 0
    frames_last_hour: int = 0
    encode_fps_last_hour: float | None = Field(
        default=None, description="frames per second of encode time, last hour's jobs")


class LeaseHolder(BaseModel):
    job_id: str
    worker: str | None = None
    lease_left_s: float | None = Field(description="None: the lease lapsed (its worker "
                                                   "died); a reaper sends the job again")


class WaitingJob(BaseModel):
    job_id: str
    recording: int | None = None
    camera: str | None = None
    reason: str = Field(description="manifest_pending, lease_held, lease_lost, "
                                    "transient_error; empty from older workers")
    retry_in_s: float | None = None
    resend_in_s: float = Field(description="after this a reaper sends it again (its worker "
                                           "went away); negative: overdue")


class RecentJobs(BaseModel):
    window_s: float
    capped: bool = Field(description="the history holds its maximum: older jobs of the "
                                     "window are not counted")
    completed: int = Field(description="succeeded or already done")
    succeeded: int
    already_done: int
    failed: int
    failed_by_reason: dict[str, int]
    mean_encode_s: float | None = Field(description="over succeeded encodes")
    p95_encode_s: float | None = None
    frames: int
    encode_fps: float | None = Field(description="frames per second of encode time")


class FarmStatus(BaseModel):
    broker: str
    taken_at: float
    answered_in_s: float
    queue: QueueStatus
    workers: list[WorkerStatus]
    fps: float = Field(description="frames per second of all running encodes")
    leases: list[LeaseHolder]
    waiting: list[WaitingJob]
    recent: RecentJobs
    failed_kept: int = Field(description="failed jobs kept for `encoder-worker failed`")
    rejected: int = Field(description="queue items set aside on farm:rejected")


class FarmReader:
    """Reads FarmStatus from one farm, again and again (--watch) on one connection."""

    def __init__(self, broker: str, *, queue: str = ENCODE_QUEUE,
                 inspect_timeout_s: float = INSPECT_TIMEOUT_S) -> None:
        from encoder_worker.celery_app import make_app

        self.broker = broker
        self.queue = queue
        self.inspect_timeout_s = inspect_timeout_s
        self.ledger = JobLedger(redis_client(broker))
        self.app = make_app(broker)

    def status(self) -> FarmStatus:
        started = time.perf_counter()
        now = time.time()
        snapshot = self.ledger.snapshot(queue=self.queue, now=now)
        # Done once every node bound to the control exchange answered; else at the timeout.
        replies = self.app.control.broadcast(
            "farm_worker", reply=True, timeout=self.inspect_timeout_s,
            limit=len(snapshot.control_nodes) or None)
        return build_status(snapshot, list(replies or []), broker=redact(self.broker) or "",
                            now=now, queue=self.queue,
                            answered_in_s=time.perf_counter() - started)

    def close(self) -> None:
        self.app.close()
        self.ledger.client.close()

    def __enter__(self) -> FarmReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def farm_status(broker: str, *, queue: str = ENCODE_QUEUE,
                inspect_timeout_s: float = INSPECT_TIMEOUT_S) -> FarmStatus:
    """The farm's status now: queue, workers and their jobs, leases, countdowns, last hour."""
    with FarmReader(broker, queue=queue, inspect_timeout_s=inspect_timeout_s) as reader:
        return reader.status()


def build_status(snapshot: LedgerSnapshot, replies: list[dict[str, Any]], *, broker: str,
                 now: float, queue: str = ENCODE_QUEUE, answered_in_s: float = 0.0
                 ) -> FarmStatus:
    """FarmStatus from the ledger's snapshot and the workers' farm_worker replies."""
    progress = snapshot.progress
    workers: dict[str, WorkerStatus] = {}
    placed: set[str] = set()
    for reply in replies:
        for name, info in reply.items():
            if not isinstance(info, dict) or "jobs" not in info:
                # An older worker, without the farm_worker command.
                workers[name] = WorkerStatus(name=name, answered=True)
                continue
            worker = WorkerStatus(
                name=name, host=info.get("host"), pid=info.get("pid"),
                concurrency=info.get("concurrency"), uptime_s=info.get("uptime_s"),
                metrics_port=info.get("metrics_port"), answered=True)
            for job in info["jobs"]:
                job_id = job.get("job_id") or "?"
                worker.jobs.append(_current_job(job_id, job, progress.get(job_id)))
                placed.add(job_id)
            workers[name] = worker
    # Encodes whose worker did not answer (busy solo pool, slow host): from progress.
    for job_id, record in progress.items():
        if job_id in placed or job_id not in snapshot.claims:
            continue  # shown already, or a leftover of a finished or reaped job
        name = record.get("worker") or "?"
        worker = workers.setdefault(name, WorkerStatus(
            name=name, host=record.get("host"), answered=False))
        running = now - record["started_at"] if "started_at" in record else None
        worker.jobs.append(_current_job(job_id, {"task_id": record.get("task_id"),
                                                 "running_s": running}, record))
    finished = snapshot.finished
    by_worker: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in finished:
        by_worker[entry.get("worker") or "?"].append(entry)
    for worker in workers.values():
        worker.fps = sum(job.fps or 0.0 for job in worker.jobs)
        done = by_worker.get(worker.name, [])
        worker.finished_last_hour = len(done)
        worker.frames_last_hour = sum(e.get("frames") or 0 for e in done
                                      if e.get("status") == "succeeded")
        worker.encode_fps_last_hour = _encode_fps(done)
    worker_of = {job.job_id: w.name for w in workers.values() for job in w.jobs}
    leases = [LeaseHolder(job_id=job_id, worker=worker_of.get(job_id) or
                          progress.get(job_id, {}).get("worker"),
                          lease_left_s=snapshot.lease_ttl_s.get(job_id))
              for job_id in sorted(snapshot.claims)]
    waiting = [WaitingJob(job_id=job_id, recording=entry.get("payload", {}).get("recording"),
                          camera=entry.get("payload", {}).get("camera"),
                          reason=entry.get("reason") or "",
                          retry_in_s=(entry["retry_at"] - now) if entry.get("retry_at")
                          else None,
                          resend_in_s=entry.get("due", now) - now)
               for job_id, entry in sorted(snapshot.waiting.items())]
    oldest = snapshot.next_queued or {}
    submitted = oldest.get("submitted_at")
    return FarmStatus(
        broker=broker, taken_at=now, answered_in_s=answered_in_s,
        queue=QueueStatus(name=queue, depth=snapshot.queue_depth,
                          next_job_id=oldest.get("job_id"),
                          oldest_age_s=now - submitted if isinstance(submitted, int | float)
                          else None,
                          delivered=snapshot.delivered),
        workers=sorted(workers.values(), key=lambda w: w.name),
        fps=sum(w.fps for w in workers.values()), leases=leases, waiting=waiting,
        recent=_recent(finished), failed_kept=snapshot.failed_kept,
        rejected=snapshot.rejected)


def _current_job(job_id: str, job: dict[str, Any], record: dict[str, Any] | None
                 ) -> CurrentJob:
    record = record or {}
    return CurrentJob(job_id=job_id, task_id=job.get("task_id"),
                      recording=job.get("recording", record.get("recording")),
                      camera=job.get("camera", record.get("camera")),
                      frames_done=record.get("frames_done"),
                      frames_total=record.get("frames_total"), fps=record.get("fps"),
                      running_s=job.get("running_s"))


def _encode_fps(entries: list[dict[str, Any]]) -> float | None:
    encoded = [e for e in entries if e.get("status") == "succeeded" and e.get("total_s")]
    seconds = sum(e["total_s"] for e in encoded)
    return sum(e.get("frames") or 0 for e in encoded) / seconds if seconds > 0 else None


def _recent(finished: list[dict[str, Any]]) -> RecentJobs:
    statuses = [e.get("status") for e in finished]
    times = sorted(e["total_s"] for e in finished
                   if e.get("status") == "succeeded" and e.get("total_s") is not None)
    reasons: dict[str, int] = defaultdict(int)
    for entry in finished:
        if entry.get("status") == "failed":
            reasons[entry.get("reason") or "other"] += 1
    succeeded, already = statuses.count("succeeded"), statuses.count("already_done")
    return RecentJobs(
        window_s=FINISHED_WINDOW_S, capped=len(finished) >= FINISHED_MAX,
        completed=succeeded + already, succeeded=succeeded, already_done=already,
        failed=statuses.count("failed"), failed_by_reason=dict(sorted(reasons.items())),
        mean_encode_s=sum(times) / len(times) if times else None,
        p95_encode_s=times[math.ceil(0.95 * len(times)) - 1] if times else None,
        frames=sum(e.get("frames") or 0 for e in finished if e.get("status") == "succeeded"),
        encode_fps=_encode_fps(finished))
