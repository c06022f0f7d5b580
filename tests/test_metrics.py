"""Workers' Prometheus metrics on --metrics-port: real workers, real encodes, scraped over
HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, free_port, wait_for
from episodes import job_for, write_episode
from prometheus_client.parser import text_string_to_metric_families

from encoder_worker.broker import redis_client
from encoder_worker.celery_app import ENCODE_TASK, make_app
from encoder_worker.jobs import EncoderOptions, Status
from encoder_worker.ledger import CLAIMS_KEY
from encoder_worker.metrics import FAILURE_REASONS, RETRY_REASONS
from encoder_worker.raw_layout import raw_prefix
from encoder_worker.reaper import LeaseReaper
from encoder_worker.storage import open_storage
from recorder.farm.client import EncodingFarmClient


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of http://127.0.0.1:port/metrics: (name, labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


@pytest.mark.integration
def test_a_worker_serves_the_metrics_of_its_encodes(tmp_path, broker_url, start_worker):
    storage = open_storage(tmp_path / "data")
    good = job_for(storage, write_episode(storage, frames=30), job_id="good",
                   options=EncoderOptions(codec="libx264"))
    bad = job_for(storage, write_episode(storage, episode=1, frames=10), job_id="bad",
                  options=EncoderOptions(codec="libx264"))
    segment = storage.path(raw_prefix(recording=1, camera="cam0") + "/segment_00000.raw")
    segment.write_bytes(segment.read_bytes()[:-1] + b"\x00")  # corrupt: the job fails
    port = free_port()
    start_worker(broker_url, "--metrics-port", str(port), "--concurrency", "2")
    before = scrape(port)
    assert value(before, "farm_jobs_started_total") == 0
    assert value(before, "farm_jobs_running") == 0
    assert {value(before, "farm_jobs_failed_total", reason=r) for r in FAILURE_REASONS} == {0}
    with EncodingFarmClient(broker_url) as farm:
        farm.submit(good)
        farm.submit(bad)
        results = {r.job_id: r for r in farm.wait(timeout_s=120)}
    assert results["good"].status is Status.SUCCEEDED and results["bad"].status is Status.FAILED
    # The result reaches the recorder a moment before the task's end is counted.
    def both_counted() -> dict | None:
        found = scrape(port)
        done = (value(found, "farm_jobs_succeeded_total", outcome="encoded")
                + value(found, "farm_jobs_failed_total", reason="raw_episode"))
        return found if done == 2 else None

    samples = wait_for(both_counted, timeout_s=30, what="both jobs counted")
    assert isinstance(samples, dict)
    result = results["good"]
    assert value(samples, "farm_jobs_started_total") == 2
    assert value(samples, "farm_jobs_succeeded_total", outcome="encoded") == 1
    assert value(samples, "farm_jobs_succeeded_total", outcome="already_done") == 0
    assert value(samples, "farm_jobs_failed_total", reason="raw_episode") == 1
    assert sum(value(samples, "farm_jobs_failed_total", reason=r) for r in FAILURE_REASONS) == 1
    assert {value(samples, "farm_jobs_retried_total", reason=r) for r in RETRY_REASONS} == {0}
    assert value(samples, "farm_jobs_running") == 0
    assert value(samples, "farm_encoded_frames_total") == 30 == result.frames
    assert value(samples, "farm_encoded_bytes_total") == result.bytes > 0
    assert value(samples, "farm_job_duration_seconds_count") == 1
    assert value(samples, "farm_job_duration_seconds_sum") == pytest.approx(
        result.timings.total_s)
    for stage in ("fetch", "encode", "verify", "publish"):
        assert value(samples, "farm_job_stage_duration_seconds_count", stage=stage) == 1
        assert value(samples, "farm_job_stage_duration_seconds_sum", stage=stage) == \
            pytest.approx(getattr(result.timings, f"{stage}_s"))
    assert value(samples, "farm_job_queue_wait_seconds_count") == 2
    assert value(samples, "farm_job_duration_seconds_bucket", le="+Inf") == 1
    assert value(samples, "farm_lease_takeovers_total", kind="lease_lapsed") == 0


@pytest.mark.integration
def test_two_workers_on_one_host_serve_their_own_metrics(tmp_path, broker_url, start_worker):
    storage = open_storage(tmp_path / "data")
    job = job_for(storage, write_episode(storage, frames=10), job_id="one",
                  options=EncoderOptions(codec="libx264"))
    first, second = free_port(), free_port()
    start_worker(broker_url, "--metrics-port", str(first))
    # The plain Celery command takes the port from FARM_WORKER_METRICS_PORT.
    start_worker(broker_url, "--queues", "encode",
                 command=[sys.executable, "-m", "celery", "-A", "encoder_worker", "worker"],
                 env={"FARM_WORKER_BROKER": broker_url,
                      "FARM_WORKER_METRICS_PORT": str(second)})
    with EncodingFarmClient(broker_url) as farm:
        farm.submit(job)
        [result] = farm.wait(timeout_s=120)
    assert result.status is Status.SUCCEEDED

    def encoded(port: int) -> float:
        return value(scrape(port), "farm_jobs_succeeded_total", outcome="encoded")

    # One worker encoded it; each counts only its own jobs.
    wait_for(lambda: encoded(first) + encoded(second) == 1, timeout_s=30,
             what="the job counted by the worker that ran it")
    assert sorted([encoded(first), encoded(second)]) == [0, 1]
    # A third worker on a port in use says so and does not start.
    taken = start_worker(broker_url, "--metrics-port", str(first), wait=False)
    assert taken.process.wait(timeout=60) == 1
    assert f"cannot serve metrics on port {first}" in taken.output()


@pytest.mark.integration
def test_the_reaper_counts_its_takeovers(broker_url):
    client = redis_client(broker_url)
    client.hset(CLAIMS_KEY, "orphan", json.dumps({"task_id": "t-orphan",
                                                  "payload": {"job_id": "orphan"}}))
    app = make_app(broker_url)
    takeovers: list[str] = []
    try:
        reaper = LeaseReaper(client, lease_ttl_s=60, resend=lambda task_id, payload:
                             app.send_task(ENCODE_TASK, args=[payload], task_id=task_id,
                                           queue="encode"),
                             is_done=lambda task_id: False, on_takeover=takeovers.append)
        assert reaper.reap_once() == ["orphan"]
    finally:
        app.close()
    assert takeovers == ["lease_lapsed"]


def test_metrics_dashboard_is_a_grafana_model_over_these_metrics():
    dashboard = json.loads((Path(REPO) / "deploy/grafana-dashboard.json").read_text())
    assert dashboard["schemaVersion"] >= 30 and dashboard["title"]
    exprs = " ".join(target["expr"] for panel in dashboard["panels"]
                     for target in panel.get("targets", []))
    for metric in ("farm_jobs_succeeded_total", "farm_jobs_failed_total",
                   "farm_job_duration_seconds_bucket", "farm_job_stage_duration_seconds_bucket",
                   "farm_job_queue_wait_seconds_bucket", "farm_jobs_running",
                   "farm_encoded_frames_total", "farm_lease_takeovers_total"):
        assert metric in exprs, metric
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# A metrics server, and a child process (as the prefork pool forks them) that starts a job
# and is killed: as a zombie (not reaped yet) and once reaped, it runs no job any more,
# and what it counted stays counted.
KILLED_CHILD = """
import json, os, signal, sys, time, urllib.request
from encoder_worker import metrics

def scrape():
    text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
            if line.startswith(("farm_jobs_running", "farm_jobs_started_total"))}

def state(pid):
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]

metrics.start_metrics_server(int(sys.argv[1]), addr="127.0.0.1")
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    metrics.metrics().started.inc()
    metrics.metrics().running.inc()
    os.write(write, b"x")
    while True:
        time.sleep(60)  # killed by the parent
os.read(read, 1)
seen = {"running": scrape()}
os.kill(pid, signal.SIGKILL)
while state(pid) != "Z":
    time.sleep(0.01)
seen["zombie"] = scrape()
os.waitpid(pid, 0)
seen["reaped"] = scrape()
metrics.stop_metrics_server()
print(json.dumps(seen))
"""


@pytest.mark.integration
def test_a_killed_pool_child_runs_no_job_but_its_counts_stay(tmp_path):
    done = subprocess.run([sys.executable, "-c", KILLED_CHILD, str(free_port())],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["running"] == {"farm_jobs_running": 1, "farm_jobs_started_total": 1}
    assert seen["zombie"] == seen["reaped"] == {"farm_jobs_running": 0,
                                                "farm_jobs_started_total": 1}
    assert list(tmp_path.iterdir()) == []  # the metrics folder went with the server
