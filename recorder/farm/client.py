"""Submitting encode jobs to the farm and collecting their results: the embeddable API.

    with EncodingFarmClient(broker_url, queue_size=100) as farm:
        farm.submit(job)            # returns at once unless queue_size videos are outstanding
        ...
        results = farm.wait()
        farm.get_stats()
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType

from celery.exceptions import TimeLimitExceeded, WorkerLostError
from celery.result import AsyncResult
from kombu.exceptions import OperationalError
from pydantic import ValidationError
from redis.exceptions import RedisError

from encoder_worker.broker import redact, redis_client
from encoder_worker.celery_app import ENCODE_TASK, finished_tasks, make_app
from encoder_worker.jobs import (
    ENCODE_QUEUE,
    EncodeJob,
    EncodeResult,
    FailureReason,
    merge_part_results,
    task_outcome,
)
from encoder_worker.ledger import JobLedger
from recorder.farm.announcer import RecorderAnnouncer

logger = logging.getLogger(__name__)

# How often outstanding results are checked while waiting (one Redis GET per job).
POLL_INTERVAL_S = 0.1
# How often, while waiting, outstanding jobs are looked for in the farm's Redis (a Redis
# that lost its data lost them): a job unknown at two checks in a row is sent again.
LOST_JOB_CHECK_S = 20.0
# How often a Redis that does not answer is said so again.
BROKER_DOWN_NOTE_S = 10.0
# While waiting, a line says what for this often (logged; a terminal has its progress bar).
WAIT_NOTE_S = 10.0
WAIT_NOTE_JOBS = 4  # outstanding jobs named in it
# A task still running this long after its soft time limit is killed by its worker.
HARD_TIME_LIMIT_MARGIN_S = 60.0
BROKER_ERRORS = (OperationalError, RedisError, ConnectionError, OSError)


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
    unknown_since: float | None = None  # the farm's Redis did not know the job then


class EncodingFarmClient:
    """Sends EncodeJobs to the farm's queue, for at most queue_size videos at once (a video's
    windows and parts count once: an episode being recorded sends one every few seconds).

    The farm's Redis may go away for a while (a restart, a network cut): jobs submitted
    meanwhile are kept here and sent once it answers again, so recording goes on. A Redis
    that came back without its data (no append-only file) lost the jobs it held: while
    waiting, jobs that the farm no longer knows of are sent again (their videos are
    published once: a job that finds its verified video returns already_done).

    A video may come as part jobs (EncodeJob.part): a long episode's, or the windows of one
    sent while it was recorded. Their results are held until the last one comes, and
    callers get one merged result per video (`results`, `poll`, `wait`), counted as one in
    `submitted` and get_stats once the part that knows the count is sent. The windows of a
    recording that is then discarded are forgotten.
    """

    def __init__(self, broker: str, *, queue_size: int = 100, queue: str = ENCODE_QUEUE,
                 lost_job_check_s: float = LOST_JOB_CHECK_S,
                 wait_note_s: float = WAIT_NOTE_S, capture_cpus: float = 0.7) -> None:
        self.broker = broker
        self.queue = queue
        self.queue_size = queue_size
        self.lost_job_check_s = lost_job_check_s
        self.wait_note_s = wait_note_s
        self.app = make_app(broker)
        self._redis = redis_client(broker)
        self._ledger = JobLedger(self._redis)
        self._outstanding: dict[str, _Outstanding] = {}
        self._unsent: deque[EncodeJob] = deque()
        self._down_since: float | None = None
        self._down_noted_at = 0.0
        self._last_lost_check = time.monotonic()
        self.results: list[EncodeResult] = []
        # parent job id -> part index -> result, of split videos with parts still running
        self._parts: dict[str, dict[int, EncodeResult]] = {}
        self._part_counts: dict[str, int] = {}  # parent job id -> its parts, once known
        self._saved: set[int] = set()  # recordings whose every video is sent (not windows)
        self._discarded: set[int] = set()  # recordings cleared after windows were sent
        # Called while waiting; raises when the farm can no longer finish (local workers died).
        self.health_check: Callable[[], None] | None = None
        self.submitted = 0
        self.resent = 0  # jobs sent again because the farm had lost them
        self._announcer = RecorderAnnouncer(self._ledger, capture_cpus=capture_cpus)
        self.submission_wait_s = 0.0

    def capturing(self, capturing: bool) -> None:
        """Say whether this host's recorder is capturing an episode now (never blocks):
        workers beside it started with --yield-to-capture pause meanwhile, and those
        with --share-with-capture leave it the CPUs it keeps."""
        self._announcer.capturing(capturing)

    def backlog_episodes(self, *, also: Iterable[int] = ()) -> int:
        """Recordings with a video not encoded yet (sent, or waiting to be sent), with also
        (episodes recorded and not handed over yet); said to the farm for its status."""
        recordings = {e.job.recording for e in self._outstanding.values()}
        recordings |= {job.recording for job in self._unsent}
        # An episode still being captured has windows with the farm: not a backlog yet.
        recordings = (recordings & self._saved) | set(also)
        self._announcer.backlog(len(recordings))
        return len(recordings)

    def submit(self, job: EncodeJob) -> float:
        """Queue one job; returns the seconds spent waiting for room under queue_size (a job
        of a video already outstanding needs none).

        Never raises for an unreachable Redis: the job is sent once Redis answers.
        """
        started = time.perf_counter()
        video = job.video_job_id
        while video not in (videos := self._videos_outstanding()) and \
                len(videos) >= self.queue_size:
            if not self.poll():
                time.sleep(POLL_INTERVAL_S)
        waited = time.perf_counter() - started
        self.submission_wait_s += waited
        self._unsent.append(job.model_copy(update={"submitted_at": time.time()}))
        if _counts_the_video(job):
            self.submitted += 1  # videos, not part jobs
            self._saved.add(job.recording)
        self._send_unsent()
        return waited

    def _videos_outstanding(self) -> set[str]:
        return {e.job.video_job_id for e in self._outstanding.values()} | \
            {job.video_job_id for job in self._unsent}

    def discard(self, recording: int) -> None:
        """Forget the windows sent of a recording that was cleared or interrupted: their
        results are dropped as they come (their workers keep nothing of them)."""
        self._discarded.add(recording)

    def _send_unsent(self) -> None:
        while self._unsent:
            job = self._unsent[0]
            try:
                handle = self._send(job)
            except BROKER_ERRORS as exc:
                self._broker_down(exc)
                return
            self._unsent.popleft()
            self._outstanding[job.job_id] = _Outstanding(job, handle)
        self._broker_back()

    def _send(self, job: EncodeJob) -> AsyncResult:
        # No publish retries: a Redis that is down must not hold the recorder for long.
        limits = {}
        if job.time_limit_s is not None:
            # Soft: the task stops itself and is retried; hard: its process is killed.
            limits = {"soft_time_limit": job.time_limit_s,
                      "time_limit": job.time_limit_s + HARD_TIME_LIMIT_MARGIN_S}
        return self.app.send_task(ENCODE_TASK, args=[job.model_dump(mode="json")],
                                  task_id=job.job_id, queue=self.queue, retry=False, **limits)

    def _broker_down(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        if now - self._down_noted_at >= BROKER_DOWN_NOTE_S:
            self._down_noted_at = now
            logger.warning(
                "the farm's Redis at %s does not answer (%s) for %.0fs: recording goes on; "
                "%d jobs wait to be sent, %d for their results", redact(self.broker),
                type(exc).__name__, now - self._down_since, len(self._unsent),
                len(self._outstanding))

    def _broker_back(self) -> None:
        if self._down_since is not None:
            logger.warning("the farm's Redis at %s answers again after %.0fs",
                           redact(self.broker), time.monotonic() - self._down_since)
            self._down_since = None
            self._down_noted_at = 0.0

    def poll(self) -> list[EncodeResult]:
        """Send what waits to be sent, collect the results that are ready now; returns them."""
        self._send_unsent()
        ready = []
        try:
            finished = finished_tasks(self.app, list(self._outstanding))
            for job_id, entry in [(i, e) for i, e in self._outstanding.items() if i in finished]:
                result = _result_of(entry)
                entry.handle.forget()
                del self._outstanding[job_id]
                if entry.job.recording in self._discarded:
                    continue
                merged = self._video_result(entry.job, result)
                if merged is None:
                    continue  # a part; the video's other parts are still running
                result = merged
                self.results.append(result)
                ready.append(result)
                if not result.ok:
                    logger.error("recording %d camera %s: %s", result.recording, result.camera,
                                 result.error)
        except BROKER_ERRORS as exc:
            self._broker_down(exc)
        return ready

    def _video_result(self, job: EncodeJob, result: EncodeResult) -> EncodeResult | None:
        """result, or for a part job the merged result of its video once every part has
        one (None before)."""
        part = job.part
        if part is None:
            return result
        parts = self._parts.setdefault(part.parent_id, {})
        parts[part.index] = result
        if part.count is not None:
            self._part_counts[part.parent_id] = part.count
        count = self._part_counts.get(part.parent_id)
        if count is None or len(parts) < count:
            return None
        del self._parts[part.parent_id], self._part_counts[part.parent_id]
        return merge_part_results(part.parent_id, [parts[i] for i in sorted(parts)])

    def resend_lost_jobs(self) -> list[str]:
        """Send again the outstanding jobs the farm's Redis does not know (twice in a row,
        lost_job_check_s apart: a job between a worker's pop and its claim is not lost)."""
        resent = []
        try:
            for entry in list(self._outstanding.values()):
                job = entry.job
                if self._ledger.known(job.job_id, task_id=job.job_id, queue=self.queue):
                    entry.unknown_since = None
                    continue
                if entry.unknown_since is None:
                    entry.unknown_since = time.monotonic()
                    continue
                logger.warning("job %s (episode %d, camera %s) is not known to the farm any "
                               "more (its Redis lost its data?): sending it again",
                               job.job_id, job.recording, job.camera)
                entry.handle = self._send(job)
                entry.unknown_since = None
                self.resent += 1
                resent.append(job.job_id)
        except BROKER_ERRORS as exc:
            self._broker_down(exc)
        return resent

    def wait(self, *, timeout_s: float | None = None,
             on_result: Callable[[EncodeResult], None] | None = None) -> list[EncodeResult]:
        """Wait until every submitted job has a result; returns all results so far.

        Raises:
            FarmTimeout: timeout_s passed with jobs still outstanding.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        started = last_note = time.monotonic()
        while self._outstanding or self._unsent:
            if self.health_check is not None:
                self.health_check()
            new = self.poll()
            for result in new:
                if on_result is not None:
                    on_result(result)
            if not (self._outstanding or self._unsent):
                break
            if time.monotonic() - last_note >= self.wait_note_s:
                last_note = time.monotonic()
                self._note_waiting(time.monotonic() - started)
            if time.monotonic() - self._last_lost_check >= self.lost_job_check_s:
                self._last_lost_check = time.monotonic()
                self.resend_lost_jobs()
            if deadline is not None and time.monotonic() > deadline:
                raise FarmTimeout(f"{len(self._outstanding) + len(self._unsent)} encode jobs "
                                  f"still outstanding after {timeout_s:g}s; are workers "
                                  "running?")
            if not new:
                time.sleep(POLL_INTERVAL_S)
        return list(self.results)

    def _note_waiting(self, waited_s: float) -> None:
        """Say what the wait is for: a log line, for output that is not a terminal."""
        missing = [f"recording {e.job.recording} {e.job.camera}" + (
                       f" part {e.job.part.index + 1}/{e.job.part.count or '?'}" if e.job.part
                       else "")
                   for e in list(self._outstanding.values())[:WAIT_NOTE_JOBS]]
        missing += [f"recording {j.recording} {j.camera} (not sent yet)"
                    for j in list(self._unsent)[:WAIT_NOTE_JOBS - len(missing)]]
        more = self.outstanding - len(missing)
        try:
            queued = f"{self.queue_depth()} jobs queued at the farm"
        except BROKER_ERRORS:
            queued = "the farm's Redis does not answer"
        logger.info("waiting %.0fs for the farm at %s: %d of %d videos done; %s; waiting for "
                    "%s%s", waited_s, redact(self.broker), len(self.results), self.submitted,
                    queued, ", ".join(missing), f" and {more} more" if more > 0 else "")

    @property
    def outstanding(self) -> int:
        return len(self._outstanding) + len(self._unsent)

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
            in_flight=self.outstanding,
            submission_wait_s=self.submission_wait_s,
        )

    def close(self) -> None:
        self._announcer.close()
        # Jobs not waited for (--no-wait) stay queued at the farm. Their handles stop
        # listening for results now, while Redis answers; later, their __del__ would.
        for entry in self._outstanding.values():
            with contextlib.suppress(Exception):
                self.app.backend.remove_pending_result(entry.handle)
            entry.handle.backend = None
        self._redis.close()
        self.app.close()

    def __enter__(self) -> EncodingFarmClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _result_of(entry: _Outstanding) -> EncodeResult:
    """The EncodeResult of a finished task: returned (SUCCESS) or rebuilt from the
    JobFailed it raised (FAILURE); a failed one, with its reason, for anything else it
    ended with."""
    handle = entry.handle
    state, value = handle.state, handle.result
    try:
        result = task_outcome(state, value)
    except ValidationError as exc:
        return EncodeResult.failed(entry.job, f"the worker sent an invalid result: {exc}",
                                   reason=FailureReason.OTHER)
    if result is not None:
        return result
    if state == "REVOKED":  # cancelled from Flower, say
        reason = FailureReason.REVOKED
    elif isinstance(value, TimeLimitExceeded):  # killed past its hard time limit
        reason = FailureReason.TIME_LIMIT
    elif isinstance(value, WorkerLostError):
        reason = FailureReason.WORKER_DEATHS
    else:  # an exception of an older worker, or one outside the task
        reason = FailureReason.EXCEPTION
    return EncodeResult.failed(entry.job, f"task {state}: {value!r}", reason=reason)


def _counts_the_video(job: EncodeJob) -> bool:
    """Whether sending job makes its video one of those submitted: a whole job, a split
    video's first part, or the part of a windowed video that its save sends (the one
    with the count; windows sent before may still be discarded)."""
    part = job.part
    if part is None:
        return True
    if part.window_frames is not None:
        return part.count is not None
    return part.index == 0

