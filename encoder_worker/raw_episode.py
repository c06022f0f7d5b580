"""The raw episode format: segment files of raw frames plus a manifest committed last.

One prefix per (episode, camera). The manifest's presence means the episode is complete;
it lists every segment with its first frame, frame count, size and CRC-32 (of the bytes
stored), and how frames are stored: pixel format and compression (raw_frames.py).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import time
import zlib
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
from pydantic import BaseModel, Field, ValidationError, field_validator

from encoder_worker.raw_frames import PIX_FMTS, Compression, FramePacker, frame_bytes, frame_shape
from encoder_worker.raw_layout import manifest_key, segment_name
from encoder_worker.raw_sinks import SegmentSink
from encoder_worker.storage import KeyNotFound, Storage

logger = logging.getLogger(__name__)

# 2: pixel formats beyond packed RGB, compression, per-frame sizes of compressed segments.
MANIFEST_SCHEMA_VERSION = 2
READABLE_SCHEMA_VERSIONS = (1, 2)


class RawEpisodeError(Exception):
    """The raw episode cannot be read: missing, incomplete or corrupt (the message says)."""


class ManifestMissing(RawEpisodeError):
    pass


class SegmentInfo(BaseModel):
    name: str
    first_frame: int = Field(ge=0)
    frame_count: int = Field(ge=1)
    bytes: int = Field(ge=0)
    crc32: int
    # Stored bytes of each frame, when compressed (else every frame has frame_bytes).
    frame_sizes: list[int] | None = None


class Manifest(BaseModel):
    schema_version: int = MANIFEST_SCHEMA_VERSION
    episode: int
    camera: str
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    pix_fmt: str = "rgb24"
    compression: Compression = "none"
    # What the decoder of a compression needs (FFV1's configuration record), base64.
    extradata: str | None = None
    fps: float = Field(gt=0)
    frame_count: int = Field(ge=0)
    # Capture time of each frame, seconds from the episode's first deadline.
    timestamps: list[float]
    segments: list[SegmentInfo]
    # True when recording stopped early (Ctrl-C, an error): kept, but never encoded as is.
    interrupted: bool = False
    recorded_at: float = Field(default_factory=time.time)

    @field_validator("pix_fmt")
    @classmethod
    def _known_pix_fmt(cls, pix_fmt: str) -> str:
        if pix_fmt not in PIX_FMTS:
            raise ValueError(f"raw pixel format {pix_fmt!r} is not one of {sorted(PIX_FMTS)}")
        return pix_fmt

    @property
    def frame_bytes(self) -> int:
        """Bytes of one frame before compression."""
        return frame_bytes(self.pix_fmt, self.width, self.height)

    @property
    def frame_shape(self) -> tuple[int, ...]:
        return frame_shape(self.pix_fmt, self.width, self.height)

    @property
    def stored_bytes(self) -> int:
        return sum(s.bytes for s in self.segments)

    def frames_digest(self, first: int, count: int) -> str:
        """The digest of what frames [first, first + count) are made of: the format and
        the segments that hold them. A window's copy of the manifest (window_of) and the
        whole episode's give the same digest, so a part encoded while recording is known
        to hold the frames of the episode that was saved."""
        format_fields = self.model_dump_json(include={
            "width", "height", "pix_fmt", "compression", "extradata", "fps"})
        held = [s.model_dump_json() for s in self.segments
                if s.first_frame < first + count and s.first_frame + s.frame_count > first]
        text = "\n".join([format_fields, f"{first}+{count}", *held])
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def packer(self) -> FramePacker:
        """What turns this episode's stored bytes back into frames."""
        extradata = base64.b64decode(self.extradata) if self.extradata else None
        return FramePacker(width=self.width, height=self.height, pix_fmt=self.pix_fmt,
                           input_pix_fmt=self.pix_fmt, compression=self.compression,
                           extradata=extradata)


def window_of(manifest: Manifest, first: int, count: int) -> Manifest:
    """What a worker needs to read frames [first, first + count) before the episode's
    manifest is written: its format and the segments holding them (frame_count: the end
    of the window; timestamps are the episode manifest's alone)."""
    return manifest.model_copy(update={
        "frame_count": first + count, "timestamps": [],
        "segments": [s for s in manifest.segments
                     if s.first_frame < first + count and s.first_frame + s.frame_count > first]})


