"""LeRobot v3.0 datasets from FarmDataset: the contract checked with pyarrow and PyAV."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, wait_for
from dataset_checks import check_v3_dataset, mirror
from recordings import CAMERAS, TASKS, features, record_episodes

from encoder_worker.broker import redis_client
from encoder_worker.jobs import ENCODE_QUEUE
from encoder_worker.raw_episode import Manifest
from encoder_worker.raw_sinks import DirectSink
from recorder.capture.raw_writer import WriterFailed
from recorder.dataset import DatasetError, FarmDataset
from recorder.dataset.pack import pack_dataset
from recorder.dataset.stats import ImageStats, aggregate, numeric_stats
from recorder.farm.client import EncodingFarmClient

# keep_raw: these tests compare every decoded frame with the raw frame it was encoded from
# (tests/test_retention.py checks that raw frames go by default).
FAST = {"codec": "libx264", "keep_raw": True}


def create(root: Path | str, **settings) -> FarmDataset:
    return FarmDataset.create("test/dataset", fps=30, features=features(), robot_type="sim",
                              root=str(root), **{"keep_raw": True, **settings})


# --- without servers --------------------------------------------------------------------

# A program that stops mid-episode without finalize(): the writers' threads (started
# with the dataset, raw_writer.WriterThreads) must not hold the interpreter's exit.
STOPS_MID_EPISODE = """
import sys
import numpy as np
from recordings import features
from recorder.dataset import FarmDataset
dataset = FarmDataset.create("test/dataset", fps=30, features=features(), root=sys.argv[1])
frame = {key: np.zeros(f["shape"], np.uint8) if f["dtype"] == "video"
         else np.zeros(f["shape"], np.float32) for key, f in dataset.features.items()}
for _ in range(5):
    dataset.add_frame({**frame, "task": "stop"})
