"""The farm's Redis over TLS (rediss://) and behind Sentinel: every client reads the URL the
same way, a failover loses no video, and no password is ever printed."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from conftest import require
from dataset_checks import check_v3_dataset
from recordings import CAMERAS, features, record_episodes
from redis_topologies import (
    MASTER_NAME,
    SentinelFarm,
    TlsRedis,
    redis_server_speaks_tls,
    tls_files,
)

from encoder_worker.broker import RIDE_OUT_S, parse_redis_url, redact, redis_client
from encoder_worker.celery_app import make_app
from encoder_worker.jobs import ENCODE_QUEUE
from encoder_worker.ledger import CLAIMS_KEY, REJECTED_KEY
from encoder_worker.settings import WorkerSettings
from encoder_worker.transport import SentinelTransport
from recorder.dataset import FarmDataset
from recorder.farm.client import EncodingFarmClient

SECRET = "tls-and-sentinel-secret-7f3a"
SENTINEL_SECRET = "the-sentinels-own-secret-91c2"
EPISODES, FRAMES = 4, 30  # at 320x240: encodes long enough to be seen running
SENTINEL_URL = (f"sentinel://:{SECRET}@10.0.0.1:26379;sentinel://10.0.0.2;"
                f"sentinel://10.0.0.3:26380/2?master_name=farm&sentinel_password={SENTINEL_SECRET}")


def run_cli(*args: str, module: str = "recorder.cli",
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=timeout)


def record_args(broker: str, out: Path, *, episodes: int = 1) -> list[str]:
    return ["record", "--async-encoding", "--broker", broker, "--episodes", str(episodes),
            "--episode-time", "1", "--width", "160", "--height", "120", "--codec", "libx264",
            "--output-dir", str(out), "--keep-raw"]  # videos compared with raw frames


# --- URLs, without servers ----------------------------------------------------------------

def test_redact_hides_every_password_of_every_url_form():
    assert redact("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert redact("rediss://user:pw@Host:1/0?ssl_ca_certs=/ca.pem") == \
        "rediss://user:***@Host:1/0?ssl_ca_certs=/ca.pem"
    redacted = redact(SENTINEL_URL)
    assert SECRET not in redacted and SENTINEL_SECRET not in redacted
    assert redacted == ("sentinel://:***@10.0.0.1:26379;sentinel://10.0.0.2;"
                        "sentinel://10.0.0.3:26380/2?master_name=farm&sentinel_password=***")
    assert redact("redis+socket:///tmp/farm/redis.sock") == "redis+socket:///tmp/farm/redis.sock"


def test_celery_kombu_and_redis_py_get_the_same_tls_arguments(tmp_path):
    files = tls_files(tmp_path)
    url = (f"rediss://:{SECRET}@127.0.0.1:6380/3?ssl_cert_reqs=CERT_REQUIRED&ssl_ca_certs="
           f"{files.ca}&ssl_certfile={files.client_cert}&ssl_keyfile={files.client_key}")
    expected = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True,
                "ssl_ca_certs": str(files.ca), "ssl_certfile": str(files.client_cert),
                "ssl_keyfile": str(files.client_key)}
    app = make_app(url)
    assert app.conf.broker_use_ssl == app.conf.redis_backend_use_ssl == expected
    assert app.conf.broker_transport == "encoder_worker.transport:Transport"
    assert app.conf.broker_url == f"rediss://:{SECRET}@127.0.0.1:6380/3"  # no query left
    assert app.backend.connparams["connection_class"].__name__ == "SSLConnection"
    client_kwargs = redis_client(url).connection_pool.connection_kwargs
    assert {name: client_kwargs[name] for name in expected} == expected
    assert client_kwargs["db"] == 3 and client_kwargs["password"] == SECRET


def test_a_sentinel_url_configures_broker_results_and_ledger_alike():
    app = make_app(SENTINEL_URL)
    sentinel_kwargs = {"password": SENTINEL_SECRET, "socket_timeout": 5.0,
                       "socket_connect_timeout": 5.0}
    for options in (app.conf.broker_transport_options,
                    app.conf.result_backend_transport_options):
        assert options["master_name"] == "farm"
        assert options["sentinel_kwargs"] == sentinel_kwargs
    assert type(app.backend).__name__ == "SentinelBackend"
    # A worker stores its results through a failover; a recorder polls again.
    worker_app = make_app(SENTINEL_URL, settings=WorkerSettings(broker=SENTINEL_URL))
    assert worker_app.backend.always_retry and not app.backend.always_retry
    assert worker_app.backend.max_retries * 0.5 >= RIDE_OUT_S  # 0.5 s a try, on average
    # Every sentinel carries the master's password: kombu reconnects through any of them.
    assert app.conf.broker_url == ";".join(
        f"sentinel://:{SECRET}@{host}/2"
        for host in ("10.0.0.1:26379", "10.0.0.2:26379", "10.0.0.3:26380"))
    with app.connection_for_write() as connection:
        assert connection.transport_cls == "encoder_worker.transport:SentinelTransport"
        # kombu takes the transport from the next address's scheme when it fails over.
        connection.switch(connection.alt[1])
        assert type(connection.transport) is SentinelTransport
    master = redis_client(SENTINEL_URL)
    assert master.connection_pool.service_name == "farm"
    assert master.connection_pool.connection_kwargs["password"] == SECRET
    assert master.connection_pool.connection_kwargs["db"] == 2
    sentinels = master.connection_pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["port"] for s in sentinels] == [
        26379, 26379, 26380]
    assert sentinels[0].connection_pool.connection_kwargs["password"] == SENTINEL_SECRET


@pytest.mark.parametrize(("url", "message"), [
    ("sentinel://h1;sentinel://h2", "names no master: add ?master_name=NAME"),
    ("sentinel://h1;redis://h2?master_name=m", "every address of a Sentinel URL starts with"),
    ("sentinel://:a@h1;sentinel://:b@h2?master_name=m", "name different passwords"),
    ("sentinel://h1?master_name=m&ssl_ca_certs=/ca.pem", "TLS through Sentinel is not supported"),
    ("redis://h/0?ssl_ca_certs=/ca.pem", "ssl_ca_certs is for TLS, which needs a rediss:// URL"),
    ("rediss://h/0?ssl_ca_certs=/no/such/ca.pem", "ssl_ca_certs=/no/such/ca.pem: no such file"),
    ("rediss://h/0?ssl_cert_reqs=maybe", "ssl_cert_reqs=maybe: use required, optional or none"),
    ("rediss://h/0?ssl_ca_cert=/ca.pem", "unknown parameter 'ssl_ca_cert'; this URL takes"),
    ("redis://h/zero", "the database 'zero' is not a number"),
    ("amqp://h", "is not a Redis URL"),
])
def test_a_url_that_cannot_work_is_refused_with_what_to_write(url, message):
    with pytest.raises(ValueError, match="broker .*" + message.replace("?", r"\?")):
        parse_redis_url(url)


# --- TLS ----------------------------------------------------------------------------------

def needs_tls(tmp_path: Path) -> None:
    require(redis_server_speaks_tls(tmp_path / "tls-probe"),
            "this redis-server was built without TLS (Debian's redis-server has it)")


@pytest.mark.integration
def test_a_recording_goes_through_a_tls_only_redis(tmp_path, start_worker):
    needs_tls(tmp_path)
    files = tls_files(tmp_path / "certs")
    with TlsRedis(tmp_path / "redis", files, password=SECRET) as server:
        worker = start_worker(server.url())
        done = run_cli(*record_args(server.url(), tmp_path / "out", episodes=2), timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "2 episodes, 60 frames" in done.stdout
        root = tmp_path / "out/local/robot_dataset"
        check_v3_dataset(root, raw_url=str(root), episodes=2, cameras=CAMERAS,
                         frames_per_episode=30)
        assert redis_client(server.url()).llen(ENCODE_QUEUE) == 0
        for text in (done.stdout, done.stderr, worker.output()):
            assert SECRET not in text


@pytest.mark.integration
def test_a_certificate_problem_is_named_with_the_parameter_that_fixes_it(tmp_path):
    needs_tls(tmp_path)
    files = tls_files(tmp_path / "certs")
    stranger = tls_files(tmp_path / "other", name="other")
    with TlsRedis(tmp_path / "redis", files, password=SECRET) as server:
        cases = [
            (server.url(ssl_ca_certs=str(stranger.ca)), "cannot be verified", "ssl_ca_certs="),
            (server.url(ssl_ca_certs=""), "cannot be verified", "ssl_ca_certs="),
            (server.url(ssl_certfile="", ssl_keyfile=""), "refused the TLS connection",
             "ssl_certfile="),
            (server.url(ssl_ca_certs=str(tmp_path / "missing.pem")), "no such file",
             "ssl_ca_certs="),
        ]
        for url, problem, parameter in cases:
            recorder = run_cli(*record_args(url, tmp_path / "out"))
            worker = run_cli("run", "--broker", url, "--allow-storage", str(tmp_path),
                             module="encoder_worker.cli")
            for done in (recorder, worker):
                assert done.returncode == 1, done.stdout + done.stderr
                assert problem in done.stderr and parameter in done.stderr, done.stderr
                assert "Traceback" not in done.stderr and SECRET not in done.stderr
        plain = run_cli(*record_args(server.url().replace("rediss://", "redis://")
                                     .partition("?")[0], tmp_path / "out"))
        assert plain.returncode == 1 and "wants rediss://" in plain.stderr, plain.stderr


# --- Sentinel -----------------------------------------------------------------------------

@pytest.mark.integration
def test_a_failover_mid_session_loses_no_video(tmp_path, start_worker, caplog):
    with SentinelFarm(tmp_path / "redis", password=SECRET,
                      sentinel_password=SENTINEL_SECRET) as farm:
        worker = start_worker(farm.url)
        master = redis_client(farm.url)
        root = tmp_path / "dataset"
        # Replication is asynchronous: a job the old primary had not passed on is unknown
        # to the new one, and the recorder sends it again (checked every second here).
        with EncodingFarmClient(farm.url, lost_job_check_s=1.0) as client:
            dataset = FarmDataset.create("test/sentinel", fps=30, features=features(320, 240),
                                         root=str(root), async_encoding=True, farm=client,
                                         codec="libx264", keep_raw=True)
            held: list[set[str]] = []
            failed_over = []

            def fail_over_with_a_job_the_replica_never_got() -> None:
                # A worker busy with one job (prefetch 1) leaves the next one queued.
                if not held and master.hlen(CLAIMS_KEY):
                    held.append(queued_on(farm.primary.client))
                    farm.hold_replication()
                elif held and not failed_over and queued_on(farm.primary.client) - held[0]:
                    farm.fail_over()  # the recording goes on meanwhile
                    failed_over.append(True)

            record_episodes(dataset, episodes=EPISODES, frames=FRAMES,
                            after_frame=fail_over_with_a_job_the_replica_never_got)
            assert failed_over, "no job was sent while the replica was held: none to lose"
            # Hostile input still set aside, not fatal, by the worker's new connection.
            master.lpush(ENCODE_QUEUE, "not json at all")
            completion = dataset.finalize()
        assert completion.complete and completion.total_episodes == EPISODES
        assert all(result.ok for result in dataset.results)
        assert client.resent >= 1, "the job the new master never got was sent again"
        assert "is not known to the farm any more (its Redis lost its data?): sending it " \
               "again" in caplog.text
        check_v3_dataset(root, raw_url=str(root), episodes=EPISODES, cameras=CAMERAS,
                         frames_per_episode=FRAMES)
        rejected = master.lrange(REJECTED_KEY, 0, -1)
        assert any(b"not json at all" in item for item in rejected)
        assert worker.process.poll() is None, worker.output()
        assert farm.replica.client.info("replication")["role"] == "master"
        worker.kill(signal.SIGTERM)  # while its Redis is there: a quick warm shutdown
        for text in (worker.output(), caplog.text):
            assert SECRET not in text and SENTINEL_SECRET not in text


def queued_on(server: redis.Redis) -> set[str]:
    """Task ids of the jobs queued on this very server, not delivered to a worker yet."""
    return {json.loads(raw)["headers"]["id"] for raw in server.lrange(ENCODE_QUEUE, 0, -1)}


@pytest.mark.integration
def test_sentinel_problems_are_told_apart(tmp_path):
    with SentinelFarm(tmp_path / "redis", password=SECRET,
                      sentinel_password=SENTINEL_SECRET) as farm:
        cases = [
            (farm.url.replace(f"master_name={MASTER_NAME}", "master_name=other"),
             "know no such master: master_name must be the name"),
            (farm.url.replace(f"sentinel_password={SENTINEL_SECRET}", "sentinel_password=no"),
             "refused the sentinel password"),
            (farm.url.replace(SECRET, "wrong"), "refused the password"),
        ]
        for url, message in cases:
            done = run_cli("run", "--broker", url, "--allow-storage", str(tmp_path),
                           module="encoder_worker.cli")
            assert done.returncode == 1 and message in done.stderr, done.stderr
            assert "Traceback" not in done.stderr
            assert SECRET not in done.stderr and SENTINEL_SECRET not in done.stderr
