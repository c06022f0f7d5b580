"""`encoder-worker status`: real Redis, real workers; and its pure parts without a server."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

import fakeredis
import pytest
from conftest import REPO, wait_for
from episodes import job_for, slow_job, write_episode
from rich.console import Console

from encoder_worker.broker import redis_client
from encoder_worker.celery_app import ENCODE_TASK, make_app
from encoder_worker.jobs import EncodeResult, EncoderOptions, FailureReason
from encoder_worker.ledger import (
    FINISHED_KEY,
    FINISHED_WINDOW_S,
    PROGRESS_KEY,
    JobLedger,
    LedgerSnapshot,
)
from encoder_worker.metrics import FAILURE_REASONS
from encoder_worker.raw_layout import manifest_key, raw_prefix
from encoder_worker.status import build_status, farm_status
from encoder_worker.status_view import duration, render
from encoder_worker.storage import open_storage
from recorder.farm.client import EncodingFarmClient


def status_cli(broker: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "encoder_worker.cli", "status", "--broker",
                           broker, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def finished(broker: str) -> int:
    recent = farm_status(broker).recent
    return recent.completed + recent.failed


def status_json(broker: str) -> dict[str, Any]:
    done = status_cli(broker, "--json")
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def between_looks(status: dict[str, Any]) -> dict[str, Any] | None:
    """The status, if it was read while no worker ran a job and "early" was waiting."""
    running = any(worker["jobs"] for worker in status["workers"])
    return None if running or not status["waiting"] else status


@pytest.mark.integration
def test_status_shows_workers_their_jobs_progress_and_the_last_hour(
        tmp_path, broker_url, start_worker):
    storage = open_storage(tmp_path / "data")
    # Long enough to be seen mid-encode (about 10 s here).
    slow = slow_job(storage, frames=300, job_id="slow")
    broken = job_for(storage, write_episode(storage, episode=1, frames=10), job_id="broken",
                     options=EncoderOptions(codec="libx264"))
    segment = storage.path(raw_prefix(recording=1, camera="cam0") + "/segment_00000.raw")
    segment.write_bytes(segment.read_bytes()[:-1] + b"\x00")  # corrupt: the job fails
    early = job_for(storage, write_episode(storage, episode=2, frames=10), job_id="early",
                    options=EncoderOptions(codec="libx264"))
    storage.delete(manifest_key(early.raw_prefix))  # as if still uploading: it waits
    start_worker(broker_url, "--concurrency", "2")
    with EncodingFarmClient(broker_url) as farm:
        farm.submit(slow)
        wait_for(lambda: any(job.frames_done for worker in farm_status(broker_url).workers
                             for job in worker.jobs),
                 timeout_s=60, what="the slow job's first progress")
        status = status_json(broker_url)
        [worker] = status["workers"]
        assert worker["name"] == "w0@test" and worker["answered"]
        assert worker["host"] == socket.gethostname() and worker["concurrency"] == 2
        [job] = worker["jobs"]
        assert (job["job_id"], job["recording"], job["camera"]) == ("slow", 0, "cam0")
        assert job["frames_total"] == 300 and 0 < job["frames_done"] <= 300
        assert job["fps"] > 0 and job["running_s"] > 0
        assert worker["fps"] == job["fps"] and status["fps"] == job["fps"]
        [lease] = status["leases"]
        assert lease["job_id"] == "slow" and lease["worker"] == "w0@test"
        assert lease["lease_left_s"] > 0
        farm.submit(broken)
        farm.submit(early)
        wait_for(lambda: farm_status(broker_url).waiting, timeout_s=60,
                 what="the job without a manifest to wait in a countdown")
        # "early" waits for its manifest for as long as the test runs: no farm.wait().
        wait_for(lambda: finished(broker_url) >= 2, timeout_s=240,
                 what="slow and broken to finish")
        # "early" is briefly a running job each time its countdown ends and it looks for
        # its manifest again: read the farm between two such looks.
        status = wait_for(lambda: between_looks(status_json(broker_url)), timeout_s=60,
                          what="a status read while 'early' waits in its countdown")
        printed = status_cli(broker_url)
    recent = status["recent"]
    assert (recent["completed"], recent["succeeded"], recent["failed"]) == (1, 1, 1)
    assert recent["failed_by_reason"] == {"raw_episode": 1}
    assert recent["frames"] == 300
    assert 0 < recent["mean_encode_s"] == recent["p95_encode_s"]
    assert recent["encode_fps"] == pytest.approx(300 / recent["mean_encode_s"])
    [worker] = status["workers"]
    assert worker["jobs"] == [] and worker["finished_last_hour"] == 2
    assert worker["frames_last_hour"] == 300
    [waiting] = status["waiting"]
    assert (waiting["job_id"], waiting["reason"]) == ("early", "manifest_pending")
    assert waiting["resend_in_s"] > 0
    assert status["failed_kept"] == 1
    assert printed.returncode == 0, printed.stderr
    for text in ("w0@test", "early", "manifest_pending", "1 completed", "raw_episode 1"):
        assert text in printed.stdout


def farm_keys(client) -> dict[bytes, Any]:
    """Every key with its type and whole content."""
    read = {b"list": lambda k: client.lrange(k, 0, -1), b"hash": client.hgetall,
            b"set": client.smembers, b"zset": lambda k: client.zrange(k, 0, -1, withscores=True),
            b"string": client.get}
    return {key: (client.type(key), read[client.type(key)](key)) for key in client.keys("*")}


@pytest.mark.integration
def test_status_of_1000_queued_jobs_answers_fast_and_changes_nothing(tmp_path, broker_url):
    storage = open_storage(tmp_path / "data")
    template = job_for(storage, write_episode(storage, frames=5))
    app = make_app(broker_url)
    first_submitted = time.time() - 300
    for i in range(1000):
        job = template.model_copy(update={"job_id": f"queued-{i}",
                                          "submitted_at": first_submitted + i * 0.1})
        app.send_task(ENCODE_TASK, args=[job.model_dump(mode="json")], task_id=job.job_id,
                      queue="encode")
    app.close()
    client = redis_client(broker_url)
    before = farm_keys(client)

    started = time.perf_counter()
    done = status_cli(broker_url, "--json")
    cli_s = time.perf_counter() - started
    started = time.perf_counter()
    in_process = farm_status(broker_url)
    api_s = time.perf_counter() - started
    print(f"\nstatus of 1000 queued jobs: CLI {cli_s:.2f}s (Python start included), "
          f"farm_status() {api_s:.2f}s, its own answered_in_s {in_process.answered_in_s:.2f}s")

    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    queue = status["queue"]
    assert queue["depth"] == 1000 and queue["next_job_id"] == "queued-0"
    assert 300 <= queue["oldest_age_s"] < 400
    assert status["workers"] == [] and status["leases"] == [] and status["waiting"] == []
    assert in_process.queue.depth == 1000
    after = farm_keys(client)
    # A control client (the broadcast to workers) leaves kombu's reply-binding bookkeeping,
    # which kombu expires; nothing of the farm changes.
    changed = {key for key in before.keys() | after.keys()
               if before.get(key) != after.get(key)}
    assert all(key.startswith(b"_kombu.binding") for key in changed), changed


# -- without a server ---------------------------------------------------------------------

def snapshot(**fields: Any) -> LedgerSnapshot:
    values: dict[str, Any] = dict(
        queue_depth=0, next_queued=None, delivered=0, claims={}, lease_ttl_s={}, waiting={},
        progress={}, finished=[], failed_kept=0, rejected=0, control_nodes=[])
    values.update(fields)
    return LedgerSnapshot(**values)


def test_build_status_joins_replies_progress_claims_and_history():
    now = 1000.0
    progress = {"a": {"task_id": "a", "worker": "w1@h", "host": "h", "recording": 3,
                      "camera": "cam1", "frames_done": 50, "frames_total": 100, "fps": 25.0,
                      "started_at": 990.0},
                "b": {"task_id": "b", "worker": "w2@h", "host": "h2", "recording": 4,
                      "camera": "cam0", "frames_done": 10, "frames_total": 20, "fps": 5.0,
                      "started_at": 996.0},
                "gone": {"worker": "w3@h", "started_at": 900.0}}  # finished: not claimed
    replies = [{"w1@h": {"host": "h", "pid": 7, "concurrency": 2, "uptime_s": 60.0,
                         "jobs": [{"task_id": "a", "job_id": "a", "recording": 3,
                                   "camera": "cam1", "running_s": 12.0}]}},
               {"old@h": {"ok": "pong"}}]  # an older worker without farm_worker
    finished = [{"job_id": f"j{i}", "status": "succeeded", "worker": "w1@h", "frames": 100,
                 "total_s": float(i + 1)} for i in range(20)]
    finished += [{"job_id": "f", "status": "failed", "reason": "encode", "worker": "w2@h"},
                 {"job_id": "d", "status": "already_done", "worker": "w1@h", "frames": 100,
                  "total_s": 0.1}]
    status = build_status(snapshot(
        queue_depth=2, next_queued={"job_id": "q", "submitted_at": 940.0}, delivered=3,
        claims={"a": {}, "b": {}, "lapsed": {}},
        lease_ttl_s={"a": 40.0, "b": 50.0, "lapsed": None}, progress=progress,
        waiting={"w": {"payload": {"recording": 5, "camera": "cam0"}, "due": 1070.0,
                       "retry_at": 1005.0, "reason": "lease_held"}},
        finished=finished, failed_kept=4, rejected=1), replies, broker="redis://x", now=now)
    assert status.queue.oldest_age_s == 60.0 and status.queue.next_job_id == "q"
    old, w1, w2 = status.workers
    assert (w1.name, w1.answered, w1.concurrency, [j.job_id for j in w1.jobs]) == (
        "w1@h", True, 2, ["a"])
    assert w1.jobs[0].frames_done == 50 and w1.jobs[0].running_s == 12.0
    assert (w2.name, w2.answered, w2.host, w2.jobs[0].running_s) == ("w2@h", False, "h2", 4.0)
    assert old.answered and old.jobs == []
    assert status.fps == 30.0
    assert [(lease.job_id, lease.worker, lease.lease_left_s) for lease in status.leases] == [
        ("a", "w1@h", 40.0), ("b", "w2@h", 50.0), ("lapsed", None, None)]
    [waiting] = status.waiting
    assert (waiting.reason, waiting.retry_in_s, waiting.resend_in_s) == ("lease_held", 5, 70)
    recent = status.recent
    assert (recent.completed, recent.succeeded, recent.already_done, recent.failed) == (
        21, 20, 1, 1)
    assert recent.failed_by_reason == {"encode": 1}
    assert recent.mean_encode_s == 10.5 and recent.p95_encode_s == 19.0
    assert recent.frames == 2000 and recent.encode_fps == pytest.approx(2000 / 210)
    assert (w1.finished_last_hour, w1.frames_last_hour) == (21, 2000)


def test_tables_never_cut_values_outside_a_terminal():
    long_id = "episode-000123-observation.images.a_rather_long_camera_name-" + "Z" * 40
    host = "a-very-long-host-name.example.org"
    status = build_status(snapshot(claims={long_id: {}}, lease_ttl_s={long_id: 30.0}),
                          [{f"encoder@{host}-123456": {"host": host, "jobs": [
                              {"job_id": long_id, "running_s": 5.0}]}}],
                          broker="redis://farm:6379/0", now=0.0)
    out = io.StringIO()
    Console(file=out, width=80).print(render(status))  # narrower than the tables
    text = out.getvalue()
    assert "…" not in text
    # Folded onto more lines, never cut: every character is there, in the workers' and
    # the leases' tables.
    assert text.count("Z") == 2 * 40
    assert max(len(line) for line in text.splitlines()) <= 80


def test_failure_reasons_are_a_fixed_set():
    # The labels are the results' reason codes; no message text is read.
    assert tuple(reason.value for reason in FailureReason) == FAILURE_REASONS
    old = {"job_id": "j", "recording": 0, "camera": "cam0", "status": "failed",
           "error": "EncodeError: video has 9 frames", "output_storage": "/d", "output_key": "v"}
    # A result of an older worker (no reason), or of a newer one (a reason unknown here).
    assert EncodeResult.model_validate(old).reason is FailureReason.OTHER
    assert EncodeResult.model_validate(old | {"reason": "something new"}).reason is \
        FailureReason.OTHER
    assert EncodeResult.model_validate(old | {"reason": "verify"}).reason is \
        FailureReason.VERIFY
    assert duration(5.25) == "5.2s" and duration(125) == "2m05s" and duration(7300) == "2h01m"


def test_history_is_trimmed_to_the_hour_and_expires():
    ledger = JobLedger(fakeredis.FakeRedis())
    now = 10_000.0
    for i, at in enumerate((now - FINISHED_WINDOW_S - 1, now - 10, now)):
        ledger.record_finished({"job_id": f"j{i}", "status": "succeeded", "finished_at": at},
                               now=at)
    assert [e["job_id"] for e in ledger.snapshot(queue="encode", now=now).finished] == [
        "j1", "j2"]
    assert ledger.client.zcard(FINISHED_KEY) == 2
    assert 0 < ledger.client.ttl(FINISHED_KEY) <= FINISHED_WINDOW_S
    ledger.report_progress("j3", {"frames_done": 1}, ttl_s=60)
    assert 0 < ledger.client.ttl(PROGRESS_KEY) <= 60
    ledger.clear_progress("j3")
    assert not ledger.client.exists(PROGRESS_KEY)


@pytest.mark.integration
def test_snapshot_reads_the_next_queued_job_from_kombus_envelope(broker_url):
    app = make_app(broker_url)
    storage_url = "file:///nowhere"
    for job_id, at in (("first", 100.0), ("second", 200.0)):
        app.send_task(ENCODE_TASK, args=[{"job_id": job_id, "submitted_at": at,
                                          "raw_storage": storage_url}],
                      task_id=job_id, queue="encode")
    app.close()
    client = redis_client(broker_url)
    client.lpush("encode", b"not a message")  # the worker's transport sets these aside
    snap = JobLedger(client).snapshot(queue="encode", now=300.0)
    assert snap.queue_depth == 3 and snap.next_queued is not None
    assert (snap.next_queued["job_id"], snap.next_queued["submitted_at"]) == ("first", 100.0)
    client.rpush("encode", b"not a message")
    assert JobLedger(client).snapshot(queue="encode", now=300.0).next_queued == {}

