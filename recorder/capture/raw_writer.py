"""One background writer per camera, so that disk or network never stalls the record loop."""

from __future__ import annotations

import errno
import logging
import queue
import threading
from collections.abc import Callable

import numpy as np

from encoder_worker.raw_episode import Manifest, RawEpisodeWriter
from encoder_worker.storage import PERMANENT_HINTS

logger = logging.getLogger(__name__)

_END = None


class WriterThreads:
    """Threads for CameraWriters, started ahead: `started` now (two per camera: the
    episode being captured and the one still being committed), one more whenever none is
    idle. A writer that takes an idle one starts at once: starting its own in an episode's
    first slot cost the record loop 2-16 ms for 4 cameras (measured: a new Python thread
    waits for the GIL).

    Daemon threads, as a writer's own thread was: concurrent.futures' threads are not,
    and one whose episode was never finished (a program that stops without finalize())
    would hold the interpreter's exit for ever.
    """

    def __init__(self, started: int) -> None:
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)  # one release per thread waiting for a task
        self._count = 0
        for _ in range(started):
            self._start()

    def run(self, task: Callable[[], None]) -> None:
        """Run task on an idle thread (a new one if none is)."""
        if not self._idle.acquire(blocking=False):
            self._start()
            self._idle.acquire()  # the new thread's, given once it waits
        self._tasks.put(task)

    def shutdown(self) -> None:
        """Idle threads end now, busy ones after their task."""
        for _ in range(self._count):
            self._tasks.put(None)
        self._count = 0

    def _start(self) -> None:
        self._count += 1
        threading.Thread(target=self._serve, daemon=True, name="raw-writer").start()

    def _serve(self) -> None:
        while True:
            self._idle.release()
            task = self._tasks.get()
            if task is None:
                return
            task()


class WriterFailed(Exception):
    """A camera's writer could not store frames; recording must stop (message says why)."""


class CameraWriter:
    """Takes frames from the record loop through a bounded queue and writes them.

    put() waits at most one frame period before it reports backpressure; it then keeps
    waiting, because losing a recorded frame is never an option.
    """

    def __init__(self, writer: RawEpisodeWriter, *, queue_frames: int,
                 on_written: Callable[[int, np.ndarray], None] | None = None,
                 threads: WriterThreads | None = None) -> None:
        """threads: where the writer runs; default a thread of its own."""
        self.writer = writer
        # Called with (frame index, frame) after each write, in this thread: image stats
        # are computed here, where the frames are anyway, never in the record loop.
        self._on_written = on_written
        self._queue: queue.Queue[tuple[np.ndarray, float] | None] = queue.Queue(queue_frames)
        self._error: BaseException | None = None
        self._done = threading.Event()
        if threads is not None:
            threads.run(self._run)
        else:
            threading.Thread(target=self._run, daemon=True,
                             name=f"writer-{writer.camera}").start()

    def _run(self) -> None:
        try:
            self._write_all()
        finally:
            self._done.set()

    def _write_all(self) -> None:
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
        self._done.wait()
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
