"""What a worker receives never crashes it: bad payloads and manifests become failed
results with the reason; transient storage errors are retried, not counted as worker
deaths; an encode over its time limit is stopped, and killed if it cannot stop."""

from __future__ import annotations

import functools
import json
import os
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from celery import Celery
from conftest import WorkerProcess, free_port, wait_for
from episodes import job_for, slow_job, write_episode
from faulty_s3 import FaultyS3
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError
from s3_fixtures import MotoServer

from encoder_worker import mounts, tasks
from encoder_worker.broker import redis_client
from encoder_worker.celery_app import ENCODE_TASK, make_app
from encoder_worker.encode import encode_job
from encoder_worker.jobs import ENCODE_QUEUE, EncodeJob, EncoderOptions, FailureReason, Status
from encoder_worker.ledger import (
    ATTEMPTS_PREFIX,
    PROGRESS_KEY,
    REJECTED_KEY,
    TIME_LIMITS_PREFIX,
    JobLedger,
)
from encoder_worker.raw_layout import manifest_key, raw_prefix
from encoder_worker.reaper import LeaseReaper
from encoder_worker.settings import WorkerSettings
from encoder_worker.storage import local_storage_id, open_storage
from encoder_worker.storage.s3 import S3Settings
from encoder_worker.tasks import MAX_ENCODE_ATTEMPTS
from recorder.farm import client as farm_client
from recorder.farm.client import EncodingFarmClient


@pytest.fixture
def storage(tmp_path):
    return open_storage(tmp_path / "dataset")


@pytest.mark.parametrize("payload", [
    5, "not a job", None, [1, 2],
    {"job_id": "j", "recording": "abc", "camera": "cam0"},
    {"job_id": "j", "recording": True},
])
def test_invalid_payloads_become_failed_results(payload):
    try:
        EncodeJob.model_validate(payload)
    except ValidationError as exc:
        result = tasks._invalid_payload(payload, exc)
    assert result.status is Status.FAILED
    assert result.error is not None and result.error.startswith("invalid EncodeJob payload")
    assert result.recording == -1
    assert result.reason is FailureReason.INVALID_PAYLOAD


def test_a_job_of_another_schema_version_is_refused_with_the_reason(storage):
    payload = job_for(storage, write_episode(storage, frames=2)).model_dump(mode="json")
    payload["schema_version"] = 99
    with pytest.raises(ValidationError, match="schema_version 99; this worker reads 2"):
        EncodeJob.model_validate(payload)


def test_a_manifest_with_an_unknown_pixel_format_fails_the_job_with_the_reason(storage):
    manifest = write_episode(storage, frames=3)
    key = manifest_key(raw_prefix(recording=0, camera="cam0"))
    storage.put_bytes(key, storage.get_bytes(key).replace(b'"rgb24"', b'"yuv444p"'))
    result = encode_job(job_for(storage, manifest))
    assert result.status is Status.FAILED
    assert "raw pixel format 'yuv444p' is not one of" in (result.error or "")
    assert result.reason is FailureReason.RAW_EPISODE


