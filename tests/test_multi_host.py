"""Hosts as network namespaces: Redis + S3 on one, the recorder on another, two workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import REPO, require, wait_for
from netns import NetnsLab, netns_unavailable
from s3_fixtures import TEST_CREDENTIALS

from recorder.farm.local import find_redis_server

pytestmark = pytest.mark.integration

BUCKET = "farm"
# Runs on the recorder's host: record, then download every video and check it.
DRIVER = """
import json, sys
from pathlib import Path
from rich.console import Console
from recorder.session import record
from recorder.settings import RecorderSettings
from encoder_worker.storage import open_storage
from video_checks import check_video_against_raw

settings = RecorderSettings(**json.loads(sys.argv[1]))
report = record(settings, console=Console(stderr=True))
storage = open_storage(settings.output_storage_url)
counts = {}
for r in report.results:
    video = Path(sys.argv[2]).with_name(f"{r.job_id}.mp4")
    storage.download_file(r.output_key, video)
    prefix = f"raw/episode_{r.recording:06d}/{r.camera}"
    counts[r.job_id] = check_video_against_raw(video, settings.raw_storage_url, prefix)
Path(sys.argv[2]).write_text(json.dumps({
    "results": [r.model_dump(mode="json") for r in report.results], "counts": counts,
    "frames": {f"{e.recording}/{c}": n for e in report.episodes
               for c, n in e.frames_recorded.items()}}))
"""
MAKE_BUCKET = """
import sys, boto3
boto3.client("s3", endpoint_url=sys.argv[1]).create_bucket(Bucket=sys.argv[2])
"""


@pytest.fixture
def lab() -> Iterator[NetnsLab]:
    require(netns_unavailable() is None, f"multi-host test: {netns_unavailable()}")
    with NetnsLab(["srv", "rec", "w1", "w2"]) as lab:
        yield lab


def host_env(endpoint: str, tmp: Path) -> dict[str, str]:
    """The environment of a process on a namespace host: test credentials, no proxies."""
    env = {k: v for k, v in os.environ.items()
           if "proxy" not in k.lower() and not k.startswith(("AWS_", "FARM_"))}
    tmp.mkdir(parents=True, exist_ok=True)
    return {**env, **TEST_CREDENTIALS, "FARM_S3_ENDPOINT_URL": endpoint,
            "PYTHONPATH": f"{REPO}:{REPO / 'tests'}", "TMPDIR": str(tmp)}


def test_two_worker_hosts_share_the_work(lab: NetnsLab, tmp_path: Path,
                                         start_worker: Callable[..., object]) -> None:
    srv = lab.addresses["srv"]
    broker = f"redis://{srv}:6379/0"
    endpoint = f"http://{srv}:5000"
    s3_url = f"s3://{BUCKET}/datasets/netns"
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(host: str, argv: list[str], name: str) -> subprocess.Popen[bytes]:
        with open(tmp_path / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(lab.command(host, argv), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    cwd=tmp_path, env=host_env(endpoint, tmp_path / name))
        procs.append(proc)
        return proc

    def ok(host: str, argv: list[str]) -> bool:
        return subprocess.run(lab.command(host, argv), capture_output=True, timeout=60,
                              env=host_env(endpoint, tmp_path / "probe")).returncode == 0

    try:
        (tmp_path / "redis").mkdir()
        spawn("srv", [find_redis_server(), "--bind", srv, "--port", "6379", "--save", "",
                      "--appendonly", "yes", "--protected-mode", "no",
                      "--dir", str(tmp_path / "redis")], "redis")
        spawn("srv", [sys.executable, "-m", "moto.server", "-H", srv, "-p", "5000"], "moto")
        redis_up = [sys.executable, "-c", f"import redis; redis.Redis.from_url({broker!r}, "
                    "socket_connect_timeout=1).ping()"]
        wait_for(lambda: ok("rec", redis_up), timeout_s=60, what="Redis on the server host")
        wait_for(lambda: ok("rec", [sys.executable, "-c", MAKE_BUCKET, endpoint, BUCKET]),
                 timeout_s=60, interval_s=0.5, what="moto on the server host")

        workers = []
        for host in ("w1", "w2"):
            # The fixture appends --hostname and these arguments to the command.
            argv = [sys.executable, "-m", "encoder_worker.cli", "run", "--broker", broker]
            workers.append(start_worker(
                broker, "--storage", s3_url, "--concurrency", "1",
                command=lab.command(host, argv, hostname=f"farm-{host}"), wait=False,
                cwd=tmp_path / f"{host}-home", env=host_env(endpoint, tmp_path / f"{host}-tmp")))
        for worker in workers:
            wait_for(lambda w=worker: " ready." in w.output() or w.process.poll() is not None,
                     timeout_s=90, what="a worker host to be ready")
            assert worker.process.poll() is None, worker.output()

        episodes, cameras = 3, 2
        settings = {"storage": s3_url, "async_encoding": True, "broker": broker,
                    "episodes": episodes, "episode_time": 1, "cameras": cameras,
                    "width": 160, "height": 120, "fps": 15, "codec": "libx264",
                    "segment_frames": 5, "keep_raw": True}  # videos compared with raw
        out = tmp_path / "rec-out" / "report.json"
        out.parent.mkdir()
        recorder = subprocess.run(
            lab.command("rec", [sys.executable, "-c", DRIVER, json.dumps(settings), str(out)]),
            capture_output=True, text=True, timeout=240, cwd=tmp_path / "rec-out",
            env=host_env(endpoint, tmp_path / "rec-tmp"))
        assert recorder.returncode == 0, recorder.stdout + recorder.stderr
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=30)

    report = json.loads(out.read_text())
    results = report["results"]
    assert len(results) == episodes * cameras
    assert all(r["status"] == "succeeded" for r in results), results
    hosts = {r["worker_host"] for r in results}
    assert hosts == {"farm-w1", "farm-w2"}, f"both worker hosts take jobs: {hosts}"
    assert len({(r["worker_host"], r["worker_pid"]) for r in results}) >= 2
    for r in results:
        recorded = report["frames"][f"{r['recording']}/{r['camera']}"]
        assert report["counts"][r["job_id"]] == recorded == r["frames"] > 0
