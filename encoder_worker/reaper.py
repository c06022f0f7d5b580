"""The lease reaper: sends again the jobs of workers that died, from the ledger's keys.

Redis redelivers an unacknowledged task only after the visibility timeout (hours); a
lapsed lease on a claimed job, or a countdown long overdue, says within a lease period
that its worker died.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from encoder_worker.ledger import JobLedger

logger = logging.getLogger(__name__)


class LeaseReaper:
    """Sends again the jobs of workers that died: a lapsed lease on a claimed job, or a
    countdown long overdue. Runs in every worker's main process; the ledger's atomic
    removals decide which reaper sends a job.

    Args:
        resend: sends (task_id, payload) to the queue again.
        is_done: whether the task with this id has its final result already.
        on_takeover: told of each job sent again: "lease_lapsed" or "countdown_overdue".
    """

    def __init__(self, client: Any, *, lease_ttl_s: float,
                 resend: Callable[[str, Any], None], is_done: Callable[[str], bool],
                 on_takeover: Callable[[str], None] | None = None) -> None:
        self.ledger = JobLedger(client)
        self.lease_ttl_s = lease_ttl_s
        self.resend = resend
        self.is_done = is_done
        self.on_takeover = on_takeover
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
                self._taken_over("lease_lapsed")
                sent.append(job_id)
        for job_id, entry in self.ledger.take_overdue_waiting(now=time.time()):
            if not self.is_done(entry["task_id"]):
                logger.warning("job %s waited in a countdown on a worker that went away; "
                               "sent again", job_id)
                self.resend(entry["task_id"], entry["payload"])
                self._taken_over("countdown_overdue")
                sent.append(job_id)
        return sent

    def _taken_over(self, kind: str) -> None:
        if self.on_takeover is not None:
            try:
                self.on_takeover(kind)
            except Exception:  # counting must never stop the reaper
                logger.exception("takeover callback failed")
