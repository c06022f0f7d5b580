"""Keeping encodes out of the way of a record loop on the same host."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)


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
