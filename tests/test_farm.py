"""End to end on one machine: our own redis-server, real worker subprocesses, real encodes."""

import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import WorkerProcess, wait_for
from episodes import job_for, slow_job, write_episode
from recordings import features, record_episodes
from video_checks import check_video_against_raw

from encoder_worker.broker import redis_client
from encoder_worker.celery_app import ENCODE_TASK, make_app
from encoder_worker.jobs import ENCODE_QUEUE, EncoderOptions, FailureReason, Status
from encoder_worker.ledger import (
    CLAIMS_KEY,
    KOMBU_UNACKED_KEY,
    LEASE_PREFIX,
    WAITING_KEY,
    JobLease,
    JobLedger,
    LedgerSnapshot,
)
from encoder_worker.raw_episode import Manifest
from encoder_worker.raw_layout import raw_prefix, recording_prefix
from encoder_worker.reaper import LeaseReaper
from encoder_worker.settings import WorkerSettings
from encoder_worker.status import farm_status
from encoder_worker.storage import open_storage
from encoder_worker.tasks import MAX_ENCODE_ATTEMPTS
from recorder.capture.cameras.synthetic import synthetic_cameras
from recorder.dataset import FarmDataset
from recorder.farm.client import EncodingFarmClient
from recorder.session import RecordingSession
from recorder.settings import RecorderSettings

pytestmark = pytest.mark.integration


def small_settings(tmp_path: Path, **overrides) -> RecorderSettings:
    # keep_raw: every video is compared with the raw frames it was encoded from.
    values = dict(episodes=2, episode_time=1, cameras=2, width=320, height=240, fps=30,
                  output_dir=tmp_path / "out", keep_raw=True)
    values.update(overrides)
    return RecorderSettings(**values)


def cameras_of(settings: RecorderSettings):
    return synthetic_cameras(settings.cameras, width=settings.width, height=settings.height,
                             fps=settings.fps, seed=settings.seed)


def x264_job(tmp_path: Path, job_id: str, *, frames: int):
    """A folder storage holding one raw episode, and a job encoding it with libx264 (quick)."""
    storage = open_storage(tmp_path / "data")
    return storage, job_for(storage, write_episode(storage, frames=frames), job_id=job_id,
                            options=EncoderOptions(codec="libx264"))


def check_all_videos(settings: RecorderSettings, report) -> None:
    """4 videos, each decoding to exactly its recorded frames, in order, PSNR > 30 dB."""
    assert len(report.results) == settings.episodes * settings.cameras
    storage = open_storage(settings.output_storage_url)
    for result in report.results:
        assert result.status is Status.SUCCEEDED, result.error
        recorded = next(e for e in report.episodes if e.recording == result.recording)
        assert result.frames == recorded.frames_recorded[result.camera] == 30
        check_video_against_raw(storage.path(result.output_key), settings.raw_storage_url,
                                raw_prefix(recording=result.recording, camera=result.camera))


def test_inline_session_encodes_every_episode(tmp_path):
    settings = small_settings(tmp_path)
    report = RecordingSession(settings, cameras_of(settings)).run()
    assert report.mode == "sync"
    assert all(e.inline_encode_s > 0 for e in report.episodes)
    check_all_videos(settings, report)


def test_async_session_on_worker_processes(tmp_path, broker_url, start_worker):
    start_worker(broker_url)
    start_worker(broker_url)
    settings = small_settings(tmp_path, async_encoding=True, broker=broker_url)
    with EncodingFarmClient(broker_url, queue_size=settings.video_encoding_queue_size) as farm:
        report = RecordingSession(settings, cameras_of(settings), farm=farm).run()
        stats = farm.get_stats()
    assert report.mode == "async"
    assert report.all_ready_at is not None and report.all_ready_at >= report.recording_done_at
    check_all_videos(settings, report)
    assert (stats.tasks_submitted, stats.tasks_completed, stats.tasks_failed) == (4, 4, 0)
    assert stats.in_flight == 0 and stats.queue_depth == 0
    assert stats.average_encoding_time > 0
    # Worker pids are real and not the recorder's.
    assert all(r.worker_pid not in (0, os.getpid()) for r in report.results)


def test_queue_limit_makes_the_recorder_wait(tmp_path, broker_url, start_worker):
    storage = open_storage(tmp_path / "data")
    jobs = [job_for(storage, write_episode(storage, episode=i, frames=10), job_id=f"q{i}",
                    options=EncoderOptions(codec="libx264")) for i in range(3)]
    with EncodingFarmClient(broker_url, queue_size=1) as farm:
        farm.submit(jobs[0])
        assert farm.get_stats().in_flight == 1
        start_worker(broker_url)
        # The second submit can only return once the first job is finished.
        farm.submit(jobs[1])
        assert [r.job_id for r in farm.results] == ["q0"]
        farm.submit(jobs[2])
        results = farm.wait(timeout_s=120)
    assert [r.status for r in results] == [Status.SUCCEEDED] * 3


