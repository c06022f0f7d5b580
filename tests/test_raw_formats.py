"""Compact raw frames: yuv420p and lossless compression round-trip exactly, MJPEG nearly,
old raw episodes still read, and a video from yuv420p raw equals the one from rgb24 raw."""

import json

import numpy as np
import pytest
from episodes import job_for, write_episode
from video_checks import check_video_against_raw, decode_rgb

from encoder_worker.encode import encode_job
from encoder_worker.jobs import Status
from encoder_worker.raw_episode import RawEpisodeError, RawEpisodeReader
from encoder_worker.raw_frames import FramePacker
from encoder_worker.raw_layout import raw_prefix
from encoder_worker.storage import open_storage
from recorder.capture.cameras.synthetic import SyntheticCamera
from recorder.settings import RecorderSettings

FORMATS = [("rgb24", "none"), ("rgb24", "zstd"), ("yuv420p", "none"), ("yuv420p", "zstd"),
           ("yuv420p", "ffv1")]


@pytest.fixture
def storage(tmp_path):
    return open_storage(tmp_path / "dataset")


def _prefix(episode: int = 0) -> str:
    return raw_prefix(recording=episode, camera="cam0")


@pytest.mark.parametrize(("pix_fmt", "compression"), FORMATS)
def test_raw_formats_round_trip_exactly(storage, pix_fmt, compression):
    manifest = write_episode(storage, frames=25, width=64, height=48, segment_frames=10,
                             pix_fmt=pix_fmt, compression=compression)
    assert (manifest.pix_fmt, manifest.compression) == (pix_fmt, compression)
    # The stored frame is the encoder's own conversion of the camera's frame, bit for bit.
    converter = FramePacker(width=64, height=48, pix_fmt=pix_fmt, input_pix_fmt="rgb24")
    source = SyntheticCamera("cam0", width=64, height=48, fps=30, seed=0)
    reader = RawEpisodeReader(storage, _prefix())
    frames = list(reader.frames())
    assert len(frames) == 25
    for index, frame in enumerate(frames):
        np.testing.assert_array_equal(frame, converter.convert(source.frame_at(index)))
    # A range starts and ends anywhere, also inside a segment.
    for stored, expected in zip(reader.frames(7, 11), frames[7:18], strict=True):
        np.testing.assert_array_equal(stored, expected)


def test_stored_bytes_per_frame_shrink(storage):
    sizes = {}
    for episode, (pix_fmt, compression) in enumerate(FORMATS):
        manifest = write_episode(storage, episode=episode, frames=10, width=64, height=48,
                                 pix_fmt=pix_fmt, compression=compression)
        sizes[pix_fmt, compression] = manifest.stored_bytes / manifest.frame_count
    assert sizes["rgb24", "none"] == 64 * 48 * 3
    assert sizes["yuv420p", "none"] == 64 * 48 * 3 / 2
    assert sizes["yuv420p", "zstd"] < sizes["yuv420p", "none"]
    assert sizes["yuv420p", "ffv1"] < sizes["yuv420p", "none"]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def test_mjpeg_raw_frames_come_back_nearly_the_same_and_smaller(storage):
    manifest = write_episode(storage, frames=25, width=160, height=120, segment_frames=10,
                             pix_fmt="yuv420p", compression="mjpeg")
    assert manifest.compression == "mjpeg"
    assert manifest.stored_bytes / manifest.frame_count < 160 * 120 * 3 / 2 / 2
    converter = FramePacker(width=160, height=120, pix_fmt="yuv420p", input_pix_fmt="rgb24")
    source = SyntheticCamera("cam0", width=160, height=120, fps=30, seed=0)
    reader = RawEpisodeReader(storage, _prefix())
    frames = list(reader.frames())
    assert len(frames) == 25
    for index, frame in enumerate(frames):
        assert frame.shape == (180, 160)
        assert _psnr(frame, converter.convert(source.frame_at(index))) > 40, index
    for stored, expected in zip(reader.frames(7, 11), frames[7:18], strict=True):
        np.testing.assert_array_equal(stored, expected)  # decoded alike from anywhere


@pytest.mark.integration
def test_a_video_from_mjpeg_raw_frames_has_every_frame(storage):
    manifest = write_episode(storage, frames=30, width=160, height=120, pix_fmt="yuv420p",
                             compression="mjpeg")
    result = encode_job(job_for(storage, manifest))
    assert result.status == Status.SUCCEEDED, result.error
    assert check_video_against_raw(storage.path(result.output_key), storage.url,
                                   _prefix()) == 30


@pytest.mark.parametrize("compression", ["zstd", "ffv1", "mjpeg"])
def test_a_corrupt_compressed_segment_is_detected(storage, compression):
    write_episode(storage, frames=20, width=64, height=48, segment_frames=10,
                  pix_fmt="yuv420p", compression=compression)
    segment = storage.path(_prefix() + "/segment_00001.raw")
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    with pytest.raises(RawEpisodeError, match=r"segment_00001\.raw"):
        list(RawEpisodeReader(storage, _prefix()).frames())


def test_a_range_outside_the_episode_is_refused(storage):
    write_episode(storage, frames=10, width=64, height=48)
    with pytest.raises(RawEpisodeError, match="not all in"):
        list(RawEpisodeReader(storage, _prefix()).frames(5, 6))


@pytest.mark.integration
def test_old_raw_episodes_still_read_and_encode(storage):
    manifest = write_episode(storage, frames=12, width=160, height=120, segment_frames=5)
    # A manifest as schema 1 wrote it: no compression, extradata or frame sizes.
    path = storage.path(_prefix() + "/manifest.json")
    old = json.loads(path.read_text())
    old["schema_version"] = 1
    for field in ("compression", "extradata"):
        del old[field]
    for segment in old["segments"]:
        del segment["frame_sizes"]
    path.write_text(json.dumps(old))
    result = encode_job(job_for(storage, manifest))
    assert result.status == Status.SUCCEEDED, result.error
    assert check_video_against_raw(storage.path(result.output_key), storage.url,
                                   _prefix()) == 12


@pytest.mark.integration
def test_same_frames_give_the_same_video_from_either_raw_format(tmp_path):
    """The proof that yuv420p raw loses nothing a yuv420p video keeps: the conversion on
    the robot is the one the worker would have made, so the videos are the same."""
    decoded = []
    for pix_fmt in ["rgb24", "yuv420p"]:
        store = open_storage(tmp_path / pix_fmt)
        manifest = write_episode(store, frames=30, width=160, height=120, pix_fmt=pix_fmt)
        result = encode_job(job_for(store, manifest))
        assert result.status == Status.SUCCEEDED, result.error
        decoded.append(decode_rgb(store.path(result.output_key))[0])
    assert len(decoded[0]) == len(decoded[1]) == 30
    for index, (from_rgb, from_yuv) in enumerate(zip(*decoded, strict=True)):
        assert np.array_equal(from_rgb, from_yuv), f"frame {index} differs"


def test_recorder_settings_choose_the_raw_format():
    assert RecorderSettings().raw_pix_fmt("yuv420p") == "yuv420p"  # the default video
    assert RecorderSettings(pix_fmt="yuv444p").raw_pix_fmt("yuv444p") == "rgb24"
    assert RecorderSettings().raw_pix_fmt_for(641, 480, "yuv420p") == "rgb24"
    with pytest.raises(ValueError, match="ffv1 stores yuv420p"):
        RecorderSettings(raw_format="rgb24", raw_compression="ffv1")
    with pytest.raises(ValueError, match="mjpeg stores yuv420p"):
        RecorderSettings(raw_format="rgb24", raw_compression="mjpeg")
