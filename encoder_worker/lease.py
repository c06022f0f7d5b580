"""A short job lease in Redis (SET NX PX, renewed by a heartbeat thread).

Redis redelivers an unacked task only after the visibility timeout (hours, so that long
encodes are not started twice). The lease is what keeps two copies of one job from
encoding at once, and what lets the farm notice within a minute that a worker died.
"""

from __future__ import annotations

import logging
import threading
import uuid
from types import TracebackType

import redis

logger = logging.getLogger(__name__)

LEASE_PREFIX = "farm:lease:"

# Renew or release only while the lease is still ours.
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then " \
         "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then " \
           "return redis.call('del', KEYS[1]) else return 0 end"


class LeaseLost(Exception):
    """The lease lapsed while the job ran: another copy may own the job now."""


class JobLease:
    """Hold the lease for one job while its encode runs."""

    def __init__(self, client: redis.Redis, job_id: str, *, ttl_s: float) -> None:
        self.client = client
        self.key = LEASE_PREFIX + job_id
        self.ttl_ms = int(ttl_s * 1000)
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self.lost = False

    def acquire(self) -> bool:
        """Take the lease; False when another copy of the job holds it."""
        if not self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return False
        self._heartbeat = threading.Thread(target=self._renew, name=f"lease-{self.key}",
                                           daemon=True)
        self._heartbeat.start()
        return True

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                if not self.client.eval(_RENEW, 1, self.key, self.token, self.ttl_ms):
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
            self.client.eval(_RELEASE, 1, self.key, self.token)
        except redis.RedisError as exc:
            logger.warning("could not release lease %s (it lapses by itself): %s", self.key, exc)

    def __enter__(self) -> JobLease:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def lease_held(client: redis.Redis, job_id: str) -> bool:
    return bool(client.exists(LEASE_PREFIX + job_id))
