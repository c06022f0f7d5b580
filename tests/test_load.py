"""500 jobs from 3 recorder processes on one farm: each encoded exactly once, and Redis
holds nothing of them once their results are collected."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO
from episodes import job_for, write_episode

from encoder_worker.broker import redis_client
from encoder_worker.jobs import EncoderOptions
from encoder_worker.ledger import DONE_KEY, FINISHED_KEY, FINISHED_MAX, FINISHED_WINDOW_S
from encoder_worker.settings import WorkerSettings
from encoder_worker.storage import open_storage

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOBS, RECORDERS = 500, 3

# One recorder: submit its jobs, wait for every result, print them.
RECORDER = """
import json, sys
from encoder_worker.jobs import EncodeJob
from recorder.farm.client import EncodingFarmClient
jobs = [EncodeJob.model_validate(j) for j in json.loads(open(sys.argv[2]).read())]
with EncodingFarmClient(sys.argv[1], queue_size=50) as farm:
    for job in jobs:
        farm.submit(job)
    results = farm.wait(timeout_s=600)
print(json.dumps([[r.job_id, r.status.value, r.error] for r in results]))
"""


def test_500_jobs_from_3_recorders_each_exactly_once(tmp_path, broker_url, start_worker):
    storage = open_storage(tmp_path / "data")
    manifest = write_episode(storage, frames=5, width=64, height=48, segment_frames=5)
    template = job_for(storage, manifest, options=EncoderOptions(codec="libx264"))
    for _ in range(2):
        start_worker(broker_url, "--concurrency", "2")
    client = redis_client(broker_url)
    keys_before = set(client.keys("*"))
    batches = []
    for recorder in range(RECORDERS):
        jobs = [template.model_copy(update={
            "job_id": f"load-{i}", "output_key": f"videos/load/job-{i:04d}.mp4"}
        ).model_dump(mode="json") for i in range(recorder, JOBS, RECORDERS)]
        path = tmp_path / f"jobs-{recorder}.json"
        path.write_text(json.dumps(jobs))
        batches.append(path)
    processes = [subprocess.Popen([sys.executable, "-c", RECORDER, broker_url, str(path)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
                 for path in batches]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=900)
        assert process.returncode == 0, err
        results += json.loads(out)
    assert sorted(job_id for job_id, _, _ in results) == sorted(f"load-{i}" for i in range(JOBS))
    assert {status for _, status, _ in results} == {"succeeded"}, [
        r for r in results if r[1] != "succeeded"][:3]
    assert len(storage.list_keys("videos/load")) == JOBS
    # Nothing of the jobs is left in Redis: no claims, leases, progress, counters, results
    # or queue. Two keys are kept on purpose: farm:finished, the last hour's history for
    # `encoder-worker status` (one small entry per job, at most FINISHED_MAX of them, trimmed
    # to the hour at each add, and the key expires an hour after the last job), and
    # farm:done, the ids of the jobs that succeeded (trimmed to twice the visibility timeout
    # at each add; it expires as long after the last).
    left = {key.decode() for key in set(client.keys("*")) - keys_before}
    assert not [key for key in left if not key.startswith("_kombu.binding")
                and key not in (FINISHED_KEY, DONE_KEY)], sorted(left)[:10]
    assert JOBS <= client.zcard(FINISHED_KEY) <= FINISHED_MAX
    assert 0 < client.ttl(FINISHED_KEY) <= FINISHED_WINDOW_S
    assert client.zcard(DONE_KEY) == JOBS
    assert 0 < client.ttl(DONE_KEY) <= 2 * WorkerSettings().visibility_timeout_s
    assert client.llen("encode") == 0 and client.hlen("unacked") == 0
