"""What a recorder tells the workers beside it while it captures (recorder/farm/
announcer.py): the CPUs it keeps, and once measured, the CPU time it keeps: at least
--capture-cpus, more where it was measured to need more."""

from __future__ import annotations

import threading
import time

import fakeredis
from conftest import wait_for

from encoder_worker.ledger import JobLedger
from recorder.farm.announcer import CPU_MARGIN, RecorderAnnouncer

HOST = "robot-1"


def test_the_cpu_time_kept_is_capture_cpus_or_what_the_recorder_was_measured_to_need():
    announcer = RecorderAnnouncer(JobLedger(fakeredis.FakeRedis()), host=HOST,
                                  capture_cpus=0.7)
    assert announcer.cpu_time() is None, "not measured yet: workers keep off its CPU"
    announcer.cpu_used = 0.7 - CPU_MARGIN
    assert announcer.cpu_time() == 0.7
    announcer.cpu_used = 0.1
    assert announcer.cpu_time() == 0.7, "--capture-cpus is the least it keeps"
    # 4 cameras on a busy day: a tighter cap, in steps, not none.
    announcer.cpu_used = 0.543
    assert announcer.cpu_time() == 0.75
    announcer.cpu_used = 0.55
    assert announcer.cpu_time() == 0.75
    announcer.cpu_used = 1.2  # 2 cameras at 1080p: every CPU of a 2-CPU host, no cap there
    assert announcer.cpu_time() == 1.4
    # --capture-cpus 0: the encodes run on every CPU, and no cap either.
    uncapped = RecorderAnnouncer(JobLedger(fakeredis.FakeRedis()), host=HOST, capture_cpus=0)
    uncapped.cpu_used = 0.5
    assert uncapped.cpu_time() is None and uncapped.cpus == []


def test_a_capturing_recorder_measures_its_cpu_and_says_what_it_keeps():
    ledger = JobLedger(fakeredis.FakeRedis())
    announcer = RecorderAnnouncer(ledger, host=HOST, capture_cpus=0.7)
    announcer.capturing(True)
    spinning = threading.Event()

    def spin() -> None:  # a recorder that needs a whole CPU
        while spinning.is_set():
            time.perf_counter()

    try:
        word = wait_for(lambda: ledger.capture_word(HOST), timeout_s=10,
                        what="the capture word")
        assert word.cpus == frozenset(announcer.cpus) and len(word.cpus) == 1
        wait_for(lambda: ledger.capture_word(HOST).cpu_time == 0.7, timeout_s=15,
                 what="an idle recorder to name the CPU time it keeps")
        spinning.set()
        threading.Thread(target=spin, daemon=True).start()
        wait_for(lambda: (word := ledger.capture_word(HOST)) is not None
                 and (word.cpu_time or 0) > 0.7, timeout_s=30,
                 what="a busy recorder to name more than --capture-cpus: what it needs")
    finally:
        spinning.clear()
        announcer.capturing(False)
        announcer.close()
    assert ledger.capture_word(HOST) is None