class RawEpisodeWriter:
    """Appends frames of one (episode, camera) to segments; close() commits the manifest."""

    def __init__(
        self,
        sink: SegmentSink,
        *,
        episode: int,
        camera: str,
        width: int,
        height: int,
        fps: float,
        pix_fmt: str = "rgb24",
        input_pix_fmt: str | None = None,
        compression: Compression = "none",
        segment_frames: int = 30,
        window_frames: int = 0,
    ) -> None:
        """Frames are given in input_pix_fmt (default: pix_fmt) and stored as pix_fmt,
        compressed by compression. With window_frames (a multiple of segment_frames), each
        window of that many frames goes to sink.commit_window once the frame after it is
        written (so a window is never the episode's last part, which the save sends).

        Raises:
            ValueError: a pixel format or compression this format does not carry, or
                window_frames not a multiple of segment_frames.
        """
        if window_frames % segment_frames:
            raise ValueError(f"window_frames {window_frames} is not a multiple of "
                             f"segment_frames {segment_frames}")
        self.sink = sink
        self.segment_frames = segment_frames
        self.window_frames = window_frames
        self._packer = FramePacker(width=width, height=height, pix_fmt=pix_fmt,
                                   input_pix_fmt=input_pix_fmt or pix_fmt,
                                   compression=compression)
        extradata = self._packer.extradata
        self._manifest = Manifest(
            episode=episode, camera=camera, width=width, height=height, pix_fmt=pix_fmt,
            compression=compression, fps=fps, frame_count=0, timestamps=[], segments=[],
            extradata=base64.b64encode(extradata).decode() if extradata else None,
        )
        self._frame_sizes: list[int] = []
        self._file: BinaryIO | None = None
        self._segment_first = 0
        self._segment_bytes = 0
        self._crc = 0
        self._closed = False

    @property
    def frame_count(self) -> int:
        return self._manifest.frame_count

    @property
    def camera(self) -> str:
        return self._manifest.camera

    def write(self, frame: np.ndarray, timestamp_s: float) -> None:
        """Append one frame; raises ValueError when its shape or type do not match."""
        manifest = self._manifest
        if frame.shape != self._packer.input_shape or frame.dtype != np.uint8:
            raise ValueError(
                f"camera {manifest.camera}: frame of shape {frame.shape} {frame.dtype}, "
                f"expected {self._packer.input_shape} uint8"
            )
        data = self._packer.pack(frame)
        count = manifest.frame_count
        if self.window_frames and count and count % self.window_frames == 0:
            # The window's last segment was committed with its last frame.
            self.sink.commit_window(window_of(manifest, count - self.window_frames,
                                              self.window_frames))
        if self._file is None:
            self._file = self.sink.open_segment(segment_name(len(manifest.segments)))
            self._segment_first = manifest.frame_count
            self._segment_bytes = 0
            self._crc = 0
            self._frame_sizes = []
        self._file.write(data)
        self._crc = zlib.crc32(data, self._crc)
        self._segment_bytes += len(data)
        self._frame_sizes.append(len(data))
        manifest.frame_count += 1
        manifest.timestamps.append(round(timestamp_s, 6))
        if manifest.frame_count - self._segment_first >= self.segment_frames:
            self._commit_segment()

    def _commit_segment(self) -> None:
        assert self._file is not None
        manifest = self._manifest
        info = SegmentInfo(
            name=segment_name(len(manifest.segments)),
            first_frame=self._segment_first,
            frame_count=manifest.frame_count - self._segment_first,
            bytes=self._segment_bytes,
            crc32=self._crc,
            frame_sizes=None if manifest.compression == "none" else self._frame_sizes,
        )
        self.sink.commit_segment(info.name, self._file)
        manifest.segments.append(info)
        self._file = None

    def close_after_failure(self) -> Manifest:
        """Commit the segments stored so far under an interrupted manifest.

        The segment in progress is left out of the manifest (its file stays where it was
        written): it is the one whose write or commit failed.
        """
        manifest = self._manifest
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        committed = sum(s.frame_count for s in manifest.segments)
        manifest.frame_count = committed
        del manifest.timestamps[committed:]
        return self.close(interrupted=True)

    def close(self, *, interrupted: bool = False) -> Manifest:
        """Commit the last segment, then the manifest; returns the manifest."""
        if self._closed:
            return self._manifest
        if self._file is not None:
            self._commit_segment()
        self._manifest.interrupted = interrupted
        self._manifest.recorded_at = time.time()
        self.sink.commit_manifest(self._manifest)
        self._closed = True
        return self._manifest


