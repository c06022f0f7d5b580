"""A long episode encoded as parts by several workers at once and joined into one video:
real redis-server, real worker processes, real encodes decoded back."""

from __future__ import annotations

import signal
import threading
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import wait_for
from episodes import job_for, video_key, write_episode
from recordings import CAMERAS, features, record_episodes
from video_checks import check_video_against_raw, decode_rgb

from encoder_worker import parts
from encoder_worker.broker import redis_client
from encoder_worker.encode import SOURCE_PREFIX, video_source
from encoder_worker.jobs import (
    PARTS_ROOT,
    EncodeJob,
    EncoderOptions,
    Status,
    merge_part_results,
    split_job,
)
from encoder_worker.ledger import CLAIMS_KEY, JOIN_PREFIX, JobLedger
from encoder_worker.parts import (
    encode_part_and_join,
    join_parts,
    part_key,
    video_id,
)
from encoder_worker.raw_episode import RawEpisodeReader
from encoder_worker.raw_layout import raw_prefix
from encoder_worker.storage.local import LocalStorage
from recorder.dataset import FarmDataset
from recorder.dataset.jobs import part_count
from recorder.dataset.videos import probe_video
from recorder.farm.client import EncodingFarmClient
from recorder.settings import RecorderSettings

pytestmark = pytest.mark.integration

FPS = 30


def check_whole(storage: LocalStorage, job: EncodeJob, *, min_psnr_db: float = 25.0) -> None:
    """The joined video: every raw frame in order (PSNR), pts exactly 1/fps apart, tagged
    as a whole-episode encode, and no part left behind."""
    video = storage.path(job.output_key)
    frames = check_video_against_raw(video, storage.url, job.raw_prefix,
                                     min_psnr_db=min_psnr_db)
    reader = RawEpisodeReader(storage, job.raw_prefix)
    assert frames == reader.manifest.frame_count
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        assert stream.time_base is not None
        seconds = [frame.pts * stream.time_base for frame in container.decode(stream)]
    assert seconds == [Fraction(i, FPS) for i in range(frames)]
    assert video_source(video) == SOURCE_PREFIX + reader.manifest_digest
    assert not storage.list_keys(PARTS_ROOT), "the parts are removed after the join"


def split(storage: LocalStorage, *, frames: int, parts: int, width: int = 64, height: int = 48,
          options: EncoderOptions | None = None, job_id: str = "split") -> list[EncodeJob]:
    manifest = write_episode(storage, frames=frames, width=width, height=height, fps=FPS,
                             segment_frames=10)
    return split_job(job_for(storage, manifest, job_id=job_id, options=options),
                     frames=frames, parts=parts)


def test_part_counts_follow_the_settings():
    settings = RecorderSettings(split_after_s=20, split_part_s=7.5)
    assert part_count(20 * FPS, FPS, settings) == 1  # not longer than the threshold
    assert part_count(60 * FPS, FPS, settings) == 8
    assert part_count(21 * FPS, FPS, settings) == 4  # rounded up to keep 4 workers busy
    assert part_count(600 * FPS, FPS, RecorderSettings(split_after_s=0)) == 1
    jobs = split_job(EncodeJob(job_id="j", recording=0, camera="c", raw_storage="/r",
                               raw_prefix="raw", output_storage="/o", output_key="v.mp4"),
                     frames=10, parts=4)
    assert [(j.part.first_frame, j.part.frame_count) for j in jobs if j.part] == \
        [(0, 2), (2, 3), (5, 2), (7, 3)]
    assert {j.output_key for j in jobs} == {"v.mp4"}
    assert [j.job_id for j in jobs] == [f"j-part{i:03d}" for i in range(4)]


@pytest.mark.parametrize("options", [EncoderOptions(),  # LeRobot's SVT-AV1 defaults
                                     EncoderOptions(codec="libx264", gop=30)],  # B-frames
                         ids=["libsvtav1", "libx264"])
