"""The job lease's and the ledger's counters' logic, on fakeredis (the real-Redis path is
in test_farm.py)."""

import fakeredis

from encoder_worker.ledger import JobLease, JobLedger


def lease_held(client, job_id):
    return JobLedger(client).leased(job_id)


def test_only_one_holder_at_a_time_and_release_frees_it():
    client = fakeredis.FakeRedis()
    first = JobLease(client, "job", ttl_s=30)
    second = JobLease(client, "job", ttl_s=30)
    assert first.acquire()
    assert not second.acquire()
    assert lease_held(client, "job")
    first.release()
    assert not lease_held(client, "job")
    assert second.acquire()
    second.release()


def test_release_never_frees_someone_elses_lease():
    client = fakeredis.FakeRedis()
    lease = JobLease(client, "job", ttl_s=30)
    assert lease.acquire()
    # The lease lapsed and another worker took the job over.
    client.set(lease.key, "other-token")
    lease.release()
    assert client.get(lease.key) == b"other-token"


def test_lease_expires_without_heartbeat():
    client = fakeredis.FakeRedis()
    lease = JobLease(client, "job", ttl_s=30)
    assert lease.acquire()
    ttl_ms = client.pttl(lease.key)
    assert 0 < ttl_ms <= 30_000
    lease.release()


def test_done_jobs_are_remembered_for_keep_s_in_one_key():
    client = fakeredis.FakeRedis()
    ledger = JobLedger(client)
    ledger.record_done("old", now=1000.0, keep_s=3600)
    ledger.record_done("new", now=1000.0 + 3000, keep_s=3600)
    assert ledger.done_before("old") and ledger.done_before("new")
    ledger.record_done("newer", now=1000.0 + 3700, keep_s=3600)  # "old" is past keep_s
    assert not ledger.done_before("old")
    assert ledger.done_before("new") and ledger.done_before("newer")
    assert not ledger.done_before("never")
    assert client.keys("*") == [b"farm:done"] and 0 < client.ttl("farm:done") <= 3600


def test_a_requeued_job_counts_its_worker_deaths_and_time_limits_from_zero():
    ledger = JobLedger(fakeredis.FakeRedis())
    for _ in range(3):
        ledger.start_attempt("job")
        ledger.count_time_limit("job")
    ledger.record_failure("job", task_id="t", payload={"job_id": "job"},
                          result={"error": "its worker died each time"}, keep_s=60)
    assert ledger.take_failure("job") is not None
    assert ledger.start_attempt("job") == 1
    assert ledger.count_time_limit("job") == 1
