"""The fixed-rate loop's own measurements: which slots its own work made late, and how much
of a slot the cameras' reads took."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from recorder.capture.record_loop import CaptureStats, record_episode


class SlowOnce:
    """A camera whose read of one frame takes as long as the given seconds."""

    name = "slow"
    width, height = 8, 6

    def __init__(self, slow_index: int, slow_s: float) -> None:
        self.index, self.slow_index, self.slow_s = 0, slow_index, slow_s

    def read(self) -> np.ndarray:
        if self.index == self.slow_index:
            time.sleep(self.slow_s)  # a frame made inside the loop, as a synthetic camera does
        self.index += 1
        return np.zeros((self.height, self.width, 3), np.uint8)

    def close(self) -> None:
        pass


def test_overrun_slots_are_those_whose_own_work_took_longer_than_a_period() -> None:
    stats = CaptureStats(period_s=0.010, busy_s=[0.002, 0.011, 0.010, 0.030],
                         read_s=[0.001, 0.009, 0.008, 0.029])
    assert stats.overrun_slots == [1, 3]
    assert stats.read_ms(0.5) == pytest.approx(9.0) and stats.busy_ms(0.99) == pytest.approx(30.0)
    assert CaptureStats(busy_s=[1.0]).overrun_slots == []  # no period known: none claimed


def test_a_read_longer_than_a_period_is_an_overrun_of_the_loop_and_a_late_slot() -> None:
    frames: list[dict[str, Any]] = []
    stats = record_episode({"observation.images.slow": SlowOnce(2, 0.05)}, frames.append,
                           fps=100, duration_s=0.05, task="t")
    assert stats.frames == len(frames) == 5 and stats.period_s == 0.01
    assert 2 in stats.overrun_slots and 2 in stats.late_slots
    # Every measure is a lower bound here: the sleep is in the read, and so in the slot.
    assert stats.read_s[2] >= 0.05 and stats.busy_s[2] >= stats.read_s[2]
    assert len(stats.read_s) == len(stats.busy_s) == 5
