"""Keeping encodes out of the way of a record loop on the same host."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from encoder_worker import cpu_cap

if TYPE_CHECKING:
    from encoder_worker.jobs import EncodeJob
    from encoder_worker.ledger import CaptureWord, JobLedger

logger = logging.getLogger(__name__)

# The CPUs this worker process was started on: a job that ends while a capture keeps
# some of them must not leave the next job (or the next CaptureYield) on fewer.
WORKER_CPUS = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
    else frozenset()


def lower_priority(nice: int) -> None:
    """Add nice to this process, and to its autogroup where the kernel has one.

    With autogroup scheduling (on by default in most distributions' kernels) a process's
    nice counts only within its session's group; a worker in its own session would
    otherwise compete with the record loop as an equal (measured: late frames).
    """
    os.nice(nice)
    autogroup = Path("/proc/self/autogroup")
    if autogroup.exists():
        try:
            autogroup.write_text(str(nice))
        except OSError as exc:
            logger.warning("could not lower the autogroup's priority: %s", exc)


def demote_realtime_threads() -> int:
    """Put this process's real-time threads back to the calling thread's scheduling
    class (normal, or SCHED_IDLE for an --idle-priority encode); returns how many.

    SVT-AV1 gives its threads SCHED_FIFO priority 99 when it may (as root): on a robot
    host they would then preempt the record loop, whatever the worker's nice value.
    """
    if not hasattr(os, "sched_getscheduler"):
        return 0
    own = os.sched_getscheduler(0)
    target = os.SCHED_OTHER if own in (os.SCHED_FIFO, os.SCHED_RR) else own
    demoted = 0
    for task in Path("/proc/self/task").iterdir():
        tid = int(task.name)
        try:
            if os.sched_getscheduler(tid) in (os.SCHED_FIFO, os.SCHED_RR):
                os.sched_setscheduler(tid, target, os.sched_param(0))
                demoted += 1
        except (ProcessLookupError, PermissionError):
            continue  # the thread ended, or it is not ours to change
    if demoted:
        logger.debug("moved %d real-time encoder threads to normal scheduling", demoted)
    return demoted


@contextlib.contextmanager
def idle_scheduling(enabled: bool) -> Iterator[None]:
    """Run the block in Linux's SCHED_IDLE class: CPU only when nothing else wants it.

    The policy is the calling thread's: threads it starts (the codec's) inherit it, while
    threads started before (the lease heartbeat) keep theirs, so a busy host delays an
    encode but never its lease. A nice value still lets a normal-priority encode take a
    share of every core; SCHED_IDLE takes none while the record loop needs it.
    """
    if not enabled:
        yield
        return
    if not hasattr(os, "SCHED_IDLE"):
        logger.warning("SCHED_IDLE is Linux's; encoding at normal priority here")
        yield
        return
    before = os.sched_getscheduler(0), os.sched_getparam(0)
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    try:
        yield
    finally:
        try:
            os.sched_setscheduler(0, before[0], before[1])
        except PermissionError:
            # Leaving SCHED_IDLE needs RLIMIT_NICE or root; this process's later encodes,
            # and lease heartbeats, stay idle. A lease lost that way is taken back safely.
            logger.warning("this worker process could not leave SCHED_IDLE after an encode "
                           "(raise RLIMIT_NICE, or run the worker with CAP_SYS_NICE)")


# While paused, how often the worker looks whether the capture ended.
CAPTURE_POLL_S = 0.2
# A job pauses at most this long in all, when it has no time limit to stay within.
CAPTURE_YIELD_MAX_S = 600.0


class CaptureYield:
    """An encode's pause point beside a recorder on this host: returns at once, unless a
    recorder on this host is capturing an episode. Then, with share (--share-with-capture),
    the encode goes on: in a worker that joined cpu_cap's group, on every CPU with the
    group's CPU time capped to what the capture leaves (lifted once it ends); otherwise
    its threads move to the CPUs the capture leaves (and back to all CPUs once it ends).
    Without share (--yield-to-capture) it waits until the capture stops.

    Even SCHED_IDLE encoders cost a record loop slots on a small host (measured: two idle
    spinners gave 17 and 5 late slots of 300 where none ran gave 0 and 3): the cores
    share caches and, in a VM, the hypervisor's time. Pausing gives the loop the whole
    host; encodes catch up between episodes and after the last one. Sharing keeps the
    capture's CPUs free of encodes and uses the others (benchmarks/README.md measures
    both). A pause is bounded by budget_s in all per job, so that a session of
    back-to-back episodes cannot run a job into its time limit; a Redis that does not
    answer never pauses anything.
    """

    def __init__(self, ledger: JobLedger, *, budget_s: float, host: str | None = None,
                 on_pause: Callable[[bool], None] | None = None, share: bool = False) -> None:
        self.ledger = ledger
        self.host = host or socket.gethostname()
        self.budget_s = budget_s
        self.on_pause = on_pause
        self.share = share
        self.paused_s = 0.0
        self._warned = self._cap_warned = False
        self._all_cpus = set(WORKER_CPUS)
        self._cpus = os.sched_getaffinity(0)  # the encode's threads run on these now
        self._shared: dict[str, None] = {}  # how the encode shared the host, in order

    def __call__(self) -> None:
        word = self._word()
        kept = self._kept_cpus(word)
        if self.share:
            if self._capped(word):  # on every CPU, in the CPU time the capture leaves
                return
            free = self._all_cpus - (kept or set())
            if free:  # the capture leaves these (all of them: no capture)
                self._run_on(free)
                return
        if kept is None or self.paused_s >= self.budget_s:
            return
        self._pause()

    def fitted(self, job: EncodeJob) -> EncodeJob:
        """job, with SVT-AV1's fewest threads (lp=1) when it starts beside a capture that
        it shares the host with: then it runs on the CPUs the capture leaves, with the other
        local workers, and SVT's thread pool for every CPU only costs it switches.
        Measured (benchmarks/svt_threads.py): two encodes of 300 frames on one CPU took
        7-12 % less CPU each with lp=1 (benchmarks/README.md, the svt-threads table)."""
        options = job.options
        if not self.share or options.codec != "libsvtav1" or options.svt_level() is not None:
            return job
        kept = self._kept_cpus(self._word())
        if not kept or kept == self._all_cpus:  # no capture, or one that keeps every CPU
            return job
        self._shared["svtav1-params lp=1"] = None
        return job.model_copy(update={"options": options.with_svt_level(1)})

    def summary(self) -> str:
        """How the encode shared the host with a capture ("" if it never met one)."""
        return ", ".join(self._shared)

    def release(self) -> None:
        """The job is over: this process's threads back on every CPU the worker has."""
        self._run_on(self._all_cpus)

    def _pause(self) -> None:
        started = time.monotonic()
        logger.info("a recorder on %s is capturing: encode paused until its episode ends",
                    self.host)
        self._shared["paused"] = None
        if self.on_pause is not None:
            self.on_pause(True)
        try:
            while self._word() is not None:
                waited = self.paused_s + time.monotonic() - started
                if waited >= self.budget_s:
                    logger.warning("paused %.0fs for the recorder's capture, this job's "
                                   "budget: encoding beside it now", waited)
                    break
                time.sleep(CAPTURE_POLL_S)
        finally:
            self.paused_s += time.monotonic() - started
            if self.on_pause is not None:
                self.on_pause(False)

    def _run_on(self, cpus: set[int]) -> None:
        """Every thread of this process (the codec's, the reader's, the verifier's) on
        cpus: Linux keeps affinity per thread."""
        if cpus != self._all_cpus:
            self._shared["on CPUs " + ",".join(map(str, sorted(cpus)))] = None
        if cpus == self._cpus:
            return
        for task in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError):  # a thread that just ended
                os.sched_setaffinity(int(task), cpus)
        logger.info("a recorder on %s is %s: encoding on CPUs %s", self.host,
                    "capturing" if cpus != self._all_cpus else "done capturing",
                    ",".join(map(str, sorted(cpus))))
        self._cpus = cpus

    def _capped(self, word: CaptureWord | None) -> bool:
        """With a cap on the workers' CPU time (this process joined cpu_cap's group) and a
        capture that names the CPU time it keeps: the group capped to the rest, on every
        CPU; True. Otherwise the cap lifted (the CPUs decide)."""
        cap = cpu_cap.joined()
        if cap is None:
            return False
        left = None
        # Only where keeping off CPUs would leave some too: a capture that keeps all of a
        # 1-CPU host still gets a pause (a cap there was not measured).
        if word is not None and word.cpu_time and \
                math.ceil(word.cpu_time) < len(self._all_cpus):
            # Rounded as the word is (0.05 steps): the same word finds the same cap.
            left = round(len(self._all_cpus) - word.cpu_time, 2)
        try:
            if cap.cap_cpus() != left:
                cap.limit(left)
                logger.info("a recorder on %s is %s: the workers' CPU time %s", self.host,
                            "capturing" if word is not None else "done capturing",
                            f"capped at {left:.2f} CPUs" if left else "uncapped")
        except OSError as exc:
            if not self._cap_warned:
                logger.warning("cannot set the workers' CPU cap in %s (%s): keeping off "
                               "the CPUs the capture keeps instead", cap.folder, exc)
                self._cap_warned = True
            return False
        if left is None:
            return False
        self._shared[f"capped at {left:.2f} CPUs"] = None
        self._run_on(self._all_cpus)
        return True

    def _word(self) -> CaptureWord | None:
        """What a capture on this host keeps; None: no capture (or no answer)."""
        try:
            return self.ledger.capture_word(self.host)
        except RedisError as exc:
            if not self._warned:
                logger.warning("cannot tell whether a recorder captures here (%s): "
                               "encoding without pauses", exc)
                self._warned = True
            return None

    def _kept_cpus(self, word: CaptureWord | None) -> set[int] | None:
        """Which of this worker's CPUs a capture on this host keeps; None: no capture."""
        if word is None:
            return None
        if isinstance(word.cpus, str):  # ALL_CPUS
            return set(self._all_cpus)
        return set(word.cpus) & self._all_cpus
