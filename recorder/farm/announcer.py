"""Telling the farm's workers on this host while its recorder captures an episode."""

from __future__ import annotations

import logging
import socket
import threading

from redis.exceptions import RedisError

from encoder_worker.ledger import JobLedger

logger = logging.getLogger(__name__)

# While capturing, the recorder says so this often; the word lapses after 3 times that
# (a recorder that died stops pausing the workers beside it within seconds).
CAPTURE_ANNOUNCE_S = 1.0


class CaptureAnnouncer:
    """Tells the farm, from a thread of its own, while this host's recorder captures an
    episode, so that workers beside it (`--yield-to-capture`) pause their encodes.

    The record loop only flips a flag: it never waits on Redis. A Redis that does not
    answer pauses nothing (said once per outage).
    """

    def __init__(self, ledger: JobLedger, *, host: str | None = None) -> None:
        self.ledger = ledger
        self.host = host or socket.gethostname()
        self._capturing = False
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    def set(self, capturing: bool) -> None:
        if capturing == self._capturing:
            return
        self._capturing = capturing
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="capture-announcer",
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
                    self.ledger.announce_capture(self.host, ttl_s=3 * CAPTURE_ANNOUNCE_S)
                    announced = True
                elif announced:
                    self.ledger.end_capture(self.host)
                    announced = False
                failing = False
            except (RedisError, OSError) as exc:  # the word lapses by itself
                if not failing:
                    logger.warning("cannot tell the farm's workers on this host that an "
                                   "episode is being captured (%s): they encode beside it",
                                   exc)
                failing = True
            if stopping:
                return
            self._wake.wait(CAPTURE_ANNOUNCE_S)
