"""`recorder benchmark ...`, printing the record loop's work in each episode's first slots.

Results files record `first_slot_busy_ms` since 447921f; this prints it for any checkout
(the code before too, with PYTHONPATH=that checkout), so that old and new code can be
run alternated:

    PYTHONPATH=/path/to/checkout python benchmarks/first_slot.py benchmark --async-encoding \
        --reset-time 0 --fps 30 --mode real --camera clip.mp4 (x4) --episodes 6 --episode-time 5
"""

from __future__ import annotations

import sys
from typing import Any

import recorder.session as session
from recorder.capture.record_loop import CaptureStats
from recorder.cli import main

_record_episode = session.record_episode


def record_episode(*args: Any, **kwargs: Any) -> CaptureStats:
    stats = _record_episode(*args, **kwargs)
    first = [round(1000 * seconds, 1) for seconds in stats.busy_s[:3]]
    print(f"first slots' work, ms: {first}; the episode's most: "
          f"{1000 * max(stats.busy_s, default=0):.1f}", file=sys.stderr, flush=True)
    return stats


if __name__ == "__main__":
    session.record_episode = record_episode  # type: ignore[assignment]
    sys.exit(main(sys.argv[1:]))
