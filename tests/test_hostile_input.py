"""What a worker receives never crashes it: bad payloads and manifests become failed
results with the reason; transient storage errors are not counted as worker deaths."""

from __future__ import annotations

import json

import fakeredis
import pytest
from conftest import wait_for
from episodes import job_for, slow_job, write_episode
from pydantic import ValidationError

from encoder_worker import mounts, tasks
from encoder_worker.broker import redis_client
from encoder_worker.encode import encode_job
from encoder_worker.jobs import ENCODE_QUEUE, EncodeJob, EncoderOptions, FailureReason, Status
from encoder_worker.ledger import REJECTED_KEY, TIME_LIMITS_PREFIX, JobLedger
from encoder_worker.raw_layout import manifest_key, raw_prefix
from encoder_worker.settings import WorkerSettings
from encoder_worker.storage import StorageError, local_storage_id, open_storage
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


def test_transient_storage_errors_are_not_counted_as_worker_deaths(storage, monkeypatch):
    client = fakeredis.FakeRedis()
    job = job_for(storage, write_episode(storage, frames=3))
    calls = []

    def flaky(job, **_):
        calls.append(job.job_id)
        if len(calls) <= tasks.MAX_ENCODE_ATTEMPTS + 1:
            raise StorageError("S3 timed out")
        return encode_job(job)

    monkeypatch.setattr(tasks, "encode_job", flaky)
    settings = WorkerSettings()
    ledger = JobLedger(client)
    lease = ledger.lease(job.job_id, ttl_s=60)
    for _ in range(tasks.MAX_ENCODE_ATTEMPTS + 1):
        with pytest.raises(StorageError):
            tasks._encode_counted(ledger, job, settings, lease)
    result = tasks._encode_counted(ledger, job, settings, lease)
    assert result.status is Status.SUCCEEDED, result.error
    assert client.get("farm:attempts:" + job.job_id) is None


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
