"""Encodes beside a record loop: SCHED_IDLE for the encode and the codec threads it
starts, never for the lease heartbeat started before it. The recorder ahead of the host's
other programs: --capture-nice, for its threads and its autogroup, put back after."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import require

from encoder_worker.priority import idle_scheduling

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux only")

AUTOGROUP = Path("/proc/self/autogroup")


@pytest.fixture
def root_and_autogroup() -> None:
    require(os.geteuid() == 0, "raising priority needs root")
    if not AUTOGROUP.exists():  # a kernel built without them: nothing to install
        pytest.skip("the kernel has no autogroups (/proc/self/autogroup)")


def policy_of_new_thread() -> int:
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(os.sched_getscheduler(0)))
    thread.start()
    thread.join()
    return seen[0]


def test_an_idle_encode_and_its_threads_leave_earlier_threads_alone():
    before = os.sched_getscheduler(0)
    heartbeat_policy: list[int] = []
    go, stop = threading.Event(), threading.Event()

    def heartbeat() -> None:  # started before the encode, like a lease's heartbeat
        go.wait()
        heartbeat_policy.append(os.sched_getscheduler(0))
        stop.wait()

    beating = threading.Thread(target=heartbeat)
    beating.start()
    with idle_scheduling(True):
        assert os.sched_getscheduler(0) == os.SCHED_IDLE
        assert policy_of_new_thread() == os.SCHED_IDLE  # the codec's threads
        go.set()
        stop.set()
        beating.join()
    assert heartbeat_policy == [before]
    if os.geteuid() == 0:  # leaving SCHED_IDLE needs privileges (or RLIMIT_NICE)
        assert os.sched_getscheduler(0) == before
    with idle_scheduling(False):
        assert os.sched_getscheduler(0) == before


def test_real_time_codec_threads_are_demoted_to_the_encodes_class():
    require(os.geteuid() == 0, "SCHED_FIFO needs root, as SVT-AV1 found it")
    from encoder_worker.priority import demote_realtime_threads

    ready, done = threading.Event(), threading.Event()
    tid: list[int] = []

    def codec_thread() -> None:  # what SVT-AV1 does to its threads as root
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(99))
        tid.append(threading.get_native_id())
        ready.set()
        done.wait()

    thread = threading.Thread(target=codec_thread)
    thread.start()
    ready.wait()
    try:
        with idle_scheduling(True):
            assert demote_realtime_threads() >= 1
            assert os.sched_getscheduler(tid[0]) == os.SCHED_IDLE
    finally:
        done.set()
        thread.join()


# Run in a session of its own: the autogroup is the session's, not the test runner's.
PRIORITY_PROBE = """
import json, os, threading
from pathlib import Path
from recorder.capture.priority import raised_priority
def group(): return int(Path("/proc/self/autogroup").read_text().split()[-1])
seen = {}
with raised_priority(-5):
    seen.update(inside=os.getpriority(os.PRIO_PROCESS, 0), group_inside=group())
    thread = threading.Thread(target=lambda: seen.update(thread=os.getpriority(os.PRIO_PROCESS, 0)))
    thread.start()
    thread.join()
seen.update(after=os.getpriority(os.PRIO_PROCESS, 0), group_after=group())
print(json.dumps(seen))
"""


@pytest.mark.usefixtures("root_and_autogroup")
def test_raised_priority_covers_new_threads_and_the_autogroup_and_is_put_back():
    done = subprocess.run([sys.executable, "-c", PRIORITY_PROBE], capture_output=True,
                          text=True, timeout=60, start_new_session=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"inside": -5, "group_inside": -5, "thread": -5,
                                       "after": 0, "group_after": 0}


@pytest.mark.integration
@pytest.mark.usefixtures("root_and_autogroup")
def test_record_runs_at_its_capture_nice_and_gives_the_session_its_priority_back(tmp_path):
    recorder = (f"{sys.executable} -m recorder.cli -v record --capture-nice -5 --episodes 1 "
                f"--episode-time 0.5 --cameras 1 --width 64 --height 48 --codec libx264 "
                f"--output-dir {tmp_path}/out")
    done = subprocess.run(["sh", "-c", f"{recorder} && cat /proc/self/autogroup"],
                          capture_output=True, text=True, timeout=300, start_new_session=True)
    assert done.returncode == 0, done.stderr
    assert "running at nice -5, autogroup too" in done.stderr
    assert done.stdout.split()[-2:] == ["nice", "0"]  # the shell after the recorder
    assert list((tmp_path / "out").rglob("*.mp4"))


def test_record_refuses_a_capture_nice_it_may_not_have_before_recording(tmp_path):
    command = [sys.executable, "-m", "recorder.cli", "record", "--capture-nice", "-10",
               "--episodes", "1", "--episode-time", "0.5", "--cameras", "1",
               "--output-dir", str(tmp_path / "out")]
    if os.geteuid() == 0:
        require(shutil.which("setpriv"),
                "setpriv (util-linux) drops root's CAP_SYS_NICE for this test")
        command = ["setpriv", "--bounding-set", "-sys_nice", "--inh-caps", "-sys_nice",
                   *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NICE, (0, 0)))
    assert done.returncode == 2, done.stderr
    assert "--capture-nice -10: this user may not raise a process's priority" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