print("exiting mid-episode")
"""


def test_a_program_that_stops_mid_episode_exits(tmp_path):
    done = subprocess.run([sys.executable, "-c", STOPS_MID_EPISODE, str(tmp_path / "ds")],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"})
    assert done.returncode == 0, done.stderr
    assert "exiting mid-episode" in done.stdout


def test_image_stats_equal_numpy_over_the_same_pixels():
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(4)]
    stats = ImageStats()
    for frame in frames:
        stats.add(frame)
    result = stats.result()
    pixels = np.concatenate([f[::4, ::4].reshape(-1, 3) for f in frames]) / 255.0
    assert result["count"].tolist() == [4]
    for name, want in (("mean", pixels.mean(0)), ("std", pixels.std(0)),
                       ("min", pixels.min(0)), ("max", pixels.max(0))):
        assert result[name].shape == (3, 1, 1)
        np.testing.assert_allclose(result[name].ravel(), want, atol=1e-9)
    np.testing.assert_allclose(result["q50"].ravel(), np.quantile(pixels, 0.5, axis=0),
                               atol=1 / 255)


def test_aggregated_stats_equal_stats_of_all_frames():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0, 1, (50, 6)), rng.normal(3, 2, (80, 6))
    total = aggregate([{"x": numeric_stats(a)}, {"x": numeric_stats(b)}])["x"]
    both = np.concatenate([a, b])
    np.testing.assert_allclose(total["mean"], both.mean(0))
    np.testing.assert_allclose(total["std"], both.std(0))
    np.testing.assert_allclose(total["min"], both.min(0))
    assert total["count"].tolist() == [130]


def test_bad_frames_are_refused_with_the_reason(tmp_path):
    dataset = create(tmp_path / "ds", **FAST)
    image = np.zeros((240, 320, 3), np.uint8)
    good = {"observation.images.cam0": image, "observation.images.cam1": image,
            "observation.state": np.zeros(6, np.float32), "action": np.zeros(6, np.float32),
            "task": "pick"}
    with pytest.raises(ValueError, match=r"frame\['task'\]"):
        dataset.add_frame({k: v for k, v in good.items() if k != "task"})
    with pytest.raises(ValueError, match=r"missing features \['action'\]"):
        dataset.add_frame({k: v for k, v in good.items() if k != "action"})
    with pytest.raises(ValueError, match=r"observation.images.cam1 must be a \(240, 320, 3\)"):
        dataset.add_frame(good | {"observation.images.cam1": np.zeros((10, 10, 3), np.uint8)})
    with pytest.raises(ValueError, match=r"observation.state must have shape \(6,\)"):
        dataset.add_frame(good | {"observation.state": np.zeros(7)})
    with pytest.raises(ValueError, match="no frame was added"):
        dataset.save_episode()
    dataset.add_frame(good)  # a good frame after the refused ones is the episode's first
    assert dataset.episode_frames == 1
    dataset.abort()


def test_a_dataset_of_another_version_is_refused_and_left_alone(tmp_path):
    info = tmp_path / "ds/meta/info.json"
    info.parent.mkdir(parents=True)
    info.write_text('{"codebase_version": "v2.0", "fps": 30, "features": {}}')
    with pytest.raises(DatasetError, match=r"codebase version 'v2.0'.*never modifies"):
        create(tmp_path / "ds", **FAST)
    assert json.loads(info.read_text())["codebase_version"] == "v2.0"
    assert sorted(p.name for p in (tmp_path / "ds").rglob("*")) == ["info.json", "meta"]


def test_other_features_or_fps_are_refused(tmp_path):
    create(tmp_path / "ds", **FAST).abort()
    with pytest.raises(DatasetError, match="record into a new --repo-id"):
        FarmDataset.create("test/dataset", fps=15, features=features(), root=str(tmp_path / "ds"),
                           **FAST)


# --- real encodes -----------------------------------------------------------------------

@pytest.mark.integration
def test_inline_dataset_meets_the_v3_contract_packed_and_appended(tmp_path):
    root = tmp_path / "ds"
    dataset = create(root)  # LeRobot's encoder defaults: libsvtav1, crf 30, g 2
    record_episodes(dataset, episodes=3, frames=20)
    completion = dataset.finalize()
    assert completion.complete and completion.total_episodes == 3
    info = check_v3_dataset(root, raw_url=str(root), episodes=3, cameras=CAMERAS,
                            frames_per_episode=20)
    assert info["robot_type"] == "sim" and info["total_tasks"] == 2
    tasks = pd.read_parquet(root / "meta/tasks.parquet")
    assert list(tasks.index) == TASKS and list(tasks["task_index"]) == [0, 1]
    assert info["features"]["observation.images.cam0"]["info"]["video.codec"] == "av1"

    report = pack_dataset(dataset.storage, dataset.raw_storage)
    assert report.episodes_packed == 3 and report.files_written == {
        f"observation.images.{c}": 1 for c in CAMERAS}
    assert len(list(root.glob("videos/*/*/*.mp4"))) == len(CAMERAS)
    check_v3_dataset(root, raw_url=str(root), episodes=3, cameras=CAMERAS,
                     frames_per_episode=20)
    # Packed episodes' per-episode videos are gone, and nothing is missing (before: all 6
    # were encoded again).
    pending = run_recorder("encode-pending", "--storage", str(root), "--dry-run")
    assert "0 videos to encode, 6 already there" in pending.stdout, pending.stdout
    packed = sorted(root.glob("videos/observation.images.cam1/*/*.mp4"))[0]
    hidden = packed.rename(packed.with_suffix(".bak"))
    pending = run_recorder("encode-pending", "--storage", str(root), "--dry-run")
    said = " ".join(pending.stdout.split())  # the console wraps long lines
    assert "observation.images.cam1: its packed video" in said, said
    assert "restore it from a backup" in said
    hidden.rename(packed)

    # Appending: recording numbers and episode indices continue after the packed files.
    again = create(root)
    record_episodes(again, episodes=1, frames=20, seed=5)
    assert again.finalize().total_episodes == 4
    check_v3_dataset(root, raw_url=str(root), episodes=4, cameras=CAMERAS,
                     frames_per_episode=20, min_psnr_db=27)


@pytest.mark.integration
def test_cleared_episode_keeps_its_frames_and_leaves_no_gap(tmp_path):
    root = tmp_path / "ds"
    dataset = create(root, **FAST)
    record_episodes(dataset, episodes=1, frames=10)
    for _ in range(5):  # an episode the operator re-records
        dataset.add_frame({k: v for k, v in next_frame(dataset).items()})
    dataset.clear_episode_buffer()
    record_episodes(dataset, episodes=1, frames=10, seed=1)
    assert dataset.finalize().total_episodes == 2
    check_v3_dataset(root, raw_url=str(root), episodes=2, cameras=CAMERAS,
                     frames_per_episode=10)
    rows = pd.read_parquet(root / "meta/episodes/chunk-000/file-000.parquet")
    assert list(rows["farm/recording"]) == [0, 2]
    assert json.loads((root / "raw/episode_000001/cam0/manifest.json").read_text())[
        "interrupted"]


def next_frame(dataset: FarmDataset) -> dict:
    image = np.full((240, 320, 3), 7, np.uint8)
    return {"observation.images.cam0": image, "observation.images.cam1": image.copy(),
            "observation.state": np.ones(6), "action": np.ones(6), "task": "retry"}


@pytest.mark.integration
def test_async_dataset_on_worker_processes(tmp_path, broker_url, start_worker):
    start_worker(broker_url)
    start_worker(broker_url)
    root = tmp_path / "ds"
    dataset = create(root, async_encoding=True, broker=broker_url)
    record_episodes(dataset, episodes=3, frames=20)
    assert all(r.submission_s < 5 for r in dataset.episodes)
    completion = dataset.finalize()
    assert completion.complete, completion
    assert len(dataset.results) == 6 and all(r.ok for r in dataset.results)
    check_v3_dataset(root, raw_url=str(root), episodes=3, cameras=CAMERAS,
                     frames_per_episode=20)


@pytest.mark.integration
def test_no_wait_dataset_is_completed_by_encode_pending(tmp_path, broker_url):
    root = tmp_path / "ds"
    # Jobs go to a farm with no worker, and the recorder does not wait: no video exists.
    with EncodingFarmClient(broker_url) as farm:
        dataset = create(root, async_encoding=True, wait=False, farm=farm, **FAST)
        record_episodes(dataset, episodes=2, frames=10)
        completion = dataset.finalize()
    assert completion.total_episodes == 0 and completion.staged_left == 2
    assert "videos not published yet" in dataset.waiting_note()
    assert json.loads((root / "meta/info.json").read_text())["total_episodes"] == 0
    done = run_recorder("encode-pending", "--storage", str(root), "--codec", "libx264",
                        "--keep-raw")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 videos to encode, 0 already there" in done.stdout
    assert "2 episodes, 20 frames" in done.stdout
    check_v3_dataset(root, raw_url=str(root), episodes=2, cameras=CAMERAS,
                     frames_per_episode=10)
    again = run_recorder("encode-pending", "--storage", str(root), "--dry-run")
    assert "0 videos to encode, 4 already there" in again.stdout


@pytest.mark.integration
def test_recorder_killed_between_episodes_is_completed_by_encode_pending(tmp_path):
    root = tmp_path / "out/local/robot_dataset"
    process = subprocess.Popen(
        [sys.executable, "-m", "recorder.cli", "record", "--episodes", "3", "--episode-time",
         "0.5", "--reset-time", "120", "--width", "160", "--height", "120", "--codec",
         "libx264", "--output-dir", str(tmp_path / "out")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        wait_for(lambda: (root / "raw/episode_000000/episode.json").exists()
                 and (root / "videos/observation.images.cam1/chunk-000/file-000.mp4").exists(),
                 timeout_s=120, what="the first episode to be saved and encoded")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    info = json.loads((root / "meta/info.json").read_text())
    assert info["total_episodes"] == 0, "metadata is written at the end, never half"
    done = run_recorder("encode-pending", "--keep-raw", "--output-dir", str(tmp_path / "out"),
                        "--codec", "libx264")
    assert done.returncode == 0, done.stdout + done.stderr
    check_v3_dataset(root, raw_url=str(root), episodes=1, cameras=CAMERAS,
                     frames_per_episode=15)


@pytest.mark.integration
def test_s3_dataset_meets_the_contract_before_and_after_packing(s3_url, tmp_path):
    dataset = FarmDataset.create("test/dataset", fps=30, features=features(160, 120),
                                 root=s3_url, spool_dir=tmp_path / "spool", **FAST)
    record_episodes(dataset, episodes=3, frames=10)
    assert dataset.finalize().complete
    check_v3_dataset(mirror(s3_url, tmp_path / "before"), raw_url=s3_url, episodes=3,
                     cameras=CAMERAS, frames_per_episode=10)
    report = pack_dataset(dataset.storage, dataset.raw_storage)
    assert report.episodes_packed == 3 and report.files_deleted == 6
    check_v3_dataset(mirror(s3_url, tmp_path / "after"), raw_url=s3_url, episodes=3,
                     cameras=CAMERAS, frames_per_episode=10)


@pytest.mark.integration
def test_v21_layout_on_request(tmp_path):
    root = tmp_path / "ds"
    dataset = create(root, dataset_format="v2.1", **FAST)
    record_episodes(dataset, episodes=2, frames=10)
    assert dataset.finalize().total_episodes == 2
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["total_videos"] == 4
    lines = (root / "meta/episodes.jsonl").read_text().splitlines()
    assert [json.loads(line)["length"] for line in lines] == [10, 10]
    for episode in range(2):
        assert (root / f"data/chunk-000/episode_{episode:06d}.parquet").exists()
        for camera in CAMERAS:
            assert (root / f"videos/chunk-000/observation.images.{camera}/"
                           f"episode_{episode:06d}.mp4").exists()
    with pytest.raises(DatasetError, match=r"pass --dataset-format v2\.1"):
        create(root, **FAST)


def run_recorder(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "recorder.cli", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.integration
def test_jobs_are_sent_once_their_episode_is_uploaded(moto_server, s3_url, broker_url,
                                                      tmp_path):
    # No worker ever waits for a manifest that is still in the recorder's spool.
    client = redis_client(broker_url)
    with EncodingFarmClient(broker_url) as farm:
        dataset = FarmDataset.create("test/dataset", fps=30, features=features(160, 120),
                                     root=s3_url, spool_dir=tmp_path / "spool",
                                     async_encoding=True, wait=False, farm=farm, **FAST)
        moto_server.stop()  # an S3 outage: the episode stays in the spool
        record_episodes(dataset, episodes=1, frames=10)
        assert client.llen(ENCODE_QUEUE) == 0 and farm.submitted == 0
        moto_server.start()
        dataset.finalize()  # waits for the uploads, then sends the jobs
        assert client.llen(ENCODE_QUEUE) == len(CAMERAS) == farm.submitted
        assert dataset.raw_storage.exists("raw/episode_000000/episode.json")


class _FailingSegments(DirectSink):
    """A disk that fails when the third segment is committed: the last one of 10 frames in
    segments of 4, committed by the episode's commit."""

    def commit_segment(self, name, file):
        if name == "segment_00002.raw":
            file.close()
            raise OSError(28, "No space left on device")
        super().commit_segment(name, file)


