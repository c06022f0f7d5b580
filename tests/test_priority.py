"""Encodes beside a record loop: SCHED_IDLE for the encode and the codec threads it
starts, never for the lease heartbeat started before it."""

from __future__ import annotations

import os
import threading

import pytest

from encoder_worker.priority import idle_scheduling

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux only")


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


@pytest.mark.skipif(os.geteuid() != 0, reason="SCHED_FIFO needs root, as SVT-AV1 found it")
def test_real_time_codec_threads_are_demoted_to_the_encodes_class():
    from encoder_worker.encode import demote_realtime_threads

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
