"""Video file sources replayed as cameras, on a clock the test controls."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import wait_for
from video_checks import LEVEL_STEP, frame_index, make_video

from recorder.capture.cameras import CameraError
from recorder.capture.cameras.video import LiveCamera, VideoFileCamera, open_camera


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def decoded_ahead(camera: VideoFileCamera) -> VideoFileCamera:
    """The camera once its thread has filled the read-ahead: a read then never waits for
    a decode, however busy the host running the tests."""
    wait_for(camera._ahead.full, timeout_s=10, what=f"camera {camera.name}'s read-ahead")
    return camera


@pytest.mark.integration
def test_file_replays_at_its_own_rate_and_loops(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.mp4", frames=5, fps=8)
    clock = FakeClock()
    camera = VideoFileCamera(video, name="cam0", clock=clock)
    seen = []
    # Read at 16 Hz (binary fractions: exact times): each 8 fps frame twice, then the loop.
    for step in range(15):
        clock.now = 100.0 + step / 16
        seen.append(frame_index(decoded_ahead(camera).read()))
    camera.close()
    assert seen == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 0, 0, 1, 1, 2]


@pytest.mark.integration
def test_file_skips_frames_that_fell_due_while_not_read(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.mp4", frames=10, fps=10)
    clock = FakeClock()
    camera = VideoFileCamera(video, name="cam0", clock=clock, read_ahead=8)
    first = frame_index(camera.read())
    clock.now += 0.62
    later = frame_index(decoded_ahead(camera).read())
    camera.close()
    assert (first, later) == (0, 6)


@pytest.mark.integration
def test_a_loop_away_longer_than_the_read_ahead_finds_the_replay_paused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    video = make_video(tmp_path / "v.mp4", frames=20, fps=16)
    clock = FakeClock()
    camera = VideoFileCamera(video, name="cam0", clock=clock, read_ahead=4)
    seen = [frame_index(camera.read())]
    clock.now += 22.0  # frame 352 (12 of the 20-frame file) is due; 1-5 are decoded
    seen.append(frame_index(decoded_ahead(camera).read()))
    for _ in range(3):  # and it plays on from there
        clock.now += 1 / 16
        seen.append(frame_index(decoded_ahead(camera).read()))
    camera.close()
    assert seen[0] == 0 and 4 <= seen[1] <= 7, seen  # the read-ahead, taken at once
    assert seen[2:] == [seen[1] + 1, seen[1] + 2, seen[1] + 3]
    assert "cannot be decoded in real time" not in caplog.text


@pytest.mark.integration
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


@pytest.mark.integration
def test_a_file_decoded_slower_than_real_time_falls_behind_instead_of_spiralling(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    video = make_video(tmp_path / "v.mp4", frames=20, fps=20)

    class SlowToDecode(VideoFileCamera):
        def _next_frame(self) -> tuple[float, av.VideoFrame]:
            time.sleep(0.15)  # 3 frame periods per frame: this host cannot keep up
            return super()._next_frame()

    clock = FakeClock()
    camera = SlowToDecode(video, name="cam0", clock=clock, read_ahead=2)
    seen = [frame_index(camera.read())]
    for _ in range(4):
        clock.now += 10.5  # the loop asks for the frame due 10.5 s later each time
        seen.append(frame_index(camera.read()))
    camera.close()
    # The replay goes on from where decoding got (the read-ahead, the frame the thread
    # holds and one more), instead of trying to reach frame 210 (10 in the 20-frame
    # file), 420, ... of the loop.
    steps = [later - earlier for earlier, later in itertools.pairwise(seen)]
    assert all(0 <= step <= 4 for step in steps), seen
    assert "cannot be decoded in real time here; its replay falls behind" in caplog.text


@pytest.mark.integration
def test_frame_times_that_do_not_increase_are_replaced_by_index(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    video = make_video(tmp_path / "v.mp4", frames=4, fps=10)
    # A file whose frames all carry the same time, as some broken MP4s do.
    frames = []
    for i in range(4):
        frame = av.VideoFrame.from_ndarray(
            np.full((120, 160, 3), i * LEVEL_STEP, np.uint8), format="rgb24")
        frame.pts, frame.time_base = 7, Fraction(1, 10)
        frames.append(frame)

    class BrokenTimes(VideoFileCamera):
        def _decoded_frames(self) -> Iterator[av.VideoFrame]:
            return iter(frames)

    clock = FakeClock()
    camera = BrokenTimes(video, name="cam0", clock=clock)
    seen = []
    for step in range(4):
        clock.now = 100.0 + step / 10 + (0.01 if step else 0)  # the first read is the origin
        seen.append(frame_index(camera.read()))
    camera.close()
    assert seen == [0, 1, 2, 3]
    assert "do not increase (frame 1); timing its frames by their index at 10 fps" \
        in caplog.text


@pytest.mark.integration
def test_a_file_that_fails_to_decode_fails_the_read_that_reaches_it(tmp_path: Path) -> None:
    video = make_video(tmp_path / "v.mp4", frames=4, fps=10)

    class CorruptAtFrameTwo(VideoFileCamera):
        def _decoded_frames(self) -> Iterator[av.VideoFrame]:
            for index, frame in enumerate(super()._decoded_frames()):
                if index == 2:
                    raise av.InvalidDataError(1094995529, "Invalid data found")
                yield frame

    clock = FakeClock()
    camera = CorruptAtFrameTwo(video, name="cam0", clock=clock)
    assert frame_index(camera.read()) == 0
    clock.now += 0.11
    assert frame_index(camera.read()) == 1
    clock.now += 0.1
    for _ in range(2):  # and every read after it, until the recording stops
        with pytest.raises(CameraError, match=r"cam0: cannot decode .*v\.mp4"):
            camera.read()
    camera.close()
