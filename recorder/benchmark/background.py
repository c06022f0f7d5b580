"""A reproducible background load for `recorder benchmark --background-load N`.

What other programs on a robot host do while it records: encoders and uploads. Each of the
N processes, at normal priority, compresses random data (CPU) and every 2 s writes 64 MB
to a temp file, fsyncs it and deletes it (page-cache writeback and disk flushes). Run as
`python -m recorder.benchmark.background SECONDS` to load a host by hand.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

WRITE_EVERY_S = 2.0
WRITE_BYTES = 64 * 1024 * 1024


@contextlib.contextmanager
def background_load(processes: int, *, folder: Path, seconds: float) -> Iterator[None]:
    """processes load processes writing in folder for seconds (the capture: a load through
    the drain would starve SCHED_IDLE workers), stopped at the block's end at the latest."""
    started = [subprocess.Popen([sys.executable, "-m", "recorder.benchmark.background",
                                 f"{seconds:g}", str(folder)], stdin=subprocess.DEVNULL,
                                start_new_session=True)
               for _ in range(processes)]
    try:
        yield
    finally:
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in started:
            process.wait()


def load(seconds: float, folder: Path) -> None:
    """Compress and write until seconds have passed (0: until killed)."""
    os.setpriority(os.PRIO_PROCESS, 0, 0)  # normal priority, whatever the recorder's
    data = os.urandom(1 << 20)
    chunk = os.urandom(1 << 20)
    end = time.monotonic() + seconds if seconds > 0 else float("inf")
    next_write = time.monotonic()
    while time.monotonic() < end:
        zlib.compress(data, 6)
        if time.monotonic() >= next_write:
            fd, name = tempfile.mkstemp(dir=folder, prefix=".background-load-")
            try:
                with os.fdopen(fd, "wb") as out:
                    for _ in range(WRITE_BYTES // len(chunk)):
                        out.write(chunk)
                    out.flush()
                    os.fsync(out.fileno())
            finally:
                os.unlink(name)
            next_write = time.monotonic() + WRITE_EVERY_S


if __name__ == "__main__":
    load(float(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) > 2 else tempfile.gettempdir()))
