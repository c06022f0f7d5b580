"""compose.yaml's farm, run as processes (no Docker here): the same programs, commands and
environment as its redis and worker services, the shared folder mounted at another path."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, free_port
from video_checks import check_video_against_raw

from encoder_worker.raw_episode import raw_prefix
from recorder.local_farm import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def compose():
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def test_worker_service_encodes_from_the_shared_folder(tmp_path, compose, start_worker):
    redis_service = compose["services"]["redis"]
    assert redis_service["command"][:3] == ["redis-server", "--appendonly", "yes"]
    redis = RedisServer(tmp_path / "redis", port=free_port(), appendonly=True)
    redis.start()
    service = None
    try:
        farm_data = tmp_path / "farm-data"  # ./farm-data on the host
        farm_data.mkdir()
        mount = tmp_path / "container" / "data"  # /data in the worker container
        mount.parent.mkdir()
        mount.symlink_to(farm_data)
        worker = compose["services"]["worker"]
        env = {k: str(v) for k, v in worker["environment"].items()}
        env |= {"FARM_WORKER_BROKER": redis.url, "FARM_WORKER_STORAGE": str(mount)}
        command = [sys.executable, "-m", "encoder_worker.cli", *worker["command"]]
        service = start_worker(redis.url, env=env, command=command)
        done = subprocess.run(
            [sys.executable, "-m", "recorder.cli", "record", "--async-encoding",
             "--broker", redis.url, "--storage", str(farm_data), "--episodes", "1",
             "--episode-time", "1", "--cameras", "2", "--width", "320", "--height", "240"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stdout + done.stderr
        for camera in ("cam0", "cam1"):
            video = farm_data / f"videos/observation.images.{camera}/chunk-000/file-000.mp4"
            assert check_video_against_raw(video, str(farm_data),
                                           raw_prefix(episode=0, camera=camera)) == 30
    finally:
        if service is not None:  # before Redis: a worker shutting down talks to it
            service.kill(signal.SIGTERM)
        redis.stop()


def test_dockerfile_installs_both_commands():
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert "pip install" in dockerfile and 'ENTRYPOINT ["encoder-worker"]' in dockerfile
    scripts = Path(REPO / "pyproject.toml").read_text()
    assert 'encoder-worker = "encoder_worker.cli:main"' in scripts
