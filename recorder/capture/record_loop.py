"""The fixed-rate capture loop: frame i is due at start + i / fps, late ones are counted."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from recorder.capture.cameras import CameraSource


@dataclass
class CaptureStats:
    frames: int = 0  # per camera
    # Slots (frame indices) captured after their slot (one period from the deadline) ended.
    late_slots: list[int] = field(default_factory=list)
    writer_waits: int = 0  # frames for which a writer was behind and the loop waited
    started_at: float = 0.0  # unix time of the first deadline
    capture_s: float = 0.0
    interrupted: bool = False
    # Seconds the loop worked in each slot (cameras read, robot read, add_frame): the
    # headroom left of a period. The synthetic cameras' own cost is in it.
    busy_s: list[float] = field(default_factory=list)
    # Of busy_s, the cameras' and the robot's reads: a synthetic camera makes its frame
    # here, inside the loop, which a real camera's driver does in a thread of its own.
    read_s: list[float] = field(default_factory=list)
    period_s: float = 0.0

    @property
    def late_frames(self) -> int:
        return len(self.late_slots)

    @property
    def overrun_slots(self) -> list[int]:
        """Slots whose own work (not a wait for the loop) took longer than a period: late
        whatever else ran on the host."""
        if not self.period_s:
            return []
        return [index for index, busy in enumerate(self.busy_s) if busy > self.period_s]

    def busy_ms(self, quantile: float) -> float:
        """A quantile (0.5: the median) of the loop's busy time per slot, in ms."""
        return _quantile_ms(self.busy_s, quantile)

    def read_ms(self, quantile: float) -> float:
        """The same quantile of the cameras' and robot's reads per slot, in ms."""
        return _quantile_ms(self.read_s, quantile)


def _quantile_ms(seconds: list[float], quantile: float) -> float:
    if not seconds:
        return 0.0
    ordered = sorted(seconds)
    return 1000 * ordered[min(len(ordered) - 1, round(quantile * (len(ordered) - 1)))]


def record_episode(
    cameras: Mapping[str, CameraSource],
    add_frame: Callable[[dict[str, Any]], None],
    *,
    fps: float,
    duration_s: float,
    robot: Callable[[], dict[str, Any]] | None = None,
    task: str = "",
    stop: threading.Event | None = None,
    on_frame: Callable[[int], None] | None = None,
) -> CaptureStats:
    """Capture every camera (and the robot's state and action) at fps for duration_s.

    Each slot's frame goes to add_frame: each camera's image under its key in cameras
    (the dataset's feature key), the robot's features, and the task.

    Raises:
        CameraError, WriterFailed: a camera or a writer failed; frames so far are kept
        in the writers, which the caller finishes.
    """
    period = 1.0 / fps
    total = round(duration_s * fps)
    stats = CaptureStats(started_at=time.time(), period_s=period)
    start = time.perf_counter()
    for index in range(total):
        if stop is not None and stop.is_set():
            stats.interrupted = True
            break
        deadline = start + index * period
        delay = deadline - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # the pacing of a fixed-rate loop, not a synchronisation
        slot_started = time.perf_counter()
        frame: dict[str, Any] = {key: camera.read() for key, camera in cameras.items()}
        if robot is not None:
            frame.update(robot())
        read = time.perf_counter()
        frame["task"] = task
        add_frame(frame)
        stats.frames += 1
        done = time.perf_counter()
        stats.busy_s.append(done - slot_started)
        stats.read_s.append(read - slot_started)
        if done > deadline + period:
            stats.late_slots.append(index)
        if on_frame is not None:
            on_frame(stats.frames)
    stats.capture_s = time.perf_counter() - start
    return stats
