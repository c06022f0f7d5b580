"""One background writer per camera, so that disk or network never stalls the record loop."""

from __future__ import annotations

import errno
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor

import numpy as np

from encoder_worker.raw_episode import Manifest, RawEpisodeWriter
from encoder_worker.storage import PERMANENT_HINTS

logger = logging.getLogger(__name__)

_END = None
# A writer never waits for a thread: more start only when none is idle (one per camera
# per episode still being written, at most), so this bound is never reached in practice.
WRITER_THREADS_MAX = 256


def writer_threads(started: int) -> ThreadPoolExecutor:
    """Threads for CameraWriters, `started` of them started now (two per camera: the
    episode being captured and the one still being committed). A writer that takes an
    idle one starts at once: starting its own in an episode's first slot cost the record
    loop 2-16 ms for 4 cameras (measured), as a new Python thread waits for the GIL."""
    threads = ThreadPoolExecutor(max_workers=WRITER_THREADS_MAX,
                                 thread_name_prefix="raw-writer")
    if started:
        all_running = threading.Barrier(started)  # one thread each: none is idle before
        for _ in range(started):
            threads.submit(all_running.wait, 10)
    return threads


class WriterFailed(Exception):
    """A camera's writer could not store frames; recording must stop (message says why)."""


class CameraWriter:
    """Takes frames from the record loop through a bounded queue and writes them.

    put() waits at most one frame period before it reports backpressure; it then keeps
    waiting, because losing a recorded frame is never an option.
    """

    def __init__(self, writer: RawEpisodeWriter, *, queue_frames: int,
                 on_written: Callable[[int, np.ndarray], None] | None = None,
                 threads: Executor | None = None) -> None:
        """threads: where the writer runs (writer_threads()); default a thread of its own."""
        self.writer = writer
        # Called with (frame index, frame) after each write, in this thread: image stats
        # are computed here, where the frames are anyway, never in the record loop.
        self._on_written = on_written
        self._queue: queue.Queue[tuple[np.ndarray, float] | None] = queue.Queue(queue_frames)
        self._error: BaseException | None = None
        if threads is not None:
            self._wait_done: Callable[[], object] = threads.submit(self._run).result
        else:
            thread = threading.Thread(target=self._run, daemon=True,
                                      name=f"writer-{writer.camera}")
            thread.start()
            self._wait_done = thread.join

    def _run(self) -> None:
        while (item := self._queue.get()) is not _END:
            if self._error is not None:
                continue  # drain, so that put() never blocks on a dead writer
            try:
                index = self.writer.frame_count
                self.writer.write(*item)
                if self._on_written is not None:
                    self._on_written(index, item[0])
            except BaseException as exc:
                # Said once, by whoever stops the recording; the traceback with -v.
                logger.debug("writer for %s failed", self.writer.camera, exc_info=True)
                self._error = exc

    def put(self, frame: np.ndarray, timestamp_s: float, *, period_s: float) -> bool:
        """Hand a frame over; returns True when the writer was behind and the loop waited.

        Raises:
            WriterFailed: the writer failed on an earlier frame.
        """
        self._raise_if_failed()
        try:
            self._queue.put((frame, timestamp_s), timeout=period_s)
            return False
        except queue.Full:
            self._queue.put((frame, timestamp_s))
            return True

    def finish(self, *, interrupted: bool = False) -> Manifest:
        """Write what is queued, commit the last segment and the manifest.

        Raises:
            WriterFailed: a frame could not be stored; the segments stored before it are
            kept under a manifest marked interrupted, where that is still possible.
        """
        self._queue.put(_END)
        self._wait_done()
        if self._error is None:
            try:  # the last segment's commit can fail too (a disk that just filled up)
                return self.writer.close(interrupted=interrupted)
            except Exception as exc:
                logger.debug("closing %s failed", self.writer.camera, exc_info=True)
                self._error = exc
        try:
            self.writer.close_after_failure()
        except Exception as exc:
            logger.error("camera %s: the segments stored before the failure stay on disk "
                         "without a manifest: %s", self.writer.camera, exc)
            logger.debug("committing them failed", exc_info=True)
        self._raise_if_failed()
        raise AssertionError("unreachable: the writer failed")

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            camera = self.writer.camera
            hint = ""
            if isinstance(self._error, OSError) and self._error.errno is not None and \
                    (said := PERMANENT_HINTS.get(errno.errorcode.get(self._error.errno, ""))):
                hint = (f"; {said} (--output-dir, --storage); the frames stored before are "
                        "kept")
            raise WriterFailed(f"camera {camera}: storing frames failed: {self._error}{hint}") \
                from self._error
