"""A failed job as Celery's own tools see it: FAILURE state, task-failed event, acknowledged
once; the recorder rebuilds the whole result from the exception."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from conftest import wait_for
from episodes import job_for, write_episode

from encoder_worker.broker import redis_client
from encoder_worker.celery_app import make_app
from encoder_worker.jobs import (
    EncodeResult,
    EncoderOptions,
    FailureReason,
    JobFailed,
    Status,
    failed_result,
)
from encoder_worker.ledger import FAILED_KEY, KOMBU_UNACKED_KEY
from encoder_worker.raw_layout import raw_prefix
from encoder_worker.storage import open_storage
from recorder.farm.client import EncodingFarmClient


class EventLog:
    """Celery's event receiver (what Flower and `celery events` use) in a thread."""

    def __init__(self, app: Any) -> None:
        self.events: list[dict[str, Any]] = []
        self._connection = app.connection_for_read()
        self._receiver = app.events.Receiver(self._connection,
                                             handlers={"*": self.events.append})
        self._thread = threading.Thread(target=self._receiver.capture, daemon=True,
                                        kwargs={"limit": None, "wakeup": True})

    def of(self, uuid: str) -> list[dict[str, Any]]:
        return [event for event in list(self.events) if event.get("uuid") == uuid]

    def __enter__(self) -> EventLog:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._receiver.should_stop = True
        self._thread.join(timeout=30)
        self._connection.close()


@pytest.mark.integration
def test_a_failed_job_ends_in_failure_with_its_reason(tmp_path, broker_url, start_worker):
    storage = open_storage(tmp_path / "data")
    job = job_for(storage, write_episode(storage, frames=20), job_id="broken",
                  options=EncoderOptions(codec="libx264"))
    segment = storage.path(raw_prefix(recording=0, camera="cam0") + "/segment_00001.raw")
    segment.write_bytes(segment.read_bytes()[:-1] + b"\x00")  # corrupt: the job fails
    good = job_for(storage, write_episode(storage, episode=1, frames=5), job_id="good",
                   options=EncoderOptions(codec="libx264"))
    worker = start_worker(broker_url, "--concurrency", "1")
    app = make_app(broker_url)
    client = redis_client(broker_url)
    try:
        with EventLog(app) as log, EncodingFarmClient(broker_url) as farm:
            # The worker's heartbeat: the receiver listens (events are published, not kept).
            wait_for(lambda: any(e["type"] == "worker-heartbeat" for e in list(log.events)),
                     timeout_s=30, what="a worker heartbeat event")
            farm.submit(job)
            handle = app.AsyncResult(job.job_id)
            wait_for(handle.ready, timeout_s=120, what="the broken job's end")
            assert handle.state == "FAILURE"
            assert isinstance(handle.result, JobFailed)
            assert str(handle.result).startswith("raw_episode: RawEpisodeError: segment")
            failed = wait_for(lambda: [e for e in log.of("broken")
                                       if e["type"] == "task-failed"],
                              timeout_s=30, what="the task-failed event")
            assert isinstance(failed, list)
            assert failed[0]["exception"].startswith("JobFailed('raw_episode: RawEpisodeError")
            # The recorder gets the whole result back: reason, error, timings, worker.
            [result] = farm.wait(timeout_s=60)
            assert result.status is Status.FAILED and result.reason is FailureReason.RAW_EPISODE
            assert "segment_00001.raw is corrupt" in (result.error or "")
            assert result.timings.total_s > 0 and result.started_at > 0
            assert result.worker_pid > 0 and result.worker_pid != worker.process.pid
            # Acknowledged, not requeued: the next job in this one-slot worker's queue
            # runs after it, and the broken one never runs again.
            farm.submit(good)
            [_, second] = farm.wait(timeout_s=120)
            assert second.status is Status.SUCCEEDED, second.error
            wait_for(lambda: [e for e in log.of("good") if e["type"] == "task-succeeded"],
                     timeout_s=30, what="the good job's task-succeeded event")
            # task-sent comes from the recorder, the others from the worker: two publishers,
            # so it may come late or before them (seen both ways under load).
            wait_for(lambda: "task-sent" in [e["type"] for e in log.of("broken")],
                     timeout_s=30, what="the broken job's task-sent event")
            kinds = [e["type"] for e in log.of("broken")]
        assert sorted(kinds) == ["task-failed", "task-received", "task-sent", "task-started"]
        assert [k for k in kinds if k != "task-sent"] == [
            "task-received", "task-started", "task-failed"]
        assert client.llen("encode") == 0 and client.hlen(KOMBU_UNACKED_KEY) == 0
        assert client.hexists(FAILED_KEY, "broken")  # for `encoder-worker failed`
        assert "Traceback" not in worker.output()  # an expected failure, said in one line
    finally:
        app.close()


def test_a_client_without_the_contract_module_rebuilds_the_result():
    app = make_app("redis://127.0.0.1:1/0")  # never connected: the serializer alone
    result = EncodeResult(job_id="j", recording=3, camera="cam0", status=Status.FAILED,
                          error="StorageError: NoSuchBucket", reason=FailureReason.STORAGE,
                          output_storage="s3://b/d", output_key="v.mp4", worker_pid=7)
    result.timings.total_s = 1.5
    stored = app.backend.prepare_exception(JobFailed.of(result), "json")
    assert stored["exc_type"] == "JobFailed"
    # What the recorder rebuilds, as its own class, or as the stand-in class Celery
    # makes when the exception's module is not imported in the client's process.
    for module in (stored["exc_module"], "encoder_worker.not_imported_here"):
        rebuilt = app.backend.exception_to_python(stored | {"exc_module": module})
        assert failed_result(rebuilt) == result
    assert failed_result(ValueError("j", {"status": "failed"})) is None
    app.close()