class RawEpisodeReader:
    """Reads a committed raw episode back, frame by frame, checking sizes and checksums."""

    def __init__(self, storage: Storage, prefix: str, *, window: Manifest | None = None) -> None:
        """window: read a window of frames sent while recording (window_of), not the
        episode's manifest (manifest_digest is then the window's frames_digest)."""
        self.storage = storage
        self.prefix = prefix
        if window is None:
            self.manifest, self.manifest_digest = self._load_manifest()
        else:
            first = window.segments[0].first_frame if window.segments else 0
            self.manifest = window
            self.manifest_digest = window.frames_digest(first, window.frame_count - first)

    def _load_manifest(self) -> tuple[Manifest, str]:
        key = manifest_key(self.prefix)
        try:
            data = self.storage.get_bytes(key)
        except KeyNotFound as exc:
            raise ManifestMissing(
                f"no manifest at {self.storage.url}/{key}: the episode was never committed"
            ) from exc
        try:
            manifest = Manifest.model_validate_json(data)
        except ValidationError as exc:
            raise RawEpisodeError(f"manifest {self.storage.url}/{key} is invalid: {exc}") from exc
        if manifest.schema_version not in READABLE_SCHEMA_VERSIONS:
            raise RawEpisodeError(
                f"manifest {key} has schema_version {manifest.schema_version}; this worker "
                f"reads {list(READABLE_SCHEMA_VERSIONS)}: upgrade the worker"
            )
        if manifest.frame_count != len(manifest.timestamps) or manifest.frame_count != sum(
            s.frame_count for s in manifest.segments
        ):
            raise RawEpisodeError(f"manifest {key}: frame counts of segments and timestamps differ")
        return manifest, hashlib.sha256(data).hexdigest()[:32]

    def frames(self, first: int = 0, count: int | None = None) -> Iterator[np.ndarray]:
        """Yield frames first .. first+count-1 (default: to the end) in order, in the
        stored pixel format; every segment read is checked whole (size and CRC-32).

        Raises:
            RawEpisodeError: a segment is missing or corrupt, or the range is not in
            the episode.
        """
        manifest = self.manifest
        stop = manifest.frame_count if count is None else first + count
        if not 0 <= first <= stop <= manifest.frame_count:
            raise RawEpisodeError(f"frames {first}..{stop - 1} are not all in {self.prefix} "
                                  f"({manifest.frame_count} frames)")
        packer = manifest.packer()
        for segment in manifest.segments:
            segment_stop = segment.first_frame + segment.frame_count
            if segment_stop <= first or segment.first_frame >= stop:
                continue
            for index, data in self._segment_frames(segment):
                if first <= index < stop:
                    yield self._unpacked(packer, data, index)

    def rgb_frames(self) -> Iterator[np.ndarray]:
        """Every frame as rgb24, whatever the stored format (to compare with a video)."""
        packer = self.manifest.packer()
        for frame in self.frames():
            yield packer.to_rgb(frame)

    def _segment_frames(self, segment: SegmentInfo) -> Iterator[tuple[int, bytes]]:
        """(frame index, stored bytes) of each frame of a segment; its CRC-32 checked
        after the last one."""
        key = f"{self.prefix}/{segment.name}"
        sizes = segment.frame_sizes or [self.manifest.frame_bytes] * segment.frame_count
        if len(sizes) != segment.frame_count or segment.bytes != sum(sizes):
            raise RawEpisodeError(f"segment {key}: manifest size disagrees with its frames")
        crc = 0
        try:
            stream = self.storage.open_read(key)
        except KeyNotFound as exc:
            raise RawEpisodeError(f"segment {key} is missing") from exc
        with stream:
            for offset, size in enumerate(sizes):
                data = _read_exactly(stream, size)
                if len(data) != size:
                    raise RawEpisodeError(
                        f"segment {key} is truncated: frame {segment.first_frame + offset} "
                        f"has {len(data)} of {size} bytes"
                    )
                crc = zlib.crc32(data, crc)
                yield segment.first_frame + offset, data
            if stream.read(1):
                raise RawEpisodeError(f"segment {key} is longer than its manifest says")
        if crc != segment.crc32:
            raise RawEpisodeError(
                f"segment {key} is corrupt: CRC-32 {crc:#010x}, manifest says "
                f"{segment.crc32:#010x}"
            )

    def _unpacked(self, packer: FramePacker, data: bytes, index: int) -> np.ndarray:
        try:
            return packer.unpack(data)
        except ValueError as exc:
            raise RawEpisodeError(f"{self.prefix}: frame {index} does not unpack: {exc}") \
                from exc


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    chunks = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks) if len(chunks) != 1 else chunks[0]
