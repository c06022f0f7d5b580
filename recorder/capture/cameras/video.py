"""Real camera sources through PyAV: V4L2 devices, network streams and video files.

    camera = open_camera("/dev/video0", name="cam0")          # a V4L2 device
    camera = open_camera("rtsp://10.0.0.5/stream", name="cam0")  # a network stream
    camera = open_camera("demo.mp4", name="cam0")             # a file, replayed as a camera

Frames come out as (height, width, 3) uint8 RGB, at the requested size or the source's own
(rounded down to even numbers, as yuv420p needs).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import av
import numpy as np

from recorder.capture.cameras import CameraError

logger = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 10.0
# Frames a replayed file is decoded ahead of the capture loop: a decode that takes up to
# this many frame periods (a keyframe, a busy host) costs the loop nothing.
READ_AHEAD_FRAMES = 4


def open_camera(source: str, *, name: str, width: int | None = None, height: int | None = None,
                fps: float | None = None) -> VideoFileCamera | LiveCamera:
    """Open a camera source; its first frame is read here, so a bad source fails now.

    Args:
        source: a V4L2 device (/dev/video0), a stream URL (rtsp://, http://, udp://...),
            or a video file (a path or file:// URL).
        width, height: the frame size to deliver; default the source's own.
        fps: the rate to ask a V4L2 device for; files replay at their own rate.

    Raises:
        CameraError: the source is missing, unreadable or has no video.
    """
    scheme = urlsplit(source).scheme
    if scheme == "file":
        return VideoFileCamera(urlsplit(source).path, name=name, width=width, height=height)
    if source.startswith("/dev/") or (scheme and len(scheme) > 1):  # not a drive letter
        return LiveCamera(source, name=name, width=width, height=height, fps=fps)
    return VideoFileCamera(source, name=name, width=width, height=height)


def _even(value: int) -> int:
    return value - value % 2


def _open_container(source: str, *, name: str, format: str | None = None,
                    options: dict[str, str] | None = None) -> av.container.InputContainer:
    try:
        container = av.open(source, format=format, options=options or {},
                             timeout=OPEN_TIMEOUT_S)
    except (av.FFmpegError, OSError) as exc:
        raise CameraError(f"camera {name}: cannot open {source}: {exc}") from exc
    if not container.streams.video:
        container.close()
        raise CameraError(f"camera {name}: {source} has no video stream")
    return container


class _Converter:
    """VideoFrame -> RGB array at a fixed size; converts each distinct frame once."""

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self._last: tuple[av.VideoFrame, np.ndarray] | None = None

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if self._last is not None and self._last[0] is frame:
            return self._last[1]
        array = frame.reformat(width=self.width, height=self.height,
                               format="rgb24").to_ndarray()
        self._last = (frame, array)
        return array


class VideoFileCamera:
    """A video file replayed at its own frame rate, as if it were a camera.

    A thread decodes and converts the file a few frames ahead, as a camera's driver
    delivers frames on its own; the capture loop's read() only picks the frame due at the
    time since the first read (the start of recording): frames that fell due in between
    are skipped, and a frame is returned again while the next is not yet due. At the end
    of the file the replay loops to its beginning, so episodes may be longer than the
    file. A file that cannot be decoded in real time falls behind instead of catching up
    without end: a read waits at most one frame period for a frame, then the replay goes
    on from where it got (said once). A loop that did not read for longer than the
    read-ahead covers (an inline encode between episodes) finds the replay paused there,
    without a wait. Frame times that do not increase (a broken file) are replaced by the
    frame's index at the file's rate (said once).
    """

    def __init__(self, path: str | Path, *, name: str, width: int | None = None,
                 height: int | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 read_ahead: int = READ_AHEAD_FRAMES) -> None:
        self.name = name
        self._clock = clock
        self.source = str(path)
        if not Path(path).is_file():
            raise CameraError(f"camera {name}: video file {path} does not exist")
        self._container = _open_container(str(path), name=name)
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        self.native_fps = float(stream.average_rate or stream.guessed_rate or 30)
        self._period = 1.0 / self.native_fps
        self._offset_s = 0.0  # added to the file's times: one file length per loop
        self._last_time_s = 0.0
        self._frames = self._decode()
        first = self._next_frame()
        self.width = _even(width or first[1].width)
        self.height = _even(height or first[1].height)
        self._convert = _Converter(self.width, self.height)
        self._current = (first[0], self._convert(first[1]))
        self._upcoming: tuple[float, np.ndarray] | None = None
        self._origin: float | None = None
        self._said_behind = False
        self._error: CameraError | None = None
        self._ahead: queue.Queue[tuple[float, np.ndarray] | Exception] = \
            queue.Queue(maxsize=read_ahead)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._decode_ahead, name=f"camera-{name}",
                                        daemon=True)
        self._thread.start()

    def _decode_ahead(self) -> None:
        """The thread: decoded, converted frames into the read-ahead queue until close."""
        try:
            while not self._closing.is_set():
                t, frame = self._next_frame()
                self._ahead.put((t, self._convert(frame)))  # close() makes room
        except Exception as exc:  # handed to the reader, who raises it
            self._ahead.put(exc)

    def _decode(self) -> Iterator[tuple[float, av.VideoFrame]]:
        start: float | None = None
        previous: float | None = None
        by_index = False
        for index, frame in enumerate(self._decoded_frames()):
            t = float(frame.time) if frame.time is not None else index * self._period
            if start is None:
                start = t
            if previous is not None and not by_index and t - start <= previous:
                by_index = True
                logger.warning("camera %s: the frame times of %s do not increase (frame %d); "
                               "timing its frames by their index at %.3g fps instead",
                               self.name, self.source, index, self.native_fps)
            previous = previous + self._period if by_index and previous is not None \
                else t - start
            yield previous, frame

    def _decoded_frames(self) -> Iterator[av.VideoFrame]:
        return self._container.decode(video=0)

    def _next_frame(self) -> tuple[float, av.VideoFrame]:
        try:
            try:
                t, frame = next(self._frames)
            except StopIteration:
                # Loop: the replay goes on one frame period after the file's last frame.
                self._offset_s = self._last_time_s + self._period
                self._container.seek(0)
                self._frames = self._decode()
                t, frame = next(self._frames)
        except StopIteration:
            raise CameraError(f"camera {self.name}: {self.source} has no frames") from None
        except av.FFmpegError as exc:
            raise CameraError(f"camera {self.name}: cannot decode {self.source}: {exc}") from exc
        self._last_time_s = self._offset_s + t
        return self._last_time_s, frame

    def read(self) -> np.ndarray:
        if self._error is not None:
            raise self._error
        now = self._clock()
        if self._origin is None:
            self._origin = now
        due = now - self._origin
        give_up = time.perf_counter() + self._period  # real time, whatever the clock
        decoder_waited = self._ahead.full()  # for this read: the loop was away
        while True:
            if self._upcoming is None:
                if decoder_waited and self._ahead.empty():
                    self._origin = now - self._current[0]  # paused while nobody read
                    break
                try:
                    item = self._ahead.get(timeout=max(0.0, give_up - time.perf_counter()))
                except queue.Empty:
                    self._fall_behind(now)
                    break
                if isinstance(item, Exception):  # raised by the next read
                    self._error = item if isinstance(item, CameraError) else CameraError(
                        f"camera {self.name}: cannot replay {self.source}: {item!r}")
                    break
                self._upcoming = item
            if self._upcoming[0] > due:
                break
            self._current, self._upcoming = self._upcoming, None
        return self._current[1]

    def _fall_behind(self, now: float) -> None:
        """Decoding is slower than the file's rate: go on from the current frame later."""
        assert self._origin is not None
        self._origin = now - self._current[0]
        if not self._said_behind:
            self._said_behind = True
            logger.warning("camera %s: %s cannot be decoded in real time here; its replay "
                           "falls behind (frames repeat, and the capture loop's slots may "
                           "run late)", self.name, self.source)

    def close(self) -> None:
        self._closing.set()
        while True:  # room for the thread's last put, after which it sees the close
            try:
                self._ahead.get_nowait()
            except queue.Empty:
                break
        self._thread.join()
        self._container.close()


class LiveCamera:
    """A V4L2 device or a network stream; a thread decodes, read() returns the newest frame.

    Reading in a thread keeps the source's buffer drained, so a slow moment of the capture
    loop never turns into a backlog of stale frames.
    """

    def __init__(self, source: str, *, name: str, width: int | None = None,
                 height: int | None = None, fps: float | None = None) -> None:
        self.name = name
        self.source = source
        fmt, options = None, {}
        if source.startswith("/dev/"):
            if not Path(source).exists():
                raise CameraError(f"camera {name}: device {source} does not exist")
            fmt = "v4l2"
            if width and height:
                options["video_size"] = f"{width}x{height}"
            if fps:
                options["framerate"] = str(fps)
        elif source.startswith("rtsp"):
            options["rtsp_transport"] = "tcp"  # UDP loses packets on busy robot networks
        self._container = _open_container(source, name=name, format=fmt, options=options)
        self._frames = self._container.decode(video=0)
        try:
            first = next(self._frames)
        except (StopIteration, av.FFmpegError) as exc:
            self._container.close()
            raise CameraError(f"camera {name}: no frame from {source}: {exc!r}") from exc
        self.width = _even(width or first.width)
        self.height = _even(height or first.height)
        self._convert = _Converter(self.width, self.height)
        self._latest = first
        self._error: BaseException | None = None
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, name=f"camera-{name}", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for frame in self._frames:
                with self._lock:
                    self._latest = frame
                if self._closing.is_set():
                    return
            self._error = CameraError(f"camera {self.name}: {self.source} ended")
        except Exception as exc:  # handed to the reader, who raises it
            self._error = exc

    def read(self) -> np.ndarray:
        if self._error is not None:
            if isinstance(self._error, CameraError):
                raise self._error
            raise CameraError(f"camera {self.name}: {self.source} failed: "
                              f"{self._error}") from self._error
        with self._lock:
            frame = self._latest
        return self._convert(frame)

    def close(self) -> None:
        self._closing.set()
        self._thread.join(timeout=OPEN_TIMEOUT_S)
        self._container.close()