@pytest.mark.integration
def test_transient_storage_errors_are_retried_and_not_counted_as_worker_deaths(
        tmp_path: Path, s3_url: str, moto_server: MotoServer, broker_url: str,
        start_worker: Callable[..., WorkerProcess]) -> None:
    # S3 throttles the worker's reads of the raw frames: more failed runs than a job may
    # kill its worker (MAX_ENCODE_ATTEMPTS), so counted as deaths it would fail.
    local, storage = open_storage(tmp_path / "recorded"), open_storage(s3_url)
    manifest = write_episode(local, frames=10)
    for key in local.list_keys("raw"):  # as the recorder's upload spool puts them
        storage.put_bytes(key, local.get_bytes(key))
    job = job_for(storage, manifest, job_id="throttled", options=EncoderOptions(codec="libx264"))
    runs = MAX_ENCODE_ATTEMPTS + 1
    # boto3 tries each request first (its max_attempts counts the retries after the first).
    attempts = S3Settings().max_attempts + 1
    port = free_port()
    with FaultyS3(moto_server.url, fail=runs * attempts,
                  matching=lambda method, path: method == "GET" and "/segment_" in path) \
            as throttling:
        worker = start_worker(broker_url, "--metrics-port", str(port),
                              env={"FARM_S3_ENDPOINT_URL": throttling.url,
                                   "FARM_WORKER_ALLOW_STORAGE": s3_url})
        with EncodingFarmClient(broker_url) as farm:
            farm.submit(job)
            [result] = farm.wait(timeout_s=240)
        assert throttling.failed == runs * attempts, "every throttled answer reached it"
        log = worker.output()
    assert result.status is Status.SUCCEEDED, result.error
    assert storage.exists(job.output_key)
    # Celery retried it once per failed run, with the reason; no run counted as a death.
    samples = scrape(port)
    assert samples[("farm_jobs_retried_total", (("reason", "transient_error"),))] == runs
    assert samples[("farm_jobs_succeeded_total", (("outcome", "encoded"),))] == 1
    assert sum(v for (name, _), v in samples.items() if name == "farm_jobs_failed_total") == 0
    assert log.count("SlowDown") >= runs, log
    assert "its worker died" not in log


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample a worker serves on --metrics-port: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.integration
def test_items_that_are_not_messages_are_set_aside_and_no_worker_exits(
        tmp_path, broker_url, start_worker):
    worker = start_worker(broker_url)
    client = redis_client(broker_url)
    good = {"body": "bm90IGJhc2U2NA==", "headers": {},
            "properties": {"delivery_tag": "x", "body_encoding": "base64"}}
    hostile = ["not json at all", "5", json.dumps(good | {"body": "***not base64***"}),
               json.dumps({"properties": {}})]
    for item in hostile:
        client.lpush(ENCODE_QUEUE, item)
    wait_for(lambda: client.llen(REJECTED_KEY) == len(hostile), timeout_s=60,
             what="the worker to set every hostile item aside")
    reasons = [json.loads(r)["reason"] for r in client.lrange(REJECTED_KEY, 0, -1)]
    assert any(r.startswith("not JSON") for r in reasons)
    assert any("a JSON int, not a message envelope" in r for r in reasons)
    assert any("not base64" in r for r in reasons)
    assert worker.process.poll() is None, worker.output()
    # The same worker still encodes a real job.
    storage = open_storage(tmp_path / "data")
    job = job_for(storage, write_episode(storage, frames=5),
                  options=EncoderOptions(codec="libx264"))
    with EncodingFarmClient(broker_url) as farm:
        farm.submit(job)
        [result] = farm.wait(timeout_s=120)
    assert result.status is Status.SUCCEEDED, result.error
    assert worker.process.poll() is None
    assert "rejected an item on queue" in worker.output()


@pytest.mark.integration
def test_what_a_worker_cannot_use_comes_back_as_a_failed_result_with_the_reason(
        tmp_path: Path, broker_url: str, start_worker: Callable[..., WorkerProcess]) -> None:
    storage = open_storage(tmp_path / "data")
    job = job_for(storage, write_episode(storage, frames=3),
                  options=EncoderOptions(codec="libx264")).model_dump(mode="json")
    key = manifest_key(raw_prefix(recording=0, camera="cam0"))
    storage.put_bytes(key, storage.get_bytes(key).replace(b'"rgb24"', b'"yuv444p"'))
    sent = {  # task id -> payload, as anyone who can write to the queue may send it
        "number": 5, "text": "not a job", "none": None, "list": [1, 2],
        "recording-abc": {"job_id": "j", "recording": "abc", "camera": "cam0"},
        "schema-99": {**job, "schema_version": 99},
        "pixel-format": job,
    }
    worker = start_worker(broker_url)
    app = make_app(broker_url)

    def finished(task_id: str) -> bool:
        return bool(app.AsyncResult(task_id).ready())

    try:
        for task_id, payload in sent.items():
            app.send_task(ENCODE_TASK, args=[payload], task_id=task_id, queue=ENCODE_QUEUE)
        for task_id in sent:
            wait_for(functools.partial(finished, task_id), timeout_s=60,
                     what=f"the result of {task_id}")
        errors = {task_id: failure_of(app, task_id) for task_id in sent}
    finally:
        app.close()
    for task_id in ("number", "text", "none", "list", "recording-abc"):
        assert "invalid EncodeJob payload" in errors[task_id], errors[task_id]
    assert "schema_version 99; this worker reads 2" in errors["schema-99"]
    assert "raw pixel format 'yuv444p' is not one of" in errors["pixel-format"]
    assert worker.process.poll() is None, worker.output()