def test_corrupt_segment_gives_a_failed_result_with_reason(tmp_path, broker_url, start_worker):
    storage = open_storage(tmp_path / "data")
    manifest = write_episode(storage, frames=20)
    segment = storage.path(raw_prefix(recording=0, camera="cam0") + "/segment_00000.raw")
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0x01
    segment.write_bytes(bytes(data))
    start_worker(broker_url)
    with EncodingFarmClient(broker_url) as farm:
        farm.submit(job_for(storage, manifest, options=EncoderOptions(codec="libx264")))
        [result] = farm.wait(timeout_s=120)
    assert result.status is Status.FAILED
    assert "segment_00000.raw is corrupt" in (result.error or "")
    assert result.reason is FailureReason.RAW_EPISODE
    assert segment.exists()


def test_zero_config_cli_starts_and_stops_its_own_farm(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "out"
    video_dir = tmp_path / "videos-elsewhere"
    # Settings from the environment, as a user's shell may hold them; the local workers
    # must not take the recorder's FARM_OUTPUT_STORAGE for a mount of their own.
    env = {**os.environ, "TMPDIR": str(tmp), "FARM_OUTPUT_STORAGE": str(video_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "recorder.cli", "record", "--async-encoding", "--episodes", "2",
         "--episode-time", "1", "--cameras", "2", "--width", "320", "--height", "240",
         "--video-encoding-workers", "2", "--output-dir", str(out), "--keep-raw"],
        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    dataset = out / "local" / "robot_dataset"
    assert not (dataset / "videos").exists()
    videos = sorted(video_dir.glob("videos/observation.images.*/chunk-000/file-*.mp4"))
    assert [v.relative_to(video_dir / "videos").as_posix() for v in videos] == [
        "observation.images.cam0/chunk-000/file-000.mp4",
        "observation.images.cam0/chunk-000/file-001.mp4",
        "observation.images.cam1/chunk-000/file-000.mp4",
        "observation.images.cam1/chunk-000/file-001.mp4"]
    for video in videos:
        camera = video.parent.parent.name.removeprefix("observation.images.")
        episode = int(video.stem.removeprefix("file-"))
        assert check_video_against_raw(video, str(dataset),
                                       raw_prefix(recording=episode, camera=camera)) == 30
    # The dataset's metadata goes where its videos are.
    assert json.loads((video_dir / "meta/info.json").read_text())["total_episodes"] == 2
    # The private Redis and workers ran from TMPDIR; none of them outlive the recorder.
    survivors = subprocess.run(["pgrep", "-f", str(tmp)], capture_output=True, text=True)
    assert survivors.stdout == "", survivors.stdout
    assert not any(tmp.iterdir())


def test_killed_worker_job_is_taken_over_by_another(tmp_path, broker_url, start_worker):
    storage = open_storage(tmp_path / "data")
    # Long enough to still be encoding when the worker is killed.
    job = slow_job(storage, frames=240, job_id="takeover")
    lease_ttl_s = float(os.environ.get("TAKEOVER_LEASE_TTL_S", "2"))  # 60 to see the default
    env = {"FARM_WORKER_LEASE_TTL_S": str(lease_ttl_s)}
    first = start_worker(broker_url, env=env)
    client = redis_client(broker_url)
    with EncodingFarmClient(broker_url) as farm:
        farm.submit(job)
        wait_for(lambda: client.hexists(CLAIMS_KEY, "takeover"), timeout_s=60,
                 what="the first worker to claim the job")
        killed_at = time.time()
        first.kill(signal.SIGKILL)
        second = start_worker(broker_url, env=env)
        [result] = farm.wait(timeout_s=240 + lease_ttl_s)
    assert result.status is Status.SUCCEEDED, result.error
    assert result.worker_pid != first.process.pid
    # The bound, a deadline rather than a speed: restarted <= 30 s after the lease
    # lapsed (reapers look every lease_ttl_s / 4).
    restarted_after_lapse_s = result.started_at - (killed_at + lease_ttl_s)
    print(f"restarted {restarted_after_lapse_s:.1f}s after the lease lapsed "
          f"(lease {lease_ttl_s:g}s)")
    assert restarted_after_lapse_s <= 30
    assert "re-queued" in second.output() or "re-queued" in first.output()
    check_video_against_raw(storage.path(job.output_key), storage.url,
                            raw_prefix(recording=0, camera="cam0"), min_psnr_db=25)


def test_queued_jobs_survive_a_redis_restart(tmp_path, redis_server, start_worker):
    storage = open_storage(tmp_path / "data")
    jobs = [job_for(storage, write_episode(storage, episode=i, frames=10), job_id=f"r{i}",
                    options=EncoderOptions(codec="libx264")) for i in range(2)]
    with EncodingFarmClient(redis_server.url) as farm:
        for job in jobs:
            farm.submit(job)
        redis_server.stop()  # SIGTERM: Redis writes its append-only file and exits
        redis_server.start()
        start_worker(redis_server.url)
        results = farm.wait(timeout_s=120)
    assert sorted(r.job_id for r in results) == ["r0", "r1"]
    assert all(r.status is Status.SUCCEEDED for r in results)


def test_ctrl_c_keeps_recorded_frames_and_stops_the_private_farm(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "out"
    recorder = subprocess.Popen(
        [sys.executable, "-m", "recorder.cli", "record", "--async-encoding", "--episodes", "1",
         "--episode-time", "60", "--cameras", "1", "--width", "160", "--height", "120",
         "--segment-frames", "10", "--output-dir", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "TMPDIR": str(tmp)})
    raw = out / "local/robot_dataset/raw/episode_000000/cam0"
    try:
        wait_for(lambda: (raw / "segment_00001.raw").exists(), timeout_s=120,
                 what="the recorder to capture two segments")
        recorder.send_signal(signal.SIGINT)
        output, _ = recorder.communicate(timeout=120)
    finally:
        if recorder.poll() is None:
            recorder.kill()
    assert recorder.returncode == 130, output
    assert "frames recorded so far are kept" in output
    kept = Manifest.model_validate_json(open_storage(out / "local/robot_dataset").get_bytes(
        "raw/episode_000000/cam0/manifest.json"))
    assert kept.interrupted and kept.frame_count >= 20
    assert sum(s.frame_count for s in kept.segments) == kept.frame_count
    survivors = subprocess.run(["pgrep", "-f", str(tmp)], capture_output=True, text=True)
    assert survivors.stdout == "", survivors.stdout


def test_plain_celery_command_runs_the_same_worker(tmp_path, broker_url, start_worker):
    """`celery -A encoder_worker worker` takes its settings from FARM_WORKER_* variables."""
    storage = open_storage(tmp_path / "data")
    manifest = write_episode(storage, frames=10)
    start_worker(broker_url, "--queues", "encode", "--concurrency", "1",
                 command=[sys.executable, "-m", "celery", "-A", "encoder_worker", "worker"],
                 env={"FARM_WORKER_BROKER": broker_url})
    with EncodingFarmClient(broker_url) as farm:
        farm.submit(job_for(storage, manifest, options=EncoderOptions(codec="libx264")))
        [result] = farm.wait(timeout_s=120)
    assert result.status is Status.SUCCEEDED, result.error
    assert result.frames == 10


def test_revoked_job_comes_back_as_failed(tmp_path, broker_url, start_worker):
    storage, job = x264_job(tmp_path, "cancelled", frames=5)
    start_worker(broker_url)
    with EncodingFarmClient(broker_url) as farm:
        farm.app.control.revoke("cancelled")  # as Flower's revoke button does
        farm.submit(job)
        [result] = farm.wait(timeout_s=120)
    assert result.status is Status.FAILED
    assert "REVOKED" in (result.error or "")
    assert result.reason is FailureReason.REVOKED
    assert not storage.exists(job.output_key)


def test_a_job_that_keeps_killing_its_workers_fails_and_the_others_are_encoded(
        tmp_path: Path, broker_url: str, start_worker: Callable[..., WorkerProcess]) -> None:
    storage = open_storage(tmp_path / "data")
    # Slow enough to be seen encoding (as an out-of-memory encode would be) before its kill.
    poison = slow_job(storage, frames=240, job_id="poison")
    others = [job_for(storage, write_episode(storage, episode=recording, frames=10),
                      job_id=f"other{recording}", options=EncoderOptions(codec="libx264"))
              for recording in (1, 2, 3)]
    env = {"FARM_WORKER_LEASE_TTL_S": "2"}
    ledger = JobLedger(redis_client(broker_url))

    def snapshot() -> LedgerSnapshot:
        return ledger.snapshot(queue=ENCODE_QUEUE, now=time.time())

    def encodes_poison(worker: WorkerProcess) -> bool:
        return bool(snapshot().progress.get("poison", {}).get("worker") == worker.name)

    killed = []
    with EncodingFarmClient(broker_url) as farm:
        for job in (poison, *others):
            farm.submit(job)
        # A supervisor restarts the worker each time; the job kills it each time it starts.
        for _ in range(MAX_ENCODE_ATTEMPTS):
            worker = start_worker(broker_url, env=env)
            wait_for(functools.partial(encodes_poison, worker), timeout_s=120,
                     what=f"{worker.name} to start encoding poison")
            worker.kill(signal.SIGKILL)
            killed.append(worker)
        survivor = start_worker(broker_url, env=env)
        results = {result.job_id: result for result in farm.wait(timeout_s=240)}
    assert results["poison"].status is Status.FAILED
    assert results["poison"].reason is FailureReason.WORKER_DEATHS
    assert f"the encode was started {MAX_ENCODE_ATTEMPTS} times and its worker died each " \
           "time" in (results["poison"].error or "")
    assert results["poison"].worker_pid != killed[-1].process.pid
    for job in others:
        assert results[job.job_id].status is Status.SUCCEEDED, results[job.job_id].error
        check_video_against_raw(storage.path(job.output_key), storage.url,
                                raw_prefix(recording=job.recording, camera="cam0"))
    assert not storage.exists(poison.output_key)
    # No crash loop: the last worker lives on, and nothing of the job is left to run again.
    left = snapshot()
    assert (left.queue_depth, left.claims, left.waiting, left.progress) == (0, {}, {}, {})
    assert survivor.process.poll() is None, survivor.output()
    assert "its worker died each time" in ledger.failures()["poison"]["result"]["error"]


def test_reaper_requeues_only_jobs_whose_lease_lapsed(tmp_path, broker_url):
    client = redis_client(broker_url)
    settings = WorkerSettings(broker=broker_url)
    app = make_app(broker_url, settings=settings)
    for job_id in ("orphan", "alive"):
        client.hset(CLAIMS_KEY, job_id, json.dumps(
            {"task_id": f"task-{job_id}", "payload": {"job_id": job_id}}))
    alive = JobLease(client, "alive", ttl_s=60)
    assert alive.acquire()

    def reaper() -> LeaseReaper:
        return LeaseReaper(
            client, lease_ttl_s=settings.lease_ttl_s,
            resend=lambda task_id, payload: app.send_task(
                ENCODE_TASK, args=[payload], task_id=task_id,
                queue=settings.queue),
            is_done=lambda task_id: app.AsyncResult(task_id).ready())
    try:
        assert reaper().reap_once() == ["orphan"]
        assert client.hkeys(CLAIMS_KEY) == [b"alive"]
        assert client.llen(settings.queue) == 1  # the orphan, sent again
        # A second reaper pass (another worker's) finds nothing left to re-send.
        assert reaper().reap_once() == []
    finally:
        alive.release()
        app.close()


def test_a_job_waiting_in_a_killed_workers_countdown_is_sent_again(
        tmp_path, broker_url, start_worker):
    _, job = x264_job(tmp_path, "waiting", frames=10)
    client = redis_client(broker_url)
    # Another copy holds the lease: the worker puts the job in a countdown, again and again.
    client.set(LEASE_PREFIX + "waiting", "another copy", px=600_000)
    env = {"FARM_WORKER_LEASE_TTL_S": "2"}
    first = start_worker(broker_url, env=env)
    with EncodingFarmClient(broker_url) as farm:
        farm.submit(job)
        wait_for(lambda: client.hexists(WAITING_KEY, "waiting") and client.llen("encode") == 0
                 and client.hlen(KOMBU_UNACKED_KEY) == 1, timeout_s=60,
                 what="the job to wait in the first worker's countdown, held unacknowledged")
        first.kill(signal.SIGKILL)  # the countdown's message dies with it, unacknowledged
        client.delete(LEASE_PREFIX + "waiting")  # the other copy is gone too
        second = start_worker(broker_url, env=env)
        [result] = farm.wait(timeout_s=120)
    assert result.status is Status.SUCCEEDED, result.error
    assert result.worker_pid != first.process.pid
    assert "waited in a countdown on a worker that went away" in second.output()
    assert not client.hexists(WAITING_KEY, "waiting")


@pytest.mark.parametrize("taken_away", ["video packed away", "raw frames deleted"])
def test_a_copy_of_a_job_that_succeeded_is_not_encoded_again(tmp_path, broker_url,
                                                             start_worker, taken_away):
    storage, job = x264_job(tmp_path, "packed", frames=10)
    worker = start_worker(broker_url)
    with EncodingFarmClient(broker_url) as farm:
        farm.submit(job)
        [first] = farm.wait(timeout_s=120)  # the recorder reads the result and forgets it
    assert first.status is Status.SUCCEEDED, first.error
    if taken_away == "video packed away":
        storage.path(job.output_key).unlink()  # packed into the dataset's chunk file
    else:  # the dataset counts the episode: its raw frames went (retention)
        storage.delete_prefix(recording_prefix(job.recording))
    # The message again, as Redis gives it back when its worker died after the encode,
    # before acknowledging it (after the visibility timeout).
    app = make_app(broker_url)
    try:
        app.send_task(ENCODE_TASK, args=[job.model_dump(mode="json")], task_id=job.job_id,
                      queue="encode")
        copy = wait_for(lambda: app.AsyncResult(job.job_id).ready()
                        and app.AsyncResult(job.job_id).result, timeout_s=60,
                        what="the copy's result")
    finally:
        app.close()
    assert copy["status"] == "already_done"
    # No stray video where it was published; no failure for want of raw frames.
    assert storage.exists(job.output_key) is (taken_away == "raw frames deleted")
    assert "succeeded before (a copy of its message came back" in worker.output()


def test_failed_jobs_are_listed_and_requeued(tmp_path, broker_url, start_worker):
    storage = open_storage(tmp_path / "data")
    manifest = write_episode(storage, frames=10)
    segment = storage.path(raw_prefix(recording=0, camera="cam0") + "/segment_00000.raw")
    good = segment.read_bytes()
    segment.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))  # corrupt: the job fails
    job = job_for(storage, manifest, job_id="broken", options=EncoderOptions(codec="libx264"))
    start_worker(broker_url)
    with EncodingFarmClient(broker_url) as farm:
        farm.submit(job)
        [result] = farm.wait(timeout_s=120)
    assert result.status is Status.FAILED

    def worker_cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "encoder_worker.cli", *args, "--broker",
                               broker_url], capture_output=True, text=True, timeout=60)

    listed = worker_cli("failed")
    assert listed.returncode == 0, listed.stderr
    assert "raw_episode  broken  recording 0 camera cam0: RawEpisodeError: segment" in \
        listed.stdout
    assert "is corrupt" in listed.stdout
    as_json = json.loads(worker_cli("failed", "--json").stdout)
    assert as_json["broken"]["payload"]["job_id"] == "broken"

    segment.write_bytes(good)  # the operator fixed the cause
    again = worker_cli("requeue", "--all-failed")
    assert again.returncode == 0 and "requeued 1 jobs" in again.stdout
    wait_for(lambda: storage.exists(job.output_key), timeout_s=120,
             what="the requeued job's video")
    assert worker_cli("failed").stdout.strip() == "no failed jobs"
    unknown = worker_cli("requeue", "nosuchjob")
    assert unknown.returncode == 1 and "no failed job nosuchjob" in unknown.stderr


