"""The one encode function, called directly: real PyAV encodes decoded back."""

import threading
from fractions import Fraction

import av
import numpy as np
import pytest
from episodes import job_for, write_episode
from video_checks import check_video_against_raw

from encoder_worker.encode import (
    EncodeError,
    encode_job,
    read_ahead,
    verify_video,
    worker_codec_options,
)
from encoder_worker.jobs import EncoderOptions, FailureReason, Status
from encoder_worker.ledger import LeaseLost
from encoder_worker.priority import demote_realtime_threads
from encoder_worker.raw_episode import RawEpisodeError
from encoder_worker.raw_layout import raw_prefix
from encoder_worker.storage import open_storage
from encoder_worker.verify import PacketVerifier, VerifyError, check_file
from recorder.dataset.videos import probe_video


@pytest.fixture
def storage(tmp_path):
    return open_storage(tmp_path / "dataset")


@pytest.mark.integration
@pytest.mark.parametrize("codec", ["libsvtav1", "libx264", "libx265"])
def test_encodes_verifies_and_publishes(storage, codec):
    manifest = write_episode(storage, frames=30)
    options = EncoderOptions(codec=codec) if codec != "libsvtav1" else EncoderOptions()
    result = encode_job(job_for(storage, manifest, options=options))
    assert result.status is Status.SUCCEEDED, result.error
    assert result.frames == 30
    video = storage.path(result.output_key)
    assert result.output_key == (
        "videos/observation.images.cam0/chunk-000/file-000.mp4")
    assert result.bytes == video.stat().st_size > 0
    assert result.timings.encode_s > 0 and result.timings.verify_s > 0
    assert result.timings.total_s >= result.timings.encode_s
    # The verified frame count and duration: what reading the published file gives.
    probe = probe_video(video)
    assert (result.frames, result.duration_s) == (probe.frames, probe.duration_s)
    assert result.duration_s == pytest.approx(1.0, abs=0.05) and result.reason is None
    check_video_against_raw(video, storage.url, raw_prefix(recording=0, camera="cam0"))
    # Nothing but the video is left beside it (temp files were renamed or removed).
    assert [p.name for p in video.parent.iterdir()] == [video.name]


def test_default_options_equal_lerobots():
    options = EncoderOptions()
    assert options.codec == "libsvtav1"
    assert options.codec_options() == {"g": "2", "crf": "30", "preset": "12"}
    assert options.pix_fmt == "yuv420p"


def test_the_farm_runs_svt_at_level_3_on_two_cpus_unless_told_a_level():
    options = EncoderOptions()
    assert worker_codec_options(options, cpus=2) == {**options.codec_options(),
                                                      "svtav1-params": "lp=3"}
    # Elsewhere SVT-AV1 chooses: no gain was measured on other CPU counts.
    assert worker_codec_options(options, cpus=1) == options.codec_options()
    assert worker_codec_options(options, cpus=16) == options.codec_options()
    # A level given (a user's, or lp=1 beside a capture) wins; other params are kept.
    given = EncoderOptions(extra={"svtav1-params": "tune=0:lp=1"})
    assert worker_codec_options(given, cpus=2)["svtav1-params"] == "tune=0:lp=1"
    lerobot = EncoderOptions(extra={"svtav1-params": "fast-decode=1"})
    assert worker_codec_options(lerobot, cpus=2)["svtav1-params"] == "fast-decode=1:lp=3"
    assert lerobot.with_svt_level(1).extra["svtav1-params"] == "fast-decode=1:lp=1"
    assert "svtav1-params" not in worker_codec_options(EncoderOptions(codec="libx264"), cpus=2)


@pytest.mark.integration
def test_svt_levels_of_parallelism_give_the_same_bitstream(tmp_path):
    """The worker's level changes the encode's speed, never the video: the same packets."""
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(30)]

    def packets(codec_options: dict[str, str]) -> list[bytes]:
        path = tmp_path / "level.mp4"
        with av.open(str(path), "w", format="mp4") as container:
            stream = container.add_stream("libsvtav1", rate=30, options=codec_options)
            stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
            stream.codec_context.open()
            # As root SVT-AV1 makes this thread real-time too; the tests after must not be.
            demote_realtime_threads()
            for index, array in enumerate([*frames, None]):
                frame = None if array is None else av.VideoFrame.from_ndarray(array, "rgb24")
                if frame is not None:
                    frame.pts = index
                container.mux(stream.encode(frame))
        with av.open(str(path)) as container:
            return [bytes(p) for p in container.demux(video=0) if p.size]

    options = EncoderOptions()
    fewest = packets(options.with_svt_level(1).codec_options())
    assert len(fewest) == len(frames)
    for level in (2, 3):  # SVT's own on 2 CPUs, and the farm's there
        assert packets(options.with_svt_level(level).codec_options()) == fewest, level
    assert packets(worker_codec_options(options, cpus=2)) == fewest


@pytest.mark.integration
def test_corrupt_segment_fails_with_reason_and_publishes_nothing(storage):
    manifest = write_episode(storage, frames=20)
    segment = storage.path(raw_prefix(recording=0, camera="cam0") + "/segment_00001.raw")
    data = bytearray(segment.read_bytes())
    data[500] ^= 0x55
    segment.write_bytes(bytes(data))
    job = job_for(storage, manifest, options=EncoderOptions(codec="libx264"))
    result = encode_job(job)
    assert result.status is Status.FAILED
    assert "segment_00001.raw is corrupt" in (result.error or "")
    assert result.reason is FailureReason.RAW_EPISODE and result.duration_s is None
    assert not storage.exists(job.output_key)
    # The recorded frames are still there.
    assert storage.exists(raw_prefix(recording=0, camera="cam0") + "/segment_00001.raw")