def failure_of(app: Celery, task_id: str) -> str:
    """The reason a finished task failed: a failed EncodeResult's error, or the exception
    of a task in Celery's FAILURE state."""
    handle = app.AsyncResult(task_id)
    if handle.state == "SUCCESS":
        assert handle.result["status"] == "failed", handle.result
        return str(handle.result["error"])
    assert handle.state == "FAILURE", handle.state
    return str(handle.result)


@pytest.mark.parametrize("key", ["../../etc/passwd", "/etc/passwd", "videos/../../x.mp4"])
def test_job_keys_that_climb_out_of_their_storage_are_invalid(storage, key):
    payload = job_for(storage, write_episode(storage, frames=2)).model_dump(mode="json")
    for field in ("raw_prefix", "output_key"):
        with pytest.raises(ValidationError, match=r"must be relative and without '\.\.' parts"):
            EncodeJob.model_validate({**payload, field: key})


def test_only_allowed_storage_is_accepted(tmp_path, storage):
    job = job_for(storage, write_episode(storage, frames=2))
    allowed = WorkerSettings(allow_storage=f"{tmp_path / 'dataset'},s3://farm/robots")
    assert mounts.storage_not_allowed(job, allowed) is None
    (tmp_path / "link").symlink_to("/")
    for update in ({"output_storage": str(tmp_path / "elsewhere")}, {"raw_storage": "/"},
                   {"raw_storage": str(tmp_path / "dataset" / ".." / "other")},
                   {"output_storage": str(tmp_path / "link" / "tmp")},
                   {"output_storage": "s3://farm/robots-other"},
                   {"output_storage": "s3://other-bucket/robots"}):
        problem = mounts.storage_not_allowed(job.model_copy(update=update), allowed)
        assert problem is not None and "is not one this worker may use" in problem, update
        assert "--allow-storage" in problem
    inside = job.model_copy(update={"output_storage": "s3://farm/robots/team-a"})
    assert mounts.storage_not_allowed(inside, allowed) is None
    # --storage is allowed by itself: the job's local folders are read at that mount.
    mounted = WorkerSettings(storage=str(tmp_path / "dataset"))
    assert mounts.storage_not_allowed(mounts.localize(job, mounted), mounted) is None


@pytest.mark.integration
def test_a_worker_that_crashes_exits_non_zero(broker_url, start_worker):
    # Not what it received, but a broken broker: the queue key is no longer a list. The
    # worker cannot go on; a supervisor must see it fail (before: exit status 0).
    worker = start_worker(broker_url)
    redis_client(broker_url).set(ENCODE_QUEUE, "not a list")
    wait_for(lambda: worker.process.poll() is not None, timeout_s=60,
             what="the worker to stop on the broken queue")
    assert worker.process.returncode == 1, worker.output()
    assert "Unrecoverable error" in worker.output()
    assert "the worker stopped on an error (exit code 1)" in worker.output()


@pytest.mark.integration
def test_a_job_naming_storage_outside_the_allow_list_fails_at_once(
        tmp_path, broker_url, start_worker):
    data = open_storage(tmp_path / "data")
    start_worker(broker_url, env={"FARM_WORKER_ALLOW_STORAGE": str(tmp_path / "data")})
    job = job_for(data, write_episode(data, frames=5), options=EncoderOptions(codec="libx264"))
    elsewhere = tmp_path / "elsewhere"
    bad = [job.model_copy(update={"job_id": "out", "output_storage": str(elsewhere)}),
           job.model_copy(update={"job_id": "root", "raw_storage": "/"})]
    with EncodingFarmClient(broker_url) as farm:
        for each in bad:
            farm.submit(each)
        results = farm.wait(timeout_s=60)
    assert {result.job_id for result in results} == {"out", "root"}
    for result in results:
        assert result.status is Status.FAILED
        assert "is not one this worker may use" in (result.error or "")
        assert result.reason is FailureReason.STORAGE_NOT_ALLOWED
    assert not elsewhere.exists()


