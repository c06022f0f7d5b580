"""Episodes encoded while they are recorded: windows of frames sent as their segments are
stored, the rest sent when the episode is saved, joined into one verified video; windows
of a cleared episode discarded. Real redis-server, worker processes and encodes."""

from __future__ import annotations

import pytest
from conftest import wait_for
from episodes import job_for, video_key
from recordings import CAMERAS, features, record_episodes
from video_checks import check_video_against_raw

from encoder_worker.broker import redis_client
from encoder_worker.encode import SOURCE_PREFIX, video_source
from encoder_worker.jobs import (
    PARTS_ROOT,
    EncodeJob,
    FailureReason,
    PartSpec,
    Status,
    window_ranges,
)
from encoder_worker.ledger import JobLedger
from encoder_worker.parts import encode_part_and_join, part_key, video_id
from encoder_worker.raw_episode import Manifest, RawEpisodeReader, RawEpisodeWriter
from encoder_worker.raw_layout import raw_prefix
from encoder_worker.raw_sinks import DirectSink
from encoder_worker.storage.local import LocalStorage
from recorder.capture.cameras.synthetic import SyntheticCamera, synthetic_cameras
from recorder.capture.robot import SyntheticRobot
from recorder.dataset import FarmDataset
from recorder.farm.client import EncodingFarmClient

FPS = 30
WINDOW_S = 0.5  # 15 frames: 3 segments of 5


def test_windows_tile_an_episode_and_the_last_part_is_never_empty():
    assert window_ranges(45, 15) == [(0, 15), (15, 15), (30, 15)]
    assert window_ranges(46, 15) == [(0, 15), (15, 15), (30, 15), (45, 1)]
    assert window_ranges(10, 15) == [(0, 10)]
    with pytest.raises(ValueError, match="window"):
        PartSpec(parent_id="p", index=0, first_frame=0, frame_count=1)  # no count, no window


@pytest.mark.parametrize("frames", [45, 46])
def test_a_writer_hands_over_each_window_once_the_frame_after_it_is_written(tmp_path, frames):
    storage = LocalStorage(tmp_path)
    prefix = raw_prefix(recording=0, camera="cam0")
    windows: list[tuple[Manifest, int]] = []  # (window, frames written when handed over)
    sink = DirectSink(storage, prefix,
                      on_window=lambda window: windows.append((window, writer.frame_count)))
    writer = RawEpisodeWriter(sink, episode=0, camera="cam0", width=32, height=24, fps=FPS,
                              segment_frames=5, window_frames=15)
    camera = SyntheticCamera("cam0", width=32, height=24, fps=FPS)
    for index in range(frames):
        writer.write(camera.read(), index / FPS)
    manifest = writer.close()
    ranges = window_ranges(frames, 15)
    # Every part but the last is a window sent while recording; the last, the save's.
    assert [(w.segments[0].first_frame, w.frame_count) for w, _ in windows] == [
        (first, first + count) for first, count in ranges[:-1]]
    assert [written for _, written in windows] == [first + count
                                                        for first, count in ranges[:-1]]
    for window, _ in windows:
        first = window.segments[0].first_frame
        # The window's copy names the same segments as the saved manifest.
        assert window.frames_digest(first, 15) == manifest.frames_digest(first, 15)
        assert RawEpisodeReader(storage, prefix, window=window).manifest_digest == \
            manifest.frames_digest(first, 15)
    assert len(list(RawEpisodeReader(storage, prefix, window=windows[1][0])
                    .frames(15, 15))) == 15


def test_a_window_must_be_whole_segments(tmp_path):
    with pytest.raises(ValueError, match="multiple of segment_frames"):
        RawEpisodeWriter(DirectSink(LocalStorage(tmp_path), "p"), episode=0, camera="c",
                         width=32, height=24, fps=FPS, segment_frames=4, window_frames=10)


def create(root, farm: EncodingFarmClient, **options) -> FarmDataset:
    return FarmDataset.create("test/windows", fps=FPS, features=features(64, 48),
                              root=str(root), async_encoding=True, farm=farm,
                              encode_window_s=WINDOW_S, segment_frames=5, **options)


def check_joined(storage: LocalStorage, recording: int, camera: str, frames: int) -> None:
    """The video: every raw frame in order, tagged as the whole episode's encode."""
    prefix = raw_prefix(recording=recording, camera=camera)
    video = storage.path(video_key(recording, camera))
    assert check_video_against_raw(video, storage.url, prefix, min_psnr_db=25) == frames
    assert video_source(video) == SOURCE_PREFIX + RawEpisodeReader(storage, prefix).manifest_digest


