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


class RecorderAnnouncer:
    """The record loop and the commit thread only set values: they never wait on Redis.
    A Redis that does not answer pauses nothing (said once per outage)."""

    def __init__(self, ledger: JobLedger, *, host: str | None = None,
                 capture_cpus: float = 0.7) -> None:
        """capture_cpus: how much CPU a capture keeps for itself, in CPUs: workers beside
        it with --share-with-capture cap their CPU time to the rest (cpu_cap.py), or where
        they cannot, encode on the CPUs left after the first capture_cpus (rounded up)."""
        self.ledger = ledger
        self.host = host or socket.gethostname()
        self.cpus = sorted(os.sched_getaffinity(0))[:math.ceil(capture_cpus)]
        self.cpu_time = capture_cpus
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

    def _run(self) -> None:
        announced = failing = False
        while True:
            self._wake.clear()
            stopping = self._stop
            try:
                if self._capturing and not stopping:
                    self.ledger.announce_capture(self.host, ttl_s=3 * ANNOUNCE_S,
                                                 cpus=self.cpus, cpu_time=self.cpu_time)
                    announced = True
                elif announced:
                    self.ledger.end_capture(self.host)
                    announced = False
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
