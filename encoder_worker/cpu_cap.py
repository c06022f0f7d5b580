"""A cap on the CPU time of a host's farm workers while a recorder there captures: one
cgroup (v2's cpu.max, or v1's CFS quota) that the workers sharing the host join.

Keeping a whole CPU free for a capture (affinity) leaves a half of it idle with 4
cameras; letting encodes run in SCHED_IDLE on every CPU made the record loop wake late,
as on a VM both CPUs were then busy all the time. A cap on every CPU at once uses the
kept CPU's idle time and still leaves the host idle time (benchmarks/README.md, "A cap
on the workers' CPU time").
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

GROUP = "robot-encoding-farm-workers"
# A short period: a capped encode runs on every CPU at most this long before it waits
# (CFS's default 100 ms would let it take both CPUs for tens of ms at a time).
PERIOD_US = 10_000
# The kernel's smallest quota.
MIN_QUOTA_US = 1_000
MOUNTS = Path("/proc/self/mounts")


class CpuCapUnavailable(Exception):
    """No cgroup here whose CPU quota this process may set; the message says why."""


@dataclass
class CpuCap:
    """The host's group of farm workers (folder), in cgroup v1 or v2."""

    folder: Path
    version: int

    @classmethod
    def join(cls, name: str = GROUP, *, mounts: Path = MOUNTS) -> CpuCap:
        """Move this process, its threads and the children it starts later into the
        group (made if missing, uncapped until limit()).

        Raises:
            CpuCapUnavailable: no cgroup with a CPU controller, or not ours to change
            (it needs root, or a cgroup delegated to this user).
        """
        cap = cls._find(name, mounts)
        try:
            if cap.version == 2:
                controls = cap.folder.parent / "cgroup.subtree_control"
                if "cpu" not in controls.read_text().split():
                    controls.write_text("+cpu")
            cap.folder.mkdir(exist_ok=True)
            if cap.version == 1:
                (cap.folder / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            cap._make_idle()
            (cap.folder / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as exc:
            raise CpuCapUnavailable(
                f"cannot join the cgroup {cap.folder} ({exc.strerror or exc}): run the "
                "worker as root, or in a cgroup delegated to its user") from exc
        return cap

    def _make_idle(self) -> None:
        """The group as a whole in SCHED_IDLE beside the rest of the host: a group is
        one entity to the scheduler, of normal weight whatever its threads' class, so
        the encodes' own SCHED_IDLE stops counting once they are in it (measured: a
        recorder that needed more than its CPU then lost slots). Linux 5.15 and newer
        have cpu.idle; older ones get the smallest weight."""
        idle = self.folder / "cpu.idle"
        if idle.exists():
            idle.write_text("1")
        elif self.version == 2:
            (self.folder / "cpu.weight").write_text("1")
        else:
            (self.folder / "cpu.shares").write_text("2")

    @classmethod
    def _find(cls, name: str, mounts: Path) -> CpuCap:
        try:
            lines = mounts.read_text().splitlines()
        except OSError as exc:
            raise CpuCapUnavailable(f"cannot read {mounts}: {exc}") from exc
        v1 = None
        for line in lines:
            fields = line.split()
            if len(fields) < 4:
                continue
            mount, kind, options = Path(fields[1]), fields[2], fields[3].split(",")
            if kind == "cgroup2":
                controllers = mount / "cgroup.controllers"
                if controllers.exists() and "cpu" in controllers.read_text().split():
                    return cls(mount / name, 2)
            elif kind == "cgroup" and "cpu" in options and v1 is None:
                v1 = cls(mount / name, 1)
        if v1 is None:
            raise CpuCapUnavailable("no cgroup with a CPU controller is mounted here")
        return v1

    @classmethod
    def remove(cls, name: str, *, mounts: Path = MOUNTS) -> None:
        """Remove the group, once no process is in it (an OSError says why not)."""
        folder = cls._find(name, mounts).folder
        if folder.exists():
            folder.rmdir()

    def limit(self, cpus: float | None) -> None:
        """At most cpus CPUs' time for the whole group, on any of its CPUs; None: no cap.

        Raises:
            OSError: the group is gone, or no longer ours to change.
        """
        quota = None if cpus is None else max(MIN_QUOTA_US, round(cpus * PERIOD_US))
        if self.version == 2:
            (self.folder / "cpu.max").write_text(f"{quota or 'max'} {PERIOD_US}")
        else:
            (self.folder / "cpu.cfs_quota_us").write_text(str(quota or -1))

    def cap_cpus(self) -> float | None:
        """The cap now, in CPUs; None: no cap."""
        if self.version == 2:
            quota, period = (self.folder / "cpu.max").read_text().split()
        else:
            quota = (self.folder / "cpu.cfs_quota_us").read_text().strip()
            period = (self.folder / "cpu.cfs_period_us").read_text().strip()
        if quota in ("max", "-1"):
            return None
        return int(quota) / int(period)

    def throttled(self) -> int:
        """How many periods the group has been held back by its cap."""
        for line in (self.folder / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "nr_throttled":
                return int(value)
        return 0


# This process's group: joined by `encoder-worker run --share-with-capture` before its
# pool starts (the pool's children inherit the group and this value).
_JOINED: CpuCap | None = None


def join_for_worker(name: str = GROUP) -> CpuCap | None:
    """Join the host's group of farm workers; None, said once, where this cannot be."""
    global _JOINED
    try:
        _JOINED = CpuCap.join(name)
        _JOINED.limit(None)  # a group left capped by a worker that died mid-capture
    except (CpuCapUnavailable, OSError) as exc:
        _JOINED = None
        logger.warning("cannot cap the workers' CPU time beside a capture (%s): keeping "
                       "off the CPUs the capture keeps instead", exc)
        return None
    logger.info("CPU time beside a capture: capped through the cgroup %s", _JOINED.folder)
    return _JOINED


def joined() -> CpuCap | None:
    return _JOINED
