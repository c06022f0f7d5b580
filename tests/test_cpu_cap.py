"""The workers' CPU-time cap beside a capture (encoder_worker/cpu_cap.py): the cgroup
files it writes, a real cgroup's quota holding a process back, and CaptureYield setting
and lifting the cap as a recorder's capture word comes and goes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from conftest import REPO, TEST_CPU_CAP_GROUP, require

from encoder_worker import cpu_cap
from encoder_worker.cpu_cap import PERIOD_US, CpuCap, CpuCapUnavailable
from encoder_worker.priority import CaptureYield

HOST = socket.gethostname()


def skip_without_cpu_cgroup() -> None:
    """Not every host mounts a cgroup with a CPU controller (a container may not)."""
    try:
        CpuCap._find(TEST_CPU_CAP_GROUP, cpu_cap.MOUNTS)
    except CpuCapUnavailable as exc:
        pytest.skip(str(exc))


def fake_mounts(tmp_path: Path, line: str) -> Path:
    mounts = tmp_path / "mounts"
    mounts.write_text(f"proc /proc proc rw 0 0\n{line}\n")
    return mounts


def test_cgroup_v2_group_is_made_joined_and_capped(tmp_path):
    root = tmp_path / "cgroup2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("memory pids\n")
    mounts = fake_mounts(tmp_path, f"cgroup2 {root} cgroup2 rw,nosuid 0 0")
    cap = CpuCap.join("farm", mounts=mounts)
    assert (cap.folder, cap.version) == (root / "farm", 2)
    assert (root / "cgroup.subtree_control").read_text() == "+cpu"
    assert (root / "farm" / "cgroup.procs").read_text() == str(os.getpid())
    assert (root / "farm" / "cpu.weight").read_text() == "1", "no cpu.idle: least weight"
    cap.limit(1.3)
    assert (root / "farm" / "cpu.max").read_text() == f"13000 {PERIOD_US}"
    assert cap.cap_cpus() == 1.3
    cap.limit(None)
    assert (root / "farm" / "cpu.max").read_text() == f"max {PERIOD_US}"
    assert cap.cap_cpus() is None
    cap.limit(0.01)  # below the kernel's smallest quota: the smallest
    assert cap.cap_cpus() == 0.1


def test_cgroup_v1_cpu_hierarchy_is_used_when_v2_has_no_cpu_controller(tmp_path):
    unified, cpu = tmp_path / "unified", tmp_path / "cpu,cpuacct"
    unified.mkdir()
    cpu.mkdir()
    (unified / "cgroup.controllers").write_text("\n")  # the controllers are v1's
    mounts = fake_mounts(tmp_path, f"cgroup2 {unified} cgroup2 rw 0 0\n"
                                   f"cgroup {cpu} cgroup rw,relatime,cpu,cpuacct 0 0")
    cap = CpuCap.join("farm", mounts=mounts)
    assert (cap.folder, cap.version) == (cpu / "farm", 1)
    assert (cpu / "farm" / "cpu.cfs_period_us").read_text() == str(PERIOD_US)
    assert (cpu / "farm" / "cpu.shares").read_text() == "2", "no cpu.idle: least weight"
    (cpu / "farm" / "cpu.idle").write_text("0")  # a kernel that has it (5.15 and newer)
    CpuCap.join("farm", mounts=mounts)
    assert (cpu / "farm" / "cpu.idle").read_text() == "1"
    cap.limit(2.5)
    assert (cpu / "farm" / "cpu.cfs_quota_us").read_text() == "25000"
    cap.limit(None)
    assert (cpu / "farm" / "cpu.cfs_quota_us").read_text() == "-1"


def test_no_cgroup_or_one_not_ours_says_why(tmp_path):
    with pytest.raises(CpuCapUnavailable, match="no cgroup with a CPU controller"):
        CpuCap.join("farm", mounts=fake_mounts(tmp_path, "tmpfs /tmp tmpfs rw 0 0"))
    cpu = tmp_path / "cpu"
    (cpu / "farm" / "cgroup.procs").mkdir(parents=True)  # a write there fails
    with pytest.raises(CpuCapUnavailable, match="run the worker as root"):
        CpuCap.join("farm", mounts=fake_mounts(tmp_path, f"cgroup {cpu} cgroup rw,cpu 0 0"))


def test_a_real_cgroups_cap_holds_a_busy_process_back(tmp_path):
    skip_without_cpu_cgroup()
    require(os.geteuid() == 0, "joining a cgroup of the host needs root")
    name = f"{TEST_CPU_CAP_GROUP}-{uuid.uuid4().hex[:8]}"
    spinner = textwrap.dedent(f"""
        import time
        from encoder_worker.cpu_cap import CpuCap
        cap = CpuCap.join({name!r})
        idle = cap.folder / "cpu.idle"
        assert not idle.exists() or idle.read_text().strip() == "1"
        cap.limit(0.2)
        started = time.process_time()
        while time.process_time() - started < 0.3:  # CPU work, capped at 0.2 CPUs
            pass
        print(cap.cap_cpus(), cap.throttled())
    """)
    try:
        done = subprocess.run([sys.executable, "-c", spinner], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stderr
        cap_cpus, throttled = done.stdout.split()
        assert float(cap_cpus) == 0.2
        assert int(throttled) > 0, "the kernel held the process back at its cap"
    finally:
        CpuCap.remove(name)


@pytest.fixture
def fake_joined(tmp_path, monkeypatch) -> CpuCap:
    """This process as a worker that joined a (file-only) v1 group."""
    folder = tmp_path / "group"
    folder.mkdir()
    (folder / "cpu.cfs_period_us").write_text(str(PERIOD_US))
    (folder / "cpu.cfs_quota_us").write_text("-1")
    cap = CpuCap(folder, 1)
    monkeypatch.setattr(cpu_cap, "_JOINED", cap)
    return cap


@pytest.mark.integration
def test_a_joined_worker_is_capped_on_every_cpu_while_a_capture_names_its_cpu_time(
        fake_joined, broker_url):
    from encoder_worker.broker import redis_client
    from encoder_worker.ledger import JobLedger

    all_cpus = os.sched_getaffinity(0)
    kept = [min(all_cpus)]
    ledger = JobLedger(redis_client(broker_url))
    share = CaptureYield(ledger, budget_s=60, share=True)
    try:
        ledger.announce_capture(HOST, ttl_s=30, cpus=kept, cpu_time=0.7)
        share()
        left = len(all_cpus) - 0.7
        assert fake_joined.cap_cpus() == pytest.approx(left)
        assert os.sched_getaffinity(0) == all_cpus, "every CPU, within the cap"
        assert share.summary() == f"capped at {left:.2f} CPUs"
        if len(all_cpus) > 1:
            # A recorder measured to need more names more, in 0.05 steps: a tighter cap,
            # written once for the same word (the file's value is what is compared).
            ledger.announce_capture(HOST, ttl_s=30, cpus=kept, cpu_time=0.85)
            limits: list[float | None] = []
            write = fake_joined.limit

            def counted(cpus: float | None) -> None:
                limits.append(cpus)
                write(cpus)

            fake_joined.limit = counted  # type: ignore[method-assign]
            share()
            share()
            assert limits == [round(len(all_cpus) - 0.85, 2)], "the same word, one write"
            assert (fake_joined.folder / "cpu.cfs_quota_us").read_text() == \
                str(round((len(all_cpus) - 0.85) * PERIOD_US))
        ledger.end_capture(HOST)
        share()
        assert fake_joined.cap_cpus() is None, "lifted once the capture ends"
        # An older recorder names only its CPUs: keep off them, uncapped.
        ledger.announce_capture(HOST, ttl_s=30, cpus=kept)
        share()
        assert fake_joined.cap_cpus() is None
        if len(all_cpus) > 1:
            assert os.sched_getaffinity(0) == all_cpus - set(kept)
        # A capture that keeps all the CPU time: a pause, not a cap of nothing.
        ledger.announce_capture(HOST, ttl_s=1, cpus=sorted(all_cpus), cpu_time=len(all_cpus))
        share()
        assert fake_joined.cap_cpus() is None and share.paused_s > 0
    finally:
        os.sched_setaffinity(0, all_cpus)


def test_a_videos_merged_result_names_each_way_its_parts_shared_the_host():
    from encoder_worker.jobs import EncodeResult, Status, merge_part_results

    def part(index: int, beside: str) -> EncodeResult:
        return EncodeResult(job_id=f"v-part{index}", recording=0, camera="cam0",
                            status=Status.SUCCEEDED, output_storage="file:///x",
                            output_key="v.mp4", frames=60, beside_capture=beside,
                            finished_at=float(index))

    merged = merge_part_results("v", [
        part(0, "svtav1-params lp=1, capped at 1.30 CPUs"),
        part(1, "svtav1-params lp=1, on CPUs 1"), part(2, "")])
    assert merged.beside_capture == "svtav1-params lp=1, capped at 1.30 CPUs, on CPUs 1"
    assert merge_part_results("v", [part(0, "")]).beside_capture == ""


def test_a_group_name_that_would_leave_the_cgroup_folder_is_refused():
    from pydantic import ValidationError

    from encoder_worker.settings import WorkerSettings

    for name in ("..", ".", "a/b", ""):
        with pytest.raises(ValidationError, match="cpu_cap_group"):
            WorkerSettings(cpu_cap_group=name)
    assert WorkerSettings(cpu_cap_group="farm.workers-2").cpu_cap_group == "farm.workers-2"