def test_missing_raw_episode_fails_with_reason(storage):
    manifest = write_episode(storage, frames=5)
    job = job_for(storage, manifest).model_copy(update={"raw_prefix": "raw/episode_000099/x"})
    result = encode_job(job)
    assert result.status is Status.FAILED
    assert "never committed" in (result.error or "")
    assert result.reason is FailureReason.RAW_EPISODE


@pytest.mark.integration
def test_second_copy_of_a_job_finds_it_done(storage):
    manifest = write_episode(storage, frames=10)
    job = job_for(storage, manifest, options=EncoderOptions(codec="libx264"))
    first = encode_job(job)
    second = encode_job(job)
    assert first.status is Status.SUCCEEDED
    assert second.status is Status.ALREADY_DONE
    assert second.frames == 10 and second.bytes == first.bytes
    # Not verified by this copy: completion probes the video itself.
    assert first.duration_s is not None and second.duration_s is None


def test_interrupted_episode_is_kept_but_not_encoded(storage):
    manifest = write_episode(storage, frames=10, interrupted=True)
    result = encode_job(job_for(storage, manifest))
    assert result.status is Status.FAILED
    assert "interrupted" in (result.error or "")
    assert result.reason is FailureReason.RAW_EPISODE


def test_unknown_codec_fails_with_reason(storage):
    manifest = write_episode(storage, frames=5)
    result = encode_job(job_for(storage, manifest, options=EncoderOptions(codec="nosuchcodec")))
    assert result.status is Status.FAILED
    assert "nosuchcodec" in (result.error or "")
    assert result.reason is FailureReason.ENCODE


@pytest.mark.integration
def test_a_video_of_other_frames_is_never_overwritten(storage):
    manifest = write_episode(storage, frames=10)
    job = job_for(storage, manifest, options=EncoderOptions(codec="libx264"))
    assert encode_job(job).status is Status.SUCCEEDED
    video = storage.path(job.output_key)
    before = video.read_bytes()
    # The same episode number recorded again (other frames) into the same dataset.
    other = write_episode(storage, frames=12)
    result = encode_job(job_for(storage, other, job_id="other",
                                options=EncoderOptions(codec="libx264")))
    assert result.status is Status.FAILED
    assert "already holds a video of other raw frames" in (result.error or "")
    assert result.reason is FailureReason.OUTPUT_TAKEN
    assert video.read_bytes() == before


@pytest.mark.integration
def test_publish_is_skipped_when_the_caller_says_so(storage):
    manifest = write_episode(storage, frames=5)
    job = job_for(storage, manifest, options=EncoderOptions(codec="libx264"))

    def lease_gone() -> None:
        raise LeaseLost("lapsed")

    with pytest.raises(LeaseLost):
        encode_job(job, before_publish=lease_gone)
    assert not storage.exists(job.output_key)


def test_read_ahead_gives_every_item_in_order_then_the_error():
    def items():
        yield from range(5)
        raise RawEpisodeError("segment 2 is corrupt")

    got = []
    with read_ahead(items(), 2) as ahead, pytest.raises(RawEpisodeError, match="corrupt"):
        for item in ahead:
            got.append(item)
    assert got == [0, 1, 2, 3, 4]


def test_leaving_read_ahead_early_stops_its_thread():
    def endless():
        count = 0
        while True:
            yield count
            count += 1

    with read_ahead(endless(), 3) as ahead:
        assert [next(ahead) for _ in range(4)] == [0, 1, 2, 3]
    assert not [t for t in threading.enumerate() if t.name == "read-ahead"]


@pytest.mark.integration
def test_verify_refuses_a_video_whose_frames_are_not_one_frame_apart(storage, tmp_path):
    manifest = write_episode(storage, frames=6, width=64, height=48)
    video = tmp_path / "gappy.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = Fraction(1, 30)
        for index in range(6):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            frame.pts = index if index < 3 else index + 1  # a frame missing after the third
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(EncodeError, match="frame 3 has pts"):
        verify_video(video, manifest)
    # The check of a fresh encode's file reads its packets, and finds the same gap.
    with pytest.raises(VerifyError, match="frame 3 is at pts"):
        check_file(video, frames=6, fps=30, size=(64, 48))


@pytest.mark.integration
def test_the_encoders_packets_are_decoded_as_they_come(tmp_path):
    encoder = av.CodecContext.create("libsvtav1", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 64, 48, "yuv420p"
    encoder.time_base, encoder.framerate = Fraction(1, 30), Fraction(30)
    encoder.open()
    demote_realtime_threads()  # as root SVT-AV1 made this thread real-time
    verifier = PacketVerifier(encoder, width=64, height=48)
    for index in range(10):
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), index * 20, np.uint8),
                                           format="rgb24").reformat(format="yuv420p")
        frame.pts = index
        verifier.add(encoder.encode(frame))
    verifier.add(encoder.encode(None))
    with pytest.raises(VerifyError, match="decode to 10 frames, 11 were encoded"):
        verifier.check(11)
