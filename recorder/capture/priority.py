"""The recorder's own priority on its host: --capture-nice puts the capture ahead of the
host's other programs (the farm's local workers step back by themselves)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)


class PriorityRefused(Exception):
    """This process may not raise its priority (no root, CAP_SYS_NICE or RLIMIT_NICE)."""


def _autogroup_nice(autogroup: Path) -> int | None:
    """The autogroup's nice; None where the kernel has none (or a container hides it)."""
    try:
        return int(autogroup.read_text().split()[-1])  # "/autogroup-85 nice 0"
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def raised_priority(nice: int, *, flag: str = "--capture-nice") -> Iterator[None]:
    """Run the block at nice (negative: ahead of the host's other programs), for the
    calling thread, the threads and processes it starts, and its autogroup; both are put
    back after it.

    With autogroup scheduling a process's nice counts only within its session's group:
    measured beside `recorder benchmark --background-load 2` (4 cameras), nice -10 alone
    gave 3 and 16 late slots, nice -10 with the autogroup's -10 gave 0 and 0.

    Raises:
        PriorityRefused: the process may not go below nice 0; nothing was changed.
    """
    if nice == 0:
        yield
        return
    before = os.getpriority(os.PRIO_PROCESS, 0)
    autogroup = Path("/proc/self/autogroup")
    group_before = _autogroup_nice(autogroup)
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
        if group_before is not None:
            autogroup.write_text(str(nice))
    except PermissionError:
        os.setpriority(os.PRIO_PROCESS, 0, before)  # going back up is always allowed
        raise PriorityRefused(
            f"{flag} {nice}: this user may not raise a process's priority. Run as root, "
            f"give the Python binary CAP_SYS_NICE (sudo setcap cap_sys_nice+ep "
            f"$(readlink -f $(which python3))), or allow it in /etc/security/limits.conf "
            f"(`{os.environ.get('USER', 'USER')} - nice {nice}`, then log in again); or "
            f"leave {flag} at 0") from None
    except OSError as exc:  # a read-only /proc (the autogroup): the process's nice holds
        logger.warning("could not raise the autogroup's priority: %s", exc)
        group_before = None
    logger.info("running at nice %d%s", nice,
                ", autogroup too" if group_before is not None else "")
    try:
        yield
    finally:
        # The autogroup is the whole terminal session's: the shell gets its own back.
        if group_before is not None:
            with contextlib.suppress(OSError):
                autogroup.write_text(str(group_before))
        os.setpriority(os.PRIO_PROCESS, 0, before)
