"""Video file sources replayed as cameras, on a clock the test controls."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from recorder.cameras import CameraError
from recorder.cameras.video import LiveCamera, VideoFileCamera, open_camera

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


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_file_replays_at_its_own_rate_and_loops(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.mp4", frames=5, fps=8)
    clock = FakeClock()
    camera = VideoFileCamera(video, name="cam0", clock=clock)
    seen = []
    # Read at 16 Hz (binary fractions: exact times): each 8 fps frame twice, then the loop.
    for step in range(15):
        clock.now = 100.0 + step / 16
        seen.append(frame_index(camera.read()))
    camera.close()
    assert seen == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 0, 0, 1, 1, 2]


def test_file_skips_frames_that_fell_due_while_not_read(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.mp4", frames=10, fps=10)
    clock = FakeClock()
    camera = VideoFileCamera(video, name="cam0", clock=clock)
    first = frame_index(camera.read())
    clock.now += 0.62
    later = frame_index(camera.read())
    camera.close()
    assert (first, later) == (0, 6)


def test_size_is_native_or_requested(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.mp4", frames=2, width=176, height=144)
    native = open_camera(str(video), name="a")
    assert isinstance(native, VideoFileCamera)
    assert (native.width, native.height, native.read().shape) == (176, 144, (144, 176, 3))
    native.close()
    scaled = open_camera(f"file://{video}", name="b", width=64, height=48)
    assert scaled.read().shape == (48, 64, 3)
    assert scaled.read().dtype == np.uint8
    scaled.close()


def test_missing_and_unreadable_sources_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(CameraError, match=r"cam0: video file .*absent.mp4 does not exist"):
        open_camera(str(tmp_path / "absent.mp4"), name="cam0")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video")
    with pytest.raises(CameraError, match="cannot open"):
        open_camera(str(junk), name="cam0")
    with pytest.raises(CameraError, match="device /dev/video-none does not exist"):
        open_camera("/dev/video-none", name="cam0")


def test_stream_urls_are_live_sources(tmp_path: Path) -> None:
    # Nothing listens there: a live source fails at open, before any recording.
    with pytest.raises(CameraError, match="cannot open"):
        LiveCamera("tcp://127.0.0.1:9/", name="cam0")
