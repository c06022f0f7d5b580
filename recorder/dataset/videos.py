"""Reading the farm's published videos: local copies, frame count and real duration."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av

from encoder_worker.storage import Storage


@dataclass(frozen=True)
class VideoProbe:
    frames: int
    duration_s: float  # what LeRobot's get_video_duration_in_s reads: the stream's duration


@contextlib.contextmanager
def local_video(storage: Storage, key: str, *, scratch: Path | None = None) -> Iterator[Path]:
    """A local path to the video at key: in place for a local folder, else a download."""
    path = storage.local_path(key)
    if path is not None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="video-", dir=scratch) as tmp:
        path = Path(tmp) / Path(key).name
        storage.download_file(key, path)
        yield path


def probe_video(path: Path) -> VideoProbe:
    """Frame count (from the container's index) and duration of the first video stream."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = stream.frames
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        else:
            duration = float(frames / stream.average_rate) if stream.average_rate else 0.0
    return VideoProbe(frames=frames, duration_s=duration)
