"""Session logic that needs no farm: episode numbering, committing every camera, a
camera failing mid-episode."""

import threading
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest
from video_checks import frame_index, make_video

from encoder_worker.raw_episode import Manifest, RawEpisodeReader, RawEpisodeWriter
from encoder_worker.raw_layout import raw_prefix
from encoder_worker.raw_sinks import DirectSink
from encoder_worker.storage import open_storage
from recorder.capture.cameras import CameraError
from recorder.capture.cameras.video import VideoFileCamera
from recorder.capture.raw_writer import CameraWriter, WriterFailed, WriterThreads
from recorder.dataset.writer import finish_writers, next_recording
from recorder.session import RecordingSession
from recorder.settings import RecorderSettings


def test_recording_numbers_continue_after_raw_data_and_videos(tmp_path):
    raw = open_storage(tmp_path / "raw")
    videos = open_storage(tmp_path / "videos")
    assert next_recording(raw, videos) == 0
    raw.put_bytes("raw/episode_000002/cam0/manifest.json", b"{}")
    assert next_recording(raw, videos) == 3
    # Raw data of recording 7 was deleted after encoding; its video still holds the number.
    videos.put_bytes("videos/observation.images.cam0/chunk-000/file-007.mp4", b"x")
    assert next_recording(raw, videos) == 8
    # So do v2.1 videos, and files in the upload spool.
    videos.put_bytes("videos/chunk-000/observation.images.cam0/episode_000009.mp4", b"x")
    assert next_recording(raw, videos) == 10
    assert next_recording(raw, videos, spooled=["raw/episode_000012/cam0/segment_00000.raw"]) \
        == 13


def test_an_episodes_writers_start_on_threads_started_before_it(tmp_path):
    """The record loop starts an episode's writers in its first slot: no thread starts
    there, and no folder is made (both cost it milliseconds on a busy host)."""
    storage = open_storage(tmp_path / "dataset")
    threads = WriterThreads(4)
    try:
        before = threading.active_count()
        for recording in range(3):  # more episodes than started threads: they are reused
            sinks = [DirectSink(storage, raw_prefix(recording=recording, camera=c))
                     for c in ("cam0", "cam1")]
            assert not any((tmp_path / "dataset" / sink.prefix).exists() for sink in sinks)
            writers = [CameraWriter(RawEpisodeWriter(sink, episode=recording,
                                                     camera=sink.prefix.rsplit("/", 1)[1],
                                                     width=8, height=8, fps=30,
                                                     segment_frames=4),
                                    queue_frames=100, threads=threads) for sink in sinks]
            assert threading.active_count() == before, "no thread started for a writer"
            for index in range(6):
                for writer in writers:
                    writer.put(np.full((8, 8, 3), index, np.uint8), index / 30, period_s=1.0)
            finish_writers(writers, interrupted=False)
        for recording in range(3):
            for camera in ("cam0", "cam1"):
                prefix = raw_prefix(recording=recording, camera=camera)
                reader = RawEpisodeReader(storage, prefix)
                assert [int(frame[0, 0, 0]) for frame in reader.frames()] == list(range(6))
    finally:
        threads.shutdown()


class FailingSink(DirectSink):
    """A disk that fails when the second segment is committed."""

    def commit_segment(self, name, file):
        if name != "segment_00000.raw":
            file.close()
            raise OSError(28, "No space left on device")
        super().commit_segment(name, file)


