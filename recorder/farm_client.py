"""Submitting encode jobs to the farm and collecting their results: the embeddable API.

    with EncodingFarmClient(broker_url, queue_size=100) as farm:
        farm.submit(job)            # returns at once unless queue_size jobs are outstanding
        ...
        results = farm.wait()
        farm.get_stats()
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from celery.result import AsyncResult
from pydantic import ValidationError

from encoder_worker.broker import redis_client
from encoder_worker.celery_app import ENCODE_TASK, make_app
from encoder_worker.jobs import EncodeJob, EncodeResult
from encoder_worker.settings import ENCODE_QUEUE

logger = logging.getLogger(__name__)

# How often outstanding results are checked while waiting (one Redis GET per job).
POLL_INTERVAL_S = 0.1


class FarmTimeout(Exception):
    """Jobs were still outstanding when the wait ran out."""


@dataclass
class FarmStats:
    tasks_submitted: int
    tasks_completed: int
    tasks_failed: int
    average_encoding_time: float  # seconds a worker spent per job, queue wait excluded
    queue_depth: int  # jobs waiting in the broker's queue (all clients)
    in_flight: int  # this client's jobs submitted and not finished
    submission_wait_s: float  # time submit() waited for queue space


@dataclass
class _Outstanding:
    job: EncodeJob
    handle: AsyncResult
    submitted_at: float = field(default_factory=time.time)


class EncodingFarmClient:
    """Sends EncodeJobs to the farm's queue, at most queue_size outstanding at once."""

    def __init__(self, broker: str, *, queue_size: int = 100, queue: str = ENCODE_QUEUE) -> None:
        self.broker = broker
        self.queue = queue
        self.queue_size = queue_size
        self.app = make_app(broker)
        self._redis = redis_client(broker)
        self._outstanding: dict[str, _Outstanding] = {}
        self.results: list[EncodeResult] = []
        # Called while waiting; raises when the farm can no longer finish (local workers died).
        self.health_check: Callable[[], None] | None = None
        self.submitted = 0
        self.submission_wait_s = 0.0

    def submit(self, job: EncodeJob) -> float:
        """Queue one job; returns the seconds spent waiting for room under queue_size."""
        started = time.perf_counter()
        while len(self._outstanding) >= self.queue_size:
            if not self.poll():
                time.sleep(POLL_INTERVAL_S)
        waited = time.perf_counter() - started
        self.submission_wait_s += waited
        job = job.model_copy(update={"submitted_at": time.time()})
        handle = self.app.send_task(ENCODE_TASK, args=[job.model_dump(mode="json")],
                                    task_id=job.job_id, queue=self.queue)
        self._outstanding[job.job_id] = _Outstanding(job, handle)
        self.submitted += 1
        return waited

    def poll(self) -> list[EncodeResult]:
        """Collect the results that are ready now; returns them."""
        ready = []
        for job_id, entry in list(self._outstanding.items()):
            if not entry.handle.ready():
                continue
            result = _result_of(entry)
            entry.handle.forget()
            del self._outstanding[job_id]
            self.results.append(result)
            ready.append(result)
            if not result.ok:
                logger.error("episode %d camera %s: %s", result.episode, result.camera,
                             result.error)
        return ready

    def wait(self, *, timeout_s: float | None = None,
             on_result: Callable[[EncodeResult], None] | None = None) -> list[EncodeResult]:
        """Wait until every submitted job has a result; returns all results so far.

        Raises:
            FarmTimeout: timeout_s passed with jobs still outstanding.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self._outstanding:
            if self.health_check is not None:
                self.health_check()
            new = self.poll()
            for result in new:
                if on_result is not None:
                    on_result(result)
            if not self._outstanding:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise FarmTimeout(f"{len(self._outstanding)} encode jobs still outstanding "
                                  f"after {timeout_s:g}s; are workers running?")
            if not new:
                time.sleep(POLL_INTERVAL_S)
        return list(self.results)

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    def queue_depth(self) -> int:
        return int(self._redis.llen(self.queue))

    def get_stats(self) -> FarmStats:
        worker_times = [r.timings.total_s for r in self.results if r.ok]
        return FarmStats(
            tasks_submitted=self.submitted,
            tasks_completed=sum(r.ok for r in self.results),
            tasks_failed=sum(not r.ok for r in self.results),
            average_encoding_time=statistics.fmean(worker_times) if worker_times else 0.0,
            queue_depth=self.queue_depth(),
            in_flight=len(self._outstanding),
            submission_wait_s=self.submission_wait_s,
        )

    def close(self) -> None:
        self._redis.close()
        self.app.close()

    def __enter__(self) -> EncodingFarmClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _result_of(entry: _Outstanding) -> EncodeResult:
    """The EncodeResult of a finished task; failed ones for anything else it ended with."""
    handle = entry.handle
    if handle.state != "SUCCESS":  # FAILURE, or REVOKED (cancelled from Flower, say)
        return EncodeResult.failed(entry.job, f"task {handle.state}: {handle.result!r}")
    try:
        return EncodeResult.model_validate(handle.result)
    except ValidationError as exc:
        return EncodeResult.failed(entry.job, f"the worker sent an invalid result: {exc}")
