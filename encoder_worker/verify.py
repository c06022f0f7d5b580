"""Verifying an encode while it runs: every packet the encoder gives is decoded in a
thread of its own, then the written file is checked packet by packet.

Decoding the finished file instead took 0.57 s of a 4.1 s worker run for 300 frames at
640x480 (benchmarks/README.md): a stage after the encode, on the encode's critical path.
Decoded alongside, it uses the cores the encoder leaves idle, and what is left after the
encode is reading the file's packets (count, order, timing), no decode.
"""

from __future__ import annotations

import os
import queue
import threading
from fractions import Fraction
from pathlib import Path

import av

# Decoders for encoders' outputs where FFmpeg's default one is not a software decoder
# (FFmpeg's own "av1" decodes only through hardware).
_DECODERS = {"av1": "libdav1d"}
_END = None


class VerifyError(Exception):
    """The encoder's output did not decode to the frames it was given."""


class PacketVerifier:
    """Decodes copies of an encoder's packets as they come, checking that they give
    frames of the right size with pts 0, 1, 2, ... (in frames); check() says the outcome."""

    def __init__(self, encoder: av.VideoCodecContext, *, width: int, height: int) -> None:
        name = encoder.codec.canonical_name
        decoder = av.CodecContext.create(_DECODERS.get(name, name), "r")
        assert isinstance(decoder, av.VideoCodecContext)
        if encoder.extradata:
            decoder.extradata = encoder.extradata
        decoder.thread_type = "AUTO"
        # A quarter of the cores at most: the encoder beside it needs the rest. On 2 cores
        # one thread cost dav1d 1.1 ms of CPU per 640x480 frame, its automatic count 1.3.
        decoder.thread_count = max(1, (os.cpu_count() or 1) // 4)
        self._decoder = decoder
        self._size = (width, height)
        self._frame_ticks = 1 / (encoder.framerate * encoder.time_base) \
            if encoder.framerate and encoder.time_base else Fraction(1)
        self._packets: queue.Queue[av.Packet | None] = queue.Queue()
        self.frames = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="verify", daemon=True)
        self._thread.start()

    def add(self, packets: list[av.Packet]) -> None:
        """Hand over the encoder's packets (copied: the muxer changes the originals)."""
        for packet in packets:
            copy = av.Packet(bytes(packet))
            copy.pts, copy.dts = packet.pts, packet.dts
            copy.time_base = packet.time_base
            self._packets.put(copy)

    def check(self, expected: int) -> None:
        """Wait for the last packet's frames; raises VerifyError unless expected frames
        of the right size came, in order."""
        self._packets.put(_END)
        self._thread.join()
        if self._error is not None:
            raise VerifyError(str(self._error)) from self._error
        if self.frames != expected:
            raise VerifyError(f"the encoder's packets decode to {self.frames} frames, "
                              f"{expected} were encoded")

    def _run(self) -> None:
        while (packet := self._packets.get()) is not _END:
            if self._error is None:
                try:
                    self._take(self._decoder.decode(packet))
                except (av.FFmpegError, VerifyError) as exc:
                    self._error = exc
        if self._error is None:
            try:
                self._take(self._decoder.decode(None))  # the decoder's delayed frames
            except (av.FFmpegError, VerifyError) as exc:
                self._error = exc

    def _take(self, frames: list[av.VideoFrame]) -> None:
        for frame in frames:
            if (frame.width, frame.height) != self._size:
                raise VerifyError(f"frame {self.frames} is {frame.width}x{frame.height}, "
                                  f"not {self._size[0]}x{self._size[1]}")
            if frame.pts is None or frame.pts != self.frames * self._frame_ticks:
                raise VerifyError(f"frame {self.frames} decodes with pts {frame.pts}, "
                                  f"expected {self.frames * self._frame_ticks}")
            self.frames += 1


def check_file(video: Path, *, frames: int, fps: float, size: tuple[int, int]) -> float:
    """Read the written file's packets back (no decode): one per frame, frame i shown at
    i / fps exactly, the right size. Returns the video's duration in seconds, as a reader
    of the file gets it (the stream's duration; LeRobot reads that). Raises VerifyError."""
    try:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            if (stream.width, stream.height) != size:
                raise VerifyError(f"the file's video is {stream.width}x{stream.height}, "
                                  f"not {size[0]}x{size[1]}")
            assert stream.time_base is not None
            step = 1 / (Fraction(fps).limit_denominator(1001) * stream.time_base)
            duration = (float(stream.duration * stream.time_base)
                        if stream.duration is not None else frames / fps)
            pts = sorted(p.pts for p in container.demux(stream)
                         if p.pts is not None and p.size)
    except av.FFmpegError as exc:
        raise VerifyError(f"the written file does not read back: {exc}") from exc
    if len(pts) != frames:
        raise VerifyError(f"the file holds {len(pts)} frames, {frames} were encoded")
    for index, value in enumerate(pts):
        if value != pts[0] + index * step or pts[0] != 0:
            raise VerifyError(f"frame {index} is at pts {value} in the file, expected "
                              f"{index * step} (one frame every 1/{fps:g} s)")
    return duration