def test_parts_join_to_exactly_the_frames_of_the_episode(tmp_path, redis_server, options,
                                                         monkeypatch):
    storage = LocalStorage(tmp_path / "data")
    jobs = split(storage, frames=95, parts=4, options=options)
    ledger = JobLedger(redis_client(redis_server.url))
    keep_parts = parts.remove_parts
    monkeypatch.setattr(parts, "remove_parts", lambda storage, job: None)
    results = [encode_part_and_join(job, join_lock=ledger.join_lock(video_id(job), ttl_s=5))
               for job in jobs]
    assert [r.status for r in results] == [Status.SUCCEEDED] * 4, [r.error for r in results]
    # Only the last part to be published finds them all, and joins.
    assert [r.joined for r in results] == [False, False, False, True]
    assert results[-1].timings.join_s > 0
    # Lossless: the joined video decodes to exactly the frames its parts decode to.
    joined, _ = decode_rgb(storage.path(jobs[0].output_key))
    in_parts = [frame for index, job in enumerate(jobs)
                for frame in decode_rgb(storage.path(part_key(job, index)))[0]]
    assert len(joined) == len(in_parts) == 95
    assert all(np.array_equal(a, b) for a, b in zip(joined, in_parts, strict=True))
    # The video's verified frames and duration: its parts' together, as read from it
    # (the sum of floats: up to their rounding).
    merged = merge_part_results("split", results)
    probe = probe_video(storage.path(jobs[0].output_key))
    assert merged.frames == probe.frames
    assert merged.duration_s == pytest.approx(probe.duration_s, rel=0, abs=1e-9)
    keep_parts(storage, jobs[0])
    check_whole(storage, jobs[0])