@pytest.mark.integration
def test_a_worker_whose_mount_is_another_folder_fails_the_job_at_once(
        tmp_path, broker_url, start_worker):
    # As in a compose farm: the worker's --storage is its mount of the farm's folder, but
    # the recorder kept its own default folder. Before, the job waited an hour.
    mount = tmp_path / "farm-data"
    mount.mkdir()
    start_worker(broker_url, "--storage", str(mount))
    recorder_folder = open_storage(tmp_path / "recorder-data")
    job = job_for(recorder_folder, write_episode(recorder_folder, frames=5),
                  options=EncoderOptions(codec="libx264"))
    job = job.model_copy(update={"raw_storage_id": local_storage_id(recorder_folder,
                                                                     create=True)})
    with EncodingFarmClient(broker_url) as farm:
        farm.submit(job)
        [result] = farm.wait(timeout_s=60)
    assert result.status is Status.FAILED
    assert "not the recorder's folder" in (result.error or "")
    assert "recorder --storage PATH" in (result.error or "")
    assert result.reason is FailureReason.STORAGE_MISMATCH


@pytest.mark.integration
def test_an_encode_over_its_time_limit_is_stopped_retried_and_reported(
        tmp_path, broker_url, start_worker):
    storage = open_storage(tmp_path / "data")
    # Far slower than its (test-sized) limit, as a hung encoder would be.
    job = slow_job(storage, frames=240, job_id="slow")
    job.time_limit_s = 1.0
    worker = start_worker(broker_url)
    with EncodingFarmClient(broker_url) as farm:
        farm.submit(job)
        [result] = farm.wait(timeout_s=240)
    assert result.status is Status.FAILED
    assert "ran over its time limit of 1s 2 times" in (result.error or "")
    assert result.reason is FailureReason.TIME_LIMIT
    assert "ran over its time limit" in worker.output()
    assert not storage.exists(job.output_key), "nothing is published"
    assert redis_client(broker_url).get(TIME_LIMITS_PREFIX + "slow") is None


@pytest.mark.integration
def test_an_encode_that_cannot_stop_at_its_soft_limit_is_killed_at_the_hard_limit(
        tmp_path: Path, broker_url: str, start_worker: Callable[..., WorkerProcess],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The recorder sends each job's hard limit 60 s after its soft one; seconds here.
    assert farm_client.HARD_TIME_LIMIT_MARGIN_S == 60
    monkeypatch.setattr(farm_client, "HARD_TIME_LIMIT_MARGIN_S", 3.0)
    storage = open_storage(tmp_path / "data")
    job = slow_job(storage, frames=240, job_id="hung")
    job.time_limit_s = 2.0
    # The lease outlives the hard limit, as a hung encoder's heartbeat keeps it.
    worker = start_worker(broker_url, env={"FARM_WORKER_LEASE_TTL_S": "10"})
    client = redis_client(broker_url)
    with EncodingFarmClient(broker_url) as farm:
        farm.submit(job)
        wait_for(lambda: client.hexists(PROGRESS_KEY, "hung"), timeout_s=60,
                 what="the encode to start")
        encoding = json.loads(client.hget(PROGRESS_KEY, "hung"))["pid"]
        # Stopped: it gets no CPU, so it cannot act on its soft limit (SIGUSR1) either.
        os.kill(encoding, signal.SIGSTOP)
        [result] = farm.wait(timeout_s=60)
        # Read before the lease lapses: the killed run counts as its worker's death.
        attempts = client.get(ATTEMPTS_PREFIX + "hung")
    assert result.status is Status.FAILED
    assert "TimeLimitExceeded(5.0" in (result.error or ""), result.error
    assert attempts == b"1"
    wait_for(lambda: not os.path.exists(f"/proc/{encoding}"), timeout_s=30,
             what="the stopped process to be killed")
    assert "Hard time limit (5.0s) exceeded for encoder_worker.encode[hung]" in worker.output()
    # The job failed, not lost: once the killed run's lease lapses no reaper sends it
    # again, and `encoder-worker failed` lists it.
    ledger = JobLedger(client)
    wait_for(lambda: not ledger.leased("hung"), timeout_s=30,
             what="the killed run's lease to lapse")
    assert not ledger.claimed("hung")
    kept = ledger.failures()["hung"]
    assert kept["result"]["reason"] == FailureReason.TIME_LIMIT.value
    assert "killed at its hard time limit (5.0s)" in kept["result"]["error"]
    reaper = LeaseReaper(client, lease_ttl_s=10, resend=lambda *_: pytest.fail("sent again"),
                         is_done=lambda _: False)
    assert reaper.reap_once() == []
    assert not storage.exists(job.output_key)
    assert worker.process.poll() is None, worker.output()
