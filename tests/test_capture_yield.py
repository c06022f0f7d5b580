"""Workers beside a recorder pause while it captures an episode (--yield-to-capture), or
encode on the CPUs it leaves (--share-with-capture)."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, TEST_CPU_CAP_GROUP, WorkerProcess, require, wait_for
from episodes import job_for, write_episode
from test_cpu_cap import skip_without_cpu_cgroup
from video_checks import check_video_against_raw

from encoder_worker import cpu_cap
from encoder_worker.broker import redis_client
from encoder_worker.cpu_cap import CpuCap
from encoder_worker.jobs import Status
from encoder_worker.ledger import PROGRESS_KEY, JobLedger
from encoder_worker.priority import CaptureYield
from encoder_worker.raw_layout import raw_prefix
from encoder_worker.storage import open_storage
from recorder.dataset.writer import FarmDataset
from recorder.farm.client import EncodingFarmClient

HOST = socket.gethostname()

pytestmark = pytest.mark.integration


def test_a_pause_lasts_while_the_recorder_captures(broker_url):
    ledger = JobLedger(redis_client(broker_url))
    pauses: list[bool] = []
    pause = CaptureYield(ledger, budget_s=60, on_pause=pauses.append)
    pause()  # nobody captures: returns at once
    assert pauses == [] and pause.paused_s == 0
    ledger.announce_capture(HOST, ttl_s=30)
    waiting = threading.Thread(target=pause)
    waiting.start()
    wait_for(lambda: pauses == [True], timeout_s=10, what="the encode to pause")
    assert waiting.is_alive()
    ledger.end_capture(HOST)
    waiting.join(timeout=10)
    assert not waiting.is_alive() and pauses == [True, False] and pause.paused_s > 0


def test_a_pause_never_outlasts_its_budget(broker_url):
    ledger = JobLedger(redis_client(broker_url))
    ledger.announce_capture(HOST, ttl_s=60)
    pause = CaptureYield(ledger, budget_s=0.5)
    pause()  # a capture that never ends: back after the budget
    assert 0.5 <= pause.paused_s < 5
    pause()  # budget spent: no more pausing
    assert pause.paused_s < 5


def test_a_worker_pauses_its_encode_until_the_episode_ends(tmp_path, broker_url,
                                                            start_worker):
    storage = open_storage(tmp_path / "data")
    manifest = write_episode(storage, frames=90, width=320, height=240)
    start_worker(broker_url, "--yield-to-capture")
    client = redis_client(broker_url)
    ledger = JobLedger(client)
    ledger.announce_capture(HOST, ttl_s=120)
    with EncodingFarmClient(broker_url) as farm:
        farm.submit(job_for(storage, manifest))

        def paused():
            record = client.hget(PROGRESS_KEY, f"test-ep{manifest.episode}-cam0")
            return record is not None and json.loads(record).get("paused_for_capture")
        wait_for(paused, timeout_s=60, what="the worker to pause for the capture")
        ledger.end_capture(HOST)
        [result] = farm.wait(timeout_s=120)
    assert result.status is Status.SUCCEEDED, result.error
    assert result.timings.paused_s > 0
    check_video_against_raw(storage.path(result.output_key), storage.url,
                            raw_prefix(recording=0, camera="cam0"))


def test_the_dataset_says_while_an_episode_is_captured(tmp_path, broker_url):
    ledger = JobLedger(redis_client(broker_url))
    features = {"observation.images.cam0": {"dtype": "video", "shape": [48, 64, 3],
                                            "names": ["height", "width", "channels"]}}
    with EncodingFarmClient(broker_url) as farm:
        dataset = FarmDataset.create("local/robot_dataset", fps=30, features=features,
                                     farm=farm, output_dir=tmp_path, async_encoding=True,
                                     broker=broker_url, wait=False)
        dataset.add_frame({"observation.images.cam0": np.zeros((48, 64, 3), np.uint8),
                           "task": "wait"})
        wait_for(lambda: ledger.capturing(HOST), timeout_s=10, what="capture announced")
        dataset.save_episode()
        wait_for(lambda: not ledger.capturing(HOST), timeout_s=10, what="capture ended")
        dataset.finalize()


def test_a_recorder_that_died_mid_capture_stops_pausing_within_seconds(broker_url):
    ledger = JobLedger(redis_client(broker_url))
    ledger.announce_capture(HOST, ttl_s=1.0)  # its last word; nobody ends the capture
    pause = CaptureYield(ledger, budget_s=60)
    pause()
    assert 0 < pause.paused_s < 10
    assert not ledger.capturing(HOST)


def test_sharing_a_capture_host_encodes_on_the_cpus_the_capture_leaves(broker_url):
    all_cpus = os.sched_getaffinity(0)
    if len(all_cpus) < 2:
        pytest.skip("sharing CPUs with a capture needs 2 of them")
    kept = min(all_cpus)
    ledger = JobLedger(redis_client(broker_url))
    pauses: list[bool] = []
    share = CaptureYield(ledger, budget_s=60, on_pause=pauses.append, share=True)
    worker_thread = threading.Thread(target=time.sleep, args=(30,), daemon=True)
    worker_thread.start()  # a codec's thread, started before the capture
    try:
        ledger.announce_capture(HOST, ttl_s=30, cpus=[kept])
        share()
        assert pauses == [], "no pause: it encodes beside the capture"
        assert os.sched_getaffinity(0) == all_cpus - {kept}
        assert os.sched_getaffinity(worker_thread.native_id) == all_cpus - {kept}
        ledger.announce_capture(HOST, ttl_s=30)  # a recorder that names no CPU: all
        waiting = threading.Thread(target=share)
        waiting.start()
        wait_for(lambda: pauses == [True], timeout_s=10, what="a pause")
        ledger.end_capture(HOST)
        waiting.join(timeout=10)
        share()
        assert os.sched_getaffinity(0) == all_cpus, "back on every CPU"
    finally:
        os.sched_setaffinity(0, all_cpus)


def test_a_capture_that_keeps_no_cpu_leaves_every_cpu_to_a_sharing_encode(broker_url):
    all_cpus = os.sched_getaffinity(0)
    ledger = JobLedger(redis_client(broker_url))
    pauses: list[bool] = []
    share = CaptureYield(ledger, budget_s=60, on_pause=pauses.append, share=True)
    ledger.announce_capture(HOST, ttl_s=30, cpus=[])  # --capture-cpus 0
    share()
    assert pauses == [] and os.sched_getaffinity(0) == all_cpus
    strict = CaptureYield(ledger, budget_s=0.5, on_pause=pauses.append)
    strict()  # --yield-to-capture still pauses for it
    assert pauses == [True, False]


def test_a_job_that_starts_beside_a_capture_it_shares_gets_svt_av1s_fewest_threads(
        tmp_path, broker_url):
    all_cpus = os.sched_getaffinity(0)
    if len(all_cpus) < 2:
        pytest.skip("sharing CPUs with a capture needs 2 of them")
    storage = open_storage(tmp_path)
    job = job_for(storage, write_episode(storage, frames=2))
    ledger = JobLedger(redis_client(broker_url))
    share = CaptureYield(ledger, budget_s=60, share=True)
    assert share.fitted(job) == job  # no capture
    ledger.announce_capture(HOST, ttl_s=30, cpus=[min(all_cpus)])
    assert share.fitted(job).options.extra == {"svtav1-params": "lp=1"}
    assert share.fitted(job).options.codec_options()["svtav1-params"] == "lp=1"
    # Not for other codecs, a user's own SVT parameters, or a pausing worker.
    x264 = job.model_copy(update={"options": job.options.model_copy(update={"codec": "libx264"})})
    assert share.fitted(x264) == x264
    own = job.model_copy(update={"options": job.options.model_copy(
        update={"extra": {"svtav1-params": "lp=2"}})})
    assert share.fitted(own) == own
    assert CaptureYield(ledger, budget_s=60).fitted(job) == job
    ledger.announce_capture(HOST, ttl_s=30, cpus=[])  # --capture-cpus 0: every CPU
    assert share.fitted(job) == job


def test_a_job_that_ends_during_a_capture_leaves_the_next_job_every_cpu(broker_url):
    all_cpus = os.sched_getaffinity(0)
    if len(all_cpus) < 2:
        pytest.skip("sharing CPUs with a capture needs 2 of them")
    ledger = JobLedger(redis_client(broker_url))
    ledger.announce_capture(HOST, ttl_s=30, cpus=[min(all_cpus)])
    try:
        first = CaptureYield(ledger, budget_s=60, share=True)
        first()
        assert os.sched_getaffinity(0) == all_cpus - {min(all_cpus)}
        first.release()  # the job is over, the capture goes on
        assert os.sched_getaffinity(0) == all_cpus
        first()  # a job killed before its release: left on the capture's leftovers
        ledger.end_capture(HOST)
        following = CaptureYield(ledger, budget_s=60, share=True)
        following()
        assert os.sched_getaffinity(0) == all_cpus
    finally:
        os.sched_setaffinity(0, all_cpus)


def test_a_worker_sharing_the_host_encodes_through_the_capture(tmp_path, broker_url,
                                                               start_worker):
    all_cpus = os.sched_getaffinity(0)
    if len(all_cpus) < 2:
        pytest.skip("sharing CPUs with a capture needs 2 of them")
    storage = open_storage(tmp_path / "data")
    manifest = write_episode(storage, frames=120, width=320, height=240)
    worker = start_worker(broker_url, "--share-with-capture", "--concurrency", "1")
    client = redis_client(broker_url)
    ledger = JobLedger(client)
    ledger.announce_capture(HOST, ttl_s=120, cpus=[min(all_cpus)])
    free = ",".join(map(str, sorted(all_cpus - {min(all_cpus)})))
    with EncodingFarmClient(broker_url) as farm:
        farm.submit(job_for(storage, manifest))
        [result] = farm.wait(timeout_s=120)  # never ended the capture: no pause
    assert result.status is Status.SUCCEEDED, result.error
    assert result.timings.paused_s == 0
    assert f"is capturing: encoding on CPUs {free}" in worker.output()
    check_video_against_raw(storage.path(result.output_key), storage.url,
                            raw_prefix(recording=0, camera="cam0"))


def test_a_worker_sharing_the_host_as_root_encodes_within_a_cpu_cap(tmp_path, broker_url,
                                                                    start_worker):
    skip_without_cpu_cgroup()
    require(os.geteuid() == 0, "a worker caps its CPU time through a cgroup as root")
    storage = open_storage(tmp_path / "data")
    manifest = write_episode(storage, frames=120, width=320, height=240)
    group = CpuCap._find(TEST_CPU_CAP_GROUP, cpu_cap.MOUNTS)
    group.folder.mkdir(exist_ok=True)  # as a worker that died mid-capture left it: capped
    if group.version == 1:
        (group.folder / "cpu.cfs_period_us").write_text(str(cpu_cap.PERIOD_US))
    group.limit(0.5)
    worker = start_worker(broker_url, "--share-with-capture", "--concurrency", "1")
    assert "capped through the cgroup" in worker.output(), worker.output()
    assert group.cap_cpus() is None, "a starting worker lifts a cap left behind"
    assert str(worker.process.pid) in (group.folder / "cgroup.procs").read_text().split()
    ledger = JobLedger(redis_client(broker_url))
    all_cpus = os.sched_getaffinity(0)
    ledger.announce_capture(HOST, ttl_s=120, cpus=[min(all_cpus)], cpu_time=0.7)
    left = len(all_cpus) - 0.7
    with EncodingFarmClient(broker_url) as farm:
        farm.submit(job_for(storage, manifest))
        [result] = farm.wait(timeout_s=120)
    assert result.status is Status.SUCCEEDED, result.error
    assert f"capped at {left:.2f} CPUs" in result.beside_capture
    assert group.cap_cpus() == pytest.approx(left), "the capture goes on: still capped"
    check_video_against_raw(storage.path(result.output_key), storage.url,
                            raw_prefix(recording=0, camera="cam0"))


def test_a_worker_paused_for_a_recorder_that_is_killed_goes_on_within_seconds(
        tmp_path: Path, broker_url: str, start_worker: Callable[..., WorkerProcess]) -> None:
    storage = open_storage(tmp_path / "data")
    manifest = write_episode(storage, frames=90, width=320, height=240)
    start_worker(broker_url, "--yield-to-capture")
    ledger = JobLedger(redis_client(broker_url))
    recorder = subprocess.Popen(
        [sys.executable, "-m", "recorder.cli", "record", "--async-encoding", "--broker",
         broker_url, "--episodes", "1", "--episode-time", "300", "--cameras", "1", "--width",
         "160", "--height", "120", "--codec", "libx264", "--output-dir", str(tmp_path / "out")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    try:
        wait_for(lambda: ledger.capturing(HOST), timeout_s=120,
                 what="the recorder to capture an episode")
        with EncodingFarmClient(broker_url) as farm:
            farm.submit(job_for(storage, manifest))

            def paused() -> bool:
                record = ledger.client.hget(PROGRESS_KEY, f"test-ep{manifest.episode}-cam0")
                return record is not None and json.loads(record).get("paused_for_capture")
            wait_for(paused, timeout_s=60, what="the worker to pause for the capture")
            os.killpg(recorder.pid, signal.SIGKILL)  # mid-episode: it never ends the capture
            killed_at = time.time()
            recorder.wait(timeout=60)
            [result] = farm.wait(timeout_s=120)
    finally:
        if recorder.poll() is None:
            os.killpg(recorder.pid, signal.SIGKILL)
            recorder.wait(timeout=60)
    assert result.status is Status.SUCCEEDED, result.error
    # The encode pauses before its first frame, so it went on at started_at + paused_s:
    # the recorder's last word lapses after 3 s, and the worker looks again within a second.
    went_on_after_kill_s = result.started_at + result.timings.paused_s - killed_at
    print(f"the encode went on {went_on_after_kill_s:.1f}s after the recorder was killed")
    assert 0 < went_on_after_kill_s < 10, went_on_after_kill_s
    assert not ledger.capturing(HOST)
