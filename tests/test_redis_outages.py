"""The farm's Redis going away: jobs submitted meanwhile are sent when it is back, and
jobs that a Redis restarted without its data lost are sent again by the recorder."""

from __future__ import annotations

import shutil

import pytest
from episodes import job_for, write_episode
from video_checks import check_video_against_raw

from encoder_worker.jobs import EncoderOptions, Status
from encoder_worker.raw_layout import raw_prefix
from encoder_worker.storage import open_storage
from recorder.farm.client import EncodingFarmClient, FarmTimeout

pytestmark = pytest.mark.integration


def jobs_of(tmp_path, count):
    storage = open_storage(tmp_path / "data")
    jobs = [job_for(storage, write_episode(storage, episode=i, frames=10), job_id=f"o{i}",
                    options=EncoderOptions(codec="libx264")) for i in range(count)]
    return storage, jobs


def check_results(storage, results, count):
    assert sorted(r.job_id for r in results) == [f"o{i}" for i in range(count)]
    for result in results:
        assert result.ok, result.error
        check_video_against_raw(storage.path(result.output_key), storage.url,
                                raw_prefix(recording=result.recording, camera="cam0"))


def test_jobs_submitted_while_redis_is_down_are_sent_when_it_is_back(
        tmp_path, redis_server, start_worker, caplog):
    storage, jobs = jobs_of(tmp_path, 3)
    with EncodingFarmClient(redis_server.url) as farm:
        farm.submit(jobs[0])
        redis_server.stop()
        for job in jobs[1:]:
            farm.submit(job)  # does not raise: recording goes on
        assert farm.outstanding == 3
        assert "does not answer" in caplog.text and "recording goes on" in caplog.text
        redis_server.start()
        start_worker(redis_server.url)
        results = farm.wait(timeout_s=180)
    check_results(storage, results, 3)
    assert "answers again" in caplog.text


def test_jobs_lost_by_a_redis_restarted_empty_are_sent_again(
        tmp_path, redis_server, start_worker, caplog):
    storage, jobs = jobs_of(tmp_path, 2)
    with EncodingFarmClient(redis_server.url, lost_job_check_s=1.0) as farm:
        for job in jobs:
            farm.submit(job)
        redis_server.stop(kill=True)
        for leftover in redis_server.workdir.iterdir():  # its data is gone
            if leftover.name.startswith(("appendonly", "dump")):
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        redis_server.start()
        start_worker(redis_server.url)
        results = farm.wait(timeout_s=180)
        assert farm.resent == 2
    check_results(storage, results, 2)
    assert "not known to the farm any more" in caplog.text
    assert all(r.status is Status.SUCCEEDED for r in results)


def test_a_long_wait_says_what_it_waits_for(tmp_path, redis_server, caplog):
    _, jobs = jobs_of(tmp_path, 2)
    caplog.set_level("INFO", logger="recorder")
    with EncodingFarmClient(redis_server.url, wait_note_s=0.2) as farm:
        for job in jobs:
            farm.submit(job)
        with pytest.raises(FarmTimeout):
            farm.wait(timeout_s=1.0)  # no worker: nothing finishes
    notes = [r.getMessage() for r in caplog.records if "waiting" in r.getMessage()]
    assert notes, caplog.text
    assert "0 of 2 videos done; 2 jobs queued at the farm; waiting for recording 0 cam0, " \
           "recording 1 cam0" in notes[-1]
