"""What a worker receives never crashes it: bad payloads and manifests become failed
results with the reason; transient storage errors are not counted as worker deaths."""

from __future__ import annotations

import fakeredis
import pytest
from episodes import job_for, write_episode
from pydantic import ValidationError

from encoder_worker import tasks
from encoder_worker.encode import encode_job
from encoder_worker.jobs import EncodeJob, Status
from encoder_worker.lease import JobLease
from encoder_worker.raw_episode import manifest_key, raw_prefix
from encoder_worker.settings import WorkerSettings
from encoder_worker.storage import StorageError, open_storage


@pytest.fixture
def storage(tmp_path):
    return open_storage(tmp_path / "dataset")


@pytest.mark.parametrize("payload", [
    5, "not a job", None, [1, 2],
    {"job_id": "j", "episode": "abc", "camera": "cam0"},
    {"job_id": "j", "episode": True},
])
def test_invalid_payloads_become_failed_results(payload):
    try:
        EncodeJob.model_validate(payload)
    except ValidationError as exc:
        result = tasks._invalid_payload(payload, exc)
    assert result.status is Status.FAILED
    assert result.error is not None and result.error.startswith("invalid EncodeJob payload")
    assert result.episode == -1


def test_a_job_of_another_schema_version_is_refused_with_the_reason(storage):
    payload = job_for(storage, write_episode(storage, frames=2)).model_dump(mode="json")
    payload["schema_version"] = 99
    with pytest.raises(ValidationError, match="schema_version 99; this worker reads 1"):
        EncodeJob.model_validate(payload)


def test_a_manifest_with_an_unknown_pixel_format_fails_the_job_with_the_reason(storage):
    manifest = write_episode(storage, frames=3)
    key = manifest_key(raw_prefix(episode=0, camera="cam0"))
    storage.put_bytes(key, storage.get_bytes(key).replace(b'"rgb24"', b'"yuv444p"'))
    result = encode_job(job_for(storage, manifest))
    assert result.status is Status.FAILED
    assert "raw pixel format 'yuv444p' is not one of" in (result.error or "")


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
    lease = JobLease(client, job.job_id, ttl_s=60)
    for _ in range(tasks.MAX_ENCODE_ATTEMPTS + 1):
        with pytest.raises(StorageError):
            tasks._encode_counted(client, job, settings, lease)
    result = tasks._encode_counted(client, job, settings, lease)
    assert result.status is Status.SUCCEEDED, result.error
    assert client.get(tasks.ATTEMPTS_PREFIX + job.job_id) is None
