"""Decode what was encoded and compare it with what was recorded."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from encoder_worker.raw_episode import RawEpisodeReader
from encoder_worker.storage import open_storage


def decode_rgb(video: Path) -> tuple[list[np.ndarray], list[int]]:
    """All frames of a video as RGB arrays, with their pts."""
    frames, pts = [], []
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            pts.append(frame.pts)
    return frames, pts


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def check_video_against_raw(video: Path, raw_storage: str, prefix: str, *,
                            min_psnr_db: float = 30.0) -> int:
    """Assert the video has the raw episode's frames, in order, above min_psnr_db each."""
    reader = RawEpisodeReader(open_storage(raw_storage), prefix)
    decoded, pts = decode_rgb(video)
    assert len(decoded) == reader.manifest.frame_count, (video, len(decoded))
    assert pts == sorted(pts) and len(set(pts)) == len(pts), "pts must increase"
    raw = list(reader.rgb_frames())
    for index, (got, want) in enumerate(zip(decoded, raw, strict=True)):
        value = psnr(got, want)
        assert value > min_psnr_db, f"frame {index}: PSNR {value:.1f} dB"
        # In order: each decoded frame is closer to its own raw frame than to a neighbour's.
        if 0 < index < len(raw) - 1:
            assert value >= psnr(got, raw[index + 1]), f"frame {index} out of order"
    return len(decoded)


# -- videos to replay as cameras --------------------------------------------------------

LEVEL_STEP = 12


def make_video(path: Path, *, frames: int, fps: int = 10, width: int = 160,
               height: int = 120) -> Path:
    """A video whose frame i is a flat grey of level i * LEVEL_STEP."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "10"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(
                np.full((height, width, 3), i * LEVEL_STEP, np.uint8), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def frame_index(frame: np.ndarray) -> int:
    return round(float(frame.mean()) / LEVEL_STEP)
