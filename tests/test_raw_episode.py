import os
import stat

import numpy as np
import pytest
from episodes import write_episode

from encoder_worker.raw_episode import (
    ManifestMissing,
    RawEpisodeError,
    RawEpisodeReader,
    RawEpisodeWriter,
)
from encoder_worker.raw_layout import raw_prefix
from encoder_worker.raw_sinks import DirectSink
from encoder_worker.storage import open_storage
from encoder_worker.storage.local import FILE_MODE, LocalStorage
from recorder.capture.cameras.synthetic import SyntheticCamera


@pytest.fixture
def storage(tmp_path):
    return open_storage(tmp_path / "dataset")


def test_frames_read_back_exactly_in_order(storage):
    manifest = write_episode(storage, frames=25, segment_frames=10)
    assert [s.frame_count for s in manifest.segments] == [10, 10, 5]
    assert [s.first_frame for s in manifest.segments] == [0, 10, 20]
    source = SyntheticCamera("cam0", width=320, height=240, fps=30, seed=0)
    frames = list(RawEpisodeReader(storage, raw_prefix(recording=0, camera="cam0")).frames())
    assert len(frames) == 25
    for index, frame in enumerate(frames):
        np.testing.assert_array_equal(frame, source.frame_at(index))


def test_manifest_is_written_last_and_lists_timestamps(storage):
    prefix = raw_prefix(recording=3, camera="wrist")
    writer = RawEpisodeWriter(DirectSink(storage, prefix), episode=3, camera="wrist",
                              width=32, height=16, fps=30, segment_frames=2)
    for index in range(3):
        writer.write(np.full((16, 32, 3), index, np.uint8), index / 30)
        assert not storage.exists(f"{prefix}/manifest.json")
    manifest = writer.close()
    assert storage.exists(f"{prefix}/manifest.json")
    assert manifest.frame_count == 3 and len(manifest.timestamps) == 3
    assert sorted(storage.list_keys(prefix)) == [
        f"{prefix}/manifest.json", f"{prefix}/segment_00000.raw", f"{prefix}/segment_00001.raw"]


def test_corrupt_segment_is_detected(storage):
    write_episode(storage, frames=20, segment_frames=10)
    segment = storage.path(raw_prefix(recording=0, camera="cam0") + "/segment_00001.raw")
    data = bytearray(segment.read_bytes())
    data[1234] ^= 0xFF
    segment.write_bytes(bytes(data))
    reader = RawEpisodeReader(storage, raw_prefix(recording=0, camera="cam0"))
    with pytest.raises(RawEpisodeError, match=r"segment_00001\.raw is corrupt"):
        list(reader.frames())


def test_truncated_and_missing_segments_are_detected(storage):
    write_episode(storage, frames=20, segment_frames=10)
    prefix = raw_prefix(recording=0, camera="cam0")
    segment = storage.path(prefix + "/segment_00000.raw")
    segment.write_bytes(segment.read_bytes()[:-100])
    with pytest.raises(RawEpisodeError, match="truncated"):
        list(RawEpisodeReader(storage, prefix).frames())
    segment.unlink()
    with pytest.raises(RawEpisodeError, match="missing"):
        list(RawEpisodeReader(storage, prefix).frames())


def test_uncommitted_episode_has_no_manifest(storage):
    with pytest.raises(ManifestMissing, match="never committed"):
        RawEpisodeReader(storage, raw_prefix(recording=9, camera="cam0"))


def test_wrong_frame_shape_is_refused(storage):
    prefix = raw_prefix(recording=0, camera="cam0")
    writer = RawEpisodeWriter(DirectSink(storage, prefix), episode=0, camera="cam0",
                              width=32, height=16, fps=30)
    with pytest.raises(ValueError, match="expected"):
        writer.write(np.zeros((16, 31, 3), np.uint8), 0.0)


def test_storage_keys_cannot_escape_the_root(storage):
    with pytest.raises(ValueError, match="outside"):
        storage.put_bytes("../escape.txt", b"x")


def test_stored_files_get_the_usual_permissions(tmp_path):
    # put_bytes writes through a temp file (mkstemp: 0600); a dataset's metadata and the
    # manifests a container worker of another uid reads must get what open() would give.
    storage = LocalStorage(tmp_path)
    storage.put_bytes("meta/info.json", b"{}")
    mode = stat.S_IMODE((tmp_path / "meta/info.json").stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == FILE_MODE == 0o666 & ~umask