def test_the_backlog_is_reported_said_once_past_its_limit_and_shown_per_host(
        tmp_path, broker_url, start_worker, caplog):
    # A farm slower than the robot: no worker while 3 episodes are recorded.
    caplog.set_level(logging.INFO, logger="recorder")
    with EncodingFarmClient(broker_url) as farm:
        dataset = FarmDataset.create("test/backlog", fps=30, features=features(64, 48),
                                     root=str(tmp_path / "ds"), async_encoding=True,
                                     farm=farm, codec="libx264", backlog_limit=1)
        record_episodes(dataset, episodes=3, frames=5)
        dataset.finish_uploads()  # every episode handed to the farm
        # Counted as each episode reached the farm: nothing encoded, so it only grows.
        backlogs = [e.backlog for e in dataset.episodes]
        assert backlogs == sorted(backlogs) and backlogs[-1] == 3 and backlogs[0] >= 1
        assert caplog.text.count("the farm encodes slower than the robot records") == 1
        assert "recorded episodes are not encoded yet (more than --backlog-limit 1)" in \
            caplog.text
        status = wait_for(lambda: [r for r in farm_status(broker_url).recorders
                                   if r.backlog == 3], timeout_s=10,
                          what="the recorder's backlog in the farm's status")
        assert status[0].host == socket.gethostname()
        start_worker(broker_url)
        assert dataset.finalize().total_episodes == 3
    shown = subprocess.run([sys.executable, "-m", "encoder_worker.cli", "status", "--broker",
                            broker_url, "--json"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["recorders"] == [], "a closed recorder says goodbye"