def test_one_failing_camera_does_not_lose_the_others(tmp_path):
    storage = open_storage(tmp_path / "dataset")
    sinks = {"cam0": FailingSink(storage, raw_prefix(recording=0, camera="cam0")),
             "cam1": DirectSink(storage, raw_prefix(recording=0, camera="cam1"))}
    writers = [CameraWriter(RawEpisodeWriter(sinks[c], episode=0, camera=c, width=8,
                                             height=8, fps=30, segment_frames=4),
                            queue_frames=100) for c in ("cam0", "cam1")]
    for index in range(10):
        for writer in writers:
            writer.put(np.full((8, 8, 3), index, np.uint8), index / 30, period_s=1.0)
    with pytest.raises(WriterFailed, match="No space left on device"):
        finish_writers(writers, interrupted=False)
    cam1 = Manifest.model_validate_json(
        storage.get_bytes("raw/episode_000000/cam1/manifest.json"))
    assert cam1.frame_count == 10 and not cam1.interrupted
    # cam0 keeps the segment stored before the failure, marked interrupted.
    cam0 = Manifest.model_validate_json(
        storage.get_bytes("raw/episode_000000/cam0/manifest.json"))
    assert cam0.interrupted
    assert [s.name for s in cam0.segments] == ["segment_00000.raw"]


@pytest.mark.integration
def test_one_camera_on_a_full_disk_does_not_lose_the_others(
        tmp_path: Path, tmpfs: Callable[[Path, str], Path],
        caplog: pytest.LogCaptureFixture) -> None:
    storage = open_storage(tmp_path / "dataset")
    # cam0's folder is a disk of two pages: two segments fit, the third does not. Its
    # frames (768 bytes) wait in the file's buffer until the segment's commit, so the
    # disk is found full at the episode's commit, as when it fills up at an episode end.
    cam0 = tmpfs(tmp_path / "dataset" / raw_prefix(recording=0, camera="cam0"), "8k")
    writers = [CameraWriter(RawEpisodeWriter(DirectSink(storage, raw_prefix(recording=0,
                                                                            camera=c)),
                                             episode=0, camera=c, width=16, height=16, fps=30,
                                             segment_frames=4),
                            queue_frames=100) for c in ("cam0", "cam1")]
    for index in range(10):
        for writer in writers:
            writer.put(np.full((16, 16, 3), index, np.uint8), index / 30, period_s=1.0)
    with pytest.raises(WriterFailed, match="No space left on device; the disk is full"):
        finish_writers(writers, interrupted=False)
    cam1 = Manifest.model_validate_json(
        storage.get_bytes("raw/episode_000000/cam1/manifest.json"))
    assert cam1.frame_count == 10 and not cam1.interrupted
    # cam0 keeps the segments stored before; no room for a manifest, so never encoded.
    assert sorted(p.name for p in cam0.glob("segment_*.raw")) == [
        "segment_00000.raw", "segment_00001.raw"]
    assert not storage.exists("raw/episode_000000/cam0/manifest.json")
    assert "the segments stored before the failure stay on disk without a manifest" \
        in caplog.text


def test_a_camera_failing_mid_episode_keeps_the_frames_recorded_before(tmp_path):
    class CorruptAtFrameSix(VideoFileCamera):
        def _decoded_frames(self):
            for index, frame in enumerate(super()._decoded_frames()):
                if index == 6:
                    raise av.InvalidDataError(1094995529, "Invalid data found")
                yield frame

    camera = CorruptAtFrameSix(make_video(tmp_path / "v.mp4", frames=20, fps=10), name="cam0")
    settings = RecorderSettings(episodes=1, episode_time=2, cameras=1, width=160, height=120,
                                fps=10, output_dir=tmp_path / "out")
    try:
        with pytest.raises(CameraError, match=r"camera cam0: cannot decode .*v\.mp4"):
            RecordingSession(settings, [camera]).run()
    finally:
        camera.close()
    reader = RawEpisodeReader(open_storage(settings.raw_storage_url),
                              raw_prefix(recording=0, camera="cam0"))
    assert reader.manifest.interrupted
    # Every slot until the read that failed was kept: the file's good frames 0-5, in
    # order (a late slot may skip one), ending with the last good one.
    kept = [frame_index(frame) for frame in reader.rgb_frames()]
    assert len(kept) == reader.manifest.frame_count
    assert kept == sorted(kept) and kept[0] == 0 and kept[-1] == 5, kept