@pytest.mark.integration
def test_an_episode_is_encoded_while_it_is_recorded_and_joined_when_saved(
        tmp_path, broker_url, start_worker):
    start_worker(broker_url)
    start_worker(broker_url)
    root = tmp_path / "ds"
    storage = LocalStorage(root)
    first_window = EncodeJob(job_id="-", recording=0, camera="cam0", raw_storage="-",
                             raw_prefix="-", output_storage="-",
                             output_key=video_key(0, "cam0"),
                             part=PartSpec(parent_id="-", index=0, first_frame=0,
                                           frame_count=15, window_frames=15))
    seen_during_capture = []

    def after_frame() -> None:
        # Frame 40 of 46: window 0 (sent at frame 16) is encoded before the episode ends.
        if dataset.episode_frames == 40 and not seen_during_capture:
            seen_during_capture.append(wait_for(
                lambda: storage.exists(part_key(first_window, 0)), timeout_s=120,
                what="the first window's part, published while the episode is recorded"))

    with EncodingFarmClient(broker_url) as farm:
        dataset = create(root, farm, keep_raw=True)  # compared with the raw frames below
        record_episodes(dataset, episodes=1, frames=46, after_frame=after_frame)
        record_episodes(dataset, episodes=1, frames=10, seed=1)  # shorter than a window
        completion = dataset.finalize()
        assert farm.submitted == 2 * len(CAMERAS)  # videos, not windows
    assert seen_during_capture and completion.complete, completion
    results = sorted(dataset.results, key=lambda r: (r.recording, r.camera))
    assert [(r.recording, r.camera, r.frames, r.ok) for r in results] == [
        (recording, camera, frames, True) for recording, frames in ((0, 46), (1, 10))
        for camera in CAMERAS]
    assert [r.joined for r in results] == [True, True, False, False]
    assert {r.job_id for r in results} == {j for e in dataset.episodes for j in e.job_ids}
    for recording, frames in ((0, 46), (1, 10)):
        for camera in CAMERAS:
            check_joined(storage, recording, camera, frames)
    assert not (root / PARTS_ROOT).exists(), "no part is left once the dataset counts them"


@pytest.mark.integration
def test_the_windows_of_a_cleared_episode_are_discarded(tmp_path, broker_url, start_worker):
    start_worker(broker_url)
    root = tmp_path / "ds"
    storage = LocalStorage(root)
    cameras = synthetic_cameras(len(CAMERAS), width=64, height=48, fps=FPS)
    robot = SyntheticRobot(fps=FPS)
    with EncodingFarmClient(broker_url) as farm:
        dataset = create(root, farm)
        for _ in range(40):  # windows 0 and 1 sent
            frame = {f"observation.images.{c.name}": c.read() for c in cameras}
            dataset.add_frame(frame | robot.read() | {"task": "t"})
        parts = [f"{PARTS_ROOT}/{video_key(0, camera)}.parts" for camera in CAMERAS]
        wait_for(lambda: all(storage.list_keys(p) for p in parts), timeout_s=120,
                 what="a window of each camera, published while the episode is recorded")
        dataset.clear_episode_buffer()  # re-record it
        record_episodes(dataset, episodes=1, frames=20, seed=1)
        completion = dataset.finalize()
        assert farm.submitted == len(CAMERAS)
    assert completion.complete and completion.total_episodes == 1
    assert sorted((r.recording, r.camera, r.status) for r in dataset.results) == [
        (1, camera, Status.SUCCEEDED) for camera in CAMERAS]
    # Its raw frames are kept, marked interrupted; nothing of its windows is.
    manifest = RawEpisodeReader(storage, raw_prefix(recording=0, camera="cam0")).manifest
    assert manifest.interrupted and manifest.frame_count == 40
    assert not (root / PARTS_ROOT).exists()
    assert not storage.exists(video_key(0, "cam0"))


def write_windowed(storage: LocalStorage, *, frames: int, seed: int) -> tuple[Manifest,
                                                                              list[Manifest]]:
    """An episode written with windows of 15 frames: its manifest and the windows sent."""
    windows: list[Manifest] = []
    prefix = raw_prefix(recording=0, camera="cam0")
    writer = RawEpisodeWriter(DirectSink(storage, prefix, on_window=windows.append),
                              episode=0, camera="cam0", width=32, height=24, fps=FPS,
                              segment_frames=5, window_frames=15)
    camera = SyntheticCamera("cam0", width=32, height=24, fps=FPS, seed=seed)
    for index in range(frames):
        writer.write(camera.read(), index / FPS)
    return writer.close(), windows


def windowed_jobs(storage: LocalStorage, manifest: Manifest,
                  windows: list[Manifest]) -> list[EncodeJob]:
    """The jobs JobPlan sends: one per window, then the save's part with the count."""
    video = job_for(storage, manifest, job_id="v")
    ranges = window_ranges(manifest.frame_count, 15)
    jobs = [video.model_copy(update={
        "job_id": f"v-w{index}", "window_manifest": windows[index] if index < len(windows)
        else None,
        "part": PartSpec(parent_id="v", index=index, first_frame=first, frame_count=count,
                         window_frames=15,
                         count=len(ranges) if index == len(ranges) - 1 else None)})
        for index, (first, count) in enumerate(ranges)]
    return jobs


@pytest.mark.integration
def test_a_window_of_other_frames_is_not_joined(tmp_path, redis_server):
    storage = LocalStorage(tmp_path / "data")
    ledger = JobLedger(redis_client(redis_server.url))
    manifest, windows = write_windowed(storage, frames=40, seed=0)
    first = windowed_jobs(storage, manifest, windows)[0]
    lock = ledger.join_lock(video_id(first), ttl_s=5)
    assert encode_part_and_join(first, join_lock=lock).status is Status.SUCCEEDED
    # The same recording number saved again with other frames (a recorder that lost its
    # numbering): window 0's part names segments the saved manifest does not have.
    manifest, windows = write_windowed(storage, frames=40, seed=1)
    jobs = windowed_jobs(storage, manifest, windows)
    assert encode_part_and_join(jobs[1], join_lock=lock).ok
    last = encode_part_and_join(jobs[2], join_lock=lock)
    assert last.status is Status.FAILED and last.reason is FailureReason.VERIFY
    assert "part 1 is not a part of this raw episode" in (last.error or "")
    assert not storage.exists(first.output_key)
    # Encoded from the saved frames, window 0 joins them all.
    storage.delete(part_key(first, 0))
    assert encode_part_and_join(jobs[0], join_lock=lock).joined
    check_video_against_raw(storage.path(first.output_key), storage.url, first.raw_prefix,
                            min_psnr_db=25)