def test_join_is_idempotent_and_outlives_a_dead_joiner(tmp_path, redis_server):
    storage = LocalStorage(tmp_path / "data")
    jobs = split(storage, frames=60, parts=3)
    client = redis_client(redis_server.url)
    ledger = JobLedger(client)
    lock_key = JOIN_PREFIX + video_id(jobs[0])
    client.set(lock_key, "a joiner that died", px=1000)  # lapses, never released
    # Every part published; the last one's join waits out the dead joiner's lease.
    results = [encode_part_and_join(job, join_lock=ledger.join_lock(video_id(job), ttl_s=1))
               for job in jobs]
    assert [r.joined for r in results] == [False, False, True]
    check_whole(storage, jobs[0])
    video = storage.path(jobs[0].output_key)
    published = video.stat()

    # Parts left as a join that died after publishing leaves them: two joiners at once
    # (two parts that finished together) and then a late one publish nothing and clean up.
    for index in range(3):
        leftover = storage.path(part_key(jobs[index], index))
        leftover.parent.mkdir(parents=True, exist_ok=True)
        leftover.write_bytes(video.read_bytes())
    barrier = threading.Barrier(2)
    joined: list[bool] = []

    def join(job: EncodeJob) -> None:
        barrier.wait()
        joined.append(join_parts(job, lock=ledger.join_lock(video_id(job), ttl_s=5)))

    threads = [threading.Thread(target=join, args=(job,)) for job in jobs[:2]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert joined == [False, False]
    assert not join_parts(jobs[2], lock=ledger.join_lock(video_id(jobs[2]), ttl_s=5))
    # A part job delivered again after the join: its part is not encoded again.
    again = encode_part_and_join(jobs[0], join_lock=ledger.join_lock(video_id(jobs[0]),
                                                                     ttl_s=5))
    assert (again.status, again.joined) == (Status.ALREADY_DONE, False)
    assert video.stat().st_ino == published.st_ino  # the one video, never replaced
    assert not client.exists(lock_key)
    check_whole(storage, jobs[0])


def test_two_workers_join_the_parts_once(tmp_path, broker_url, start_worker):
    start_worker(broker_url)
    start_worker(broker_url)
    storage = LocalStorage(tmp_path / "data")
    jobs = split(storage, frames=120, parts=8)
    with EncodingFarmClient(broker_url) as farm:
        for job in jobs:
            farm.submit(job)
        results = farm.wait(timeout_s=120)
        stats = farm.get_stats()
    # One merged result for the one video, of all 8 parts, joined once.
    [result] = results
    assert result.status is Status.SUCCEEDED, result.error
    assert (result.job_id, result.frames, result.joined) == ("split", 120, True)
    assert result.timings.join_s > 0 and result.finished_at > result.started_at
    assert (stats.tasks_submitted, stats.tasks_completed, stats.tasks_failed) == (1, 1, 0)
    check_whole(storage, jobs[0])


def test_a_part_whose_worker_is_killed_is_taken_over(tmp_path, broker_url, start_worker):
    storage = LocalStorage(tmp_path / "data")
    # 640x480 x264 veryslow: seconds per part on one core, so killed mid-encode.
    jobs = split(storage, frames=90, parts=2, width=640, height=480, job_id="killed",
                 options=EncoderOptions(codec="libx264", preset="veryslow", gop=30))
    env = {"FARM_WORKER_LEASE_TTL_S": "2"}
    first = start_worker(broker_url, env=env)
    client = redis_client(broker_url)
    with EncodingFarmClient(broker_url) as farm:
        for job in jobs:
            farm.submit(job)
        wait_for(lambda: client.hexists(CLAIMS_KEY, jobs[0].job_id), timeout_s=60,
                 what="the first worker to claim the first part")
        first.kill(signal.SIGKILL)
        assert not storage.exists(part_key(jobs[0], 0)), "killed before it published"
        second = start_worker(broker_url, env=env)
        [result] = farm.wait(timeout_s=240)
    assert result.status is Status.SUCCEEDED, result.error
    assert result.frames == 90 and result.worker_pid != first.process.pid
    assert "re-queued" in second.output() + first.output()
    check_whole(storage, jobs[0], min_psnr_db=25)


def test_async_recording_splits_a_long_episode(tmp_path, broker_url, start_worker):
    start_worker(broker_url)
    start_worker(broker_url)
    root = tmp_path / "ds"
    with EncodingFarmClient(broker_url) as farm:
        dataset = FarmDataset.create(
            "test/split", fps=FPS, features=features(64, 48), root=str(root),
            async_encoding=True, farm=farm, split_after_s=1.0, split_part_s=0.5,
            keep_raw=True)  # compared with the raw frames below
        record_episodes(dataset, episodes=1, frames=45)  # 1.5 s: 4 parts per camera
        record_episodes(dataset, episodes=1, frames=20, seed=1)  # not split
        completion = dataset.finalize()
        assert farm.submitted == 2 * len(CAMERAS)  # videos, not part jobs
    assert completion.complete, completion
    assert [len(e.job_ids) for e in dataset.episodes] == [len(CAMERAS)] * 2
    results = sorted(dataset.results, key=lambda r: (r.recording, r.camera))
    assert [(r.recording, r.camera, r.frames) for r in results] == [
        (episode, camera, frames) for episode, frames in ((0, 45), (1, 20))
        for camera in CAMERAS]
    assert all(r.ok for r in results)
    assert [r.joined for r in results] == [True, True, False, False]
    assert {r.job_id for r in results} == {j for e in dataset.episodes for j in e.job_ids}
    storage = LocalStorage(root)
    for episode, camera in ((0, "cam0"), (0, "cam1")):
        job = job_for(storage, RawEpisodeReader(storage, raw_prefix(
            recording=episode, camera=camera)).manifest)
        assert job.output_key == video_key(episode, camera)
        check_whole(storage, job)


def test_parts_path_stays_inside_the_output_storage():
    job = split_job(EncodeJob(job_id="j", recording=0, camera="c", raw_storage="/r",
                              raw_prefix="raw", output_storage="/o",
                              output_key="videos/k/chunk-000/file-000.mp4"),
                    frames=10, parts=2)[1]
    assert part_key(job, 1) == (f"{PARTS_ROOT}/videos/k/chunk-000/file-000.mp4.parts/"
                                "part-001-of-002.mp4")
    assert Path(part_key(job, 1)).parts[0] == PARTS_ROOT
