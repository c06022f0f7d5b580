"""Real-content test frames: a real photograph, panned and zoomed like a moving camera,
with sensor noise, at 640x480. No robot recording ships with this repository; this stands
in for one where compressibility matters (synthetic scenes compress far better).

    python benchmarks/real_content.py clip.mp4 --seconds 10   # an H.264 file to replay
    python benchmarks/real_content.py clip_1080p.mp4 --seconds 12 --width 1920 --height 1080
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from matplotlib import cbook


def photo() -> np.ndarray:
    """Grace Hopper's portrait from matplotlib's sample data (512x600 RGB)."""
    path = str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    with av.open(path, "r") as container:
        frame = next(container.decode(video=0))
    return frame.to_ndarray(format="rgb24")


def frames(count: int, *, width: int = 640, height: int = 480, seed: int = 0,
           noise: float = 2.0) -> Iterator[np.ndarray]:
    """count frames of width x height: a window drifting over the enlarged photo, with
    Gaussian noise of sigma noise levels (a camera sensor's)."""
    rng = np.random.default_rng(seed)
    source = av.VideoFrame.from_ndarray(photo(), format="rgb24")
    big = source.reformat(width=width * 2, height=height * 2).to_ndarray()
    span_x, span_y = big.shape[1] - width, big.shape[0] - height
    for index in range(count):
        phase = index / max(1, count - 1)
        x = int(span_x * (0.5 + 0.5 * np.sin(2 * np.pi * phase)))
        y = int(span_y * phase)
        window = big[y:y + height, x:x + width].astype(np.int16)
        window += rng.normal(0, noise, window.shape).astype(np.int16)
        yield np.clip(window, 0, 255).astype(np.uint8)


def write_clip(path: Path, *, seconds: float, fps: int = 30, width: int = 640,
               height: int = 480) -> None:
    """An H.264 file of these frames (crf 18: close to what a camera stream carries)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "18"})
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.time_base = Fraction(1, fps)
        for index, array in enumerate(frames(int(seconds * fps), width=width, height=height)):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    args = parser.parse_args()
    write_clip(args.path, seconds=args.seconds, fps=args.fps, width=args.width,
               height=args.height)
    print(f"wrote {args.path}")


if __name__ == "__main__":
    main()
