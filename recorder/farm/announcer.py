"""What a recorder tells its farm about itself, from a thread of its own: while it captures
an episode (workers beside it with `--yield-to-capture` pause meanwhile, those with
`--share-with-capture` leave it the CPUs it keeps), and its backlog
of episodes recorded and not encoded yet (`encoder-worker status` shows it per host)."""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time

from redis.exceptions import RedisError

from encoder_worker.ledger import JobLedger

logger = logging.getLogger(__name__)

# While recording, the recorder says so this often; the capture word lapses after 3 times
# that (a recorder that died stops pausing the workers beside it within seconds), its
# backlog after a minute.
ANNOUNCE_S = 1.0
RECORDER_WORD_TTL_S = 60.0
# Workers cap their CPU time beside a capture (cpu_cap.py) only once the recorder was
# measured, to leave it --capture-cpus or what it used with this to spare, whichever is
# more: with 4 cameras (about 0.5 CPU) a cap leaving 0.7 gave no late slot; 2 cameras at
# 1080p use 1.2 CPUs, and a cap leaving 0.7 beside them made slots late where keeping off
# a CPU made none (benchmarks/README.md, "A cap on the workers' CPU time").
CPU_MARGIN = 0.2
# The CPU time named moves in steps of this, not with every sample's noise.
CPU_STEP = 0.05
# Weight of the last second's CPU use in the recorder's running estimate.
CPU_SMOOTHING = 0.3


class RecorderAnnouncer:
    """The record loop and the commit thread only set values: they never wait on Redis.
    A Redis that does not answer pauses nothing (said once per outage)."""

    def __init__(self, ledger: JobLedger, *, host: str | None = None,
                 capture_cpus: float = 0.7) -> None:
        """capture_cpus: how much CPU a capture keeps for itself at least, in CPUs:
        workers beside it with --share-with-capture cap their CPU time to the rest
        (cpu_cap.py) once the recorder was measured (cpu_time), or else encode on the CPUs
        left after the first capture_cpus (rounded up)."""
        self.ledger = ledger
        self.host = host or socket.gethostname()
        self.cpus = sorted(os.sched_getaffinity(0))[:math.ceil(capture_cpus)]
        self.capture_cpus = capture_cpus
        self.cpu_used: float | None = None  # this process's CPUs in use while capturing
        self._sampled: tuple[float, float] | None = None  # (wall, CPU) at the last sample
        self._capturing = False
        self._backlog = 0
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    def capturing(self, capturing: bool) -> None:
        if capturing != self._capturing:
            self._capturing = capturing
            self._changed()

    def backlog(self, episodes: int) -> None:
        if episodes != self._backlog:
            self._backlog = episodes
            self._changed()

    def _changed(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="recorder-announcer",
                                            daemon=True)
            self._thread.start()
        self._wake.set()

    def close(self) -> None:
        if self._thread is None:
            return
        self._stop = True
        self._wake.set()
        self._thread.join()

    def cpu_time(self) -> float | None:
        """The CPU time the capture keeps, for workers that cap theirs: --capture-cpus, or
        what this process was measured to use while capturing (its robot, cameras,
        writers) with CPU_MARGIN to spare where that is more, in steps of CPU_STEP. None
        until measured (the workers keep off its CPUs), and with --capture-cpus 0 (the
        encodes run on every CPU, uncapped). Workers do not cap where this rounds up to
        every CPU of the host (2 cameras at 1080p on 2 CPUs): they keep off its CPUs."""
        if self.cpu_used is None or not self.capture_cpus:  # 0: no cap, every CPU
            return None
        needed = round(math.ceil(round((self.cpu_used + CPU_MARGIN) / CPU_STEP, 6))
                       * CPU_STEP, 2)
        return max(self.capture_cpus, needed)

    def _sample_cpu(self) -> None:
        """Fold the CPU this process used since the last sample (while capturing) into a
        running estimate; the first sample of a capture only starts the clock."""
        now = (time.monotonic(), time.process_time())
        if self._sampled is not None and now[0] - self._sampled[0] >= ANNOUNCE_S / 2:
            rate = (now[1] - self._sampled[1]) / (now[0] - self._sampled[0])
            self.cpu_used = rate if self.cpu_used is None else \
                CPU_SMOOTHING * rate + (1 - CPU_SMOOTHING) * self.cpu_used
        if self._sampled is None or now[0] - self._sampled[0] >= ANNOUNCE_S / 2:
            self._sampled = now

    def _run(self) -> None:
        announced = failing = False
        while True:
            self._wake.clear()
            stopping = self._stop
            try:
                if self._capturing and not stopping:
                    self._sample_cpu()
                    self.ledger.announce_capture(self.host, ttl_s=3 * ANNOUNCE_S,
                                                 cpus=self.cpus, cpu_time=self.cpu_time())
                    announced = True
                elif announced:
                    self.ledger.end_capture(self.host)
                    announced = False
                if not self._capturing:
                    self._sampled = None  # the commit between episodes is not the capture's
                if stopping:
                    self.ledger.forget_recorder(self.host)
                else:
                    self.ledger.report_recorder(
                        self.host, backlog=self._backlog, capturing=self._capturing,
                        now=time.time(), ttl_s=RECORDER_WORD_TTL_S)
                failing = False
            except (RedisError, OSError) as exc:  # the words lapse by themselves
                if not failing:
                    logger.warning("cannot tell the farm what this recorder does (%s): "
                                   "workers on this host encode beside its captures, and "
                                   "`encoder-worker status` misses its backlog", exc)
                failing = True
            if stopping:
                return
            self._wake.wait(ANNOUNCE_S)