@pytest.mark.integration
def test_async_commit_runs_behind_the_next_episode_and_its_failure_is_raised(
        tmp_path, broker_url, monkeypatch):
    # save_episode() returns before the episode is committed; the jobs of an episode are
    # sent once it is. A commit that fails is raised by the next call, the other cameras'
    # frames committed, the episode not staged and no job sent for it.
    root = tmp_path / "ds"
    with EncodingFarmClient(broker_url) as farm:
        dataset = create(root, async_encoding=True, wait=False, farm=farm,
                         segment_frames=4, **FAST)
        sink = dataset.committer.sink
        monkeypatch.setattr(dataset.committer, "sink", lambda prefix, **kw: _FailingSegments(
            dataset.raw_storage, prefix) if prefix.endswith("episode_000001/cam0") else
            sink(prefix, **kw))
        record_episodes(dataset, episodes=2, frames=10)
        assert [e.recording for e in dataset.episodes] == [0, 1]
        with pytest.raises(WriterFailed, match="No space left on device"):
            dataset.finalize()
    first = dataset.episodes[0]
    assert first.frames_recorded == {"cam0": 10, "cam1": 10} and first.commit_s > 0
    assert farm.submitted == len(CAMERAS), "jobs of the committed episode only"
    raw = dataset.raw_storage
    assert raw.exists("raw/episode_000000/episode.json")
    assert not raw.exists("raw/episode_000001/episode.json")
    kept = Manifest.model_validate_json(raw.get_bytes("raw/episode_000001/cam0/manifest.json"))
    assert kept.interrupted and kept.frame_count == 8
    assert raw.exists("raw/episode_000001/cam1/manifest.json")


@pytest.mark.integration
def test_uploads_are_finished_only_after_the_last_commit(moto_server, s3_url, broker_url,
                                                        tmp_path, monkeypatch):
    # The last episode commits behind save_episode(); closing the upload spool before its
    # commit queued the last segment and manifest left them in the spool and its jobs
    # waiting for a manifest (found by the compose test on a loaded machine).
    with EncodingFarmClient(broker_url) as farm:
        dataset = FarmDataset.create("test/dataset", fps=30, features=features(160, 120),
                                     root=s3_url, spool_dir=tmp_path / "spool",
                                     async_encoding=True, wait=False, farm=farm, **FAST)
        commit = dataset.committer._commit

        def slow_commit(*args):  # a loaded robot host: the flush takes a while
            time.sleep(1.0)
            return commit(*args)

        monkeypatch.setattr(dataset.committer, "_commit", slow_commit)
        record_episodes(dataset, episodes=1, frames=10)
        dataset.finish_uploads()
        for camera in CAMERAS:
            assert dataset.raw_storage.exists(f"raw/episode_000000/{camera}/manifest.json")
        assert not list((tmp_path / "spool").glob("*/keys/raw/**/*.*"))
        dataset.finalize()
        assert farm.submitted == len(CAMERAS)
