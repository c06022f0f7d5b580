"""Real parts for tests: our own redis-server on a free port, real worker subprocesses."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from encoder_worker.celery_app import make_app
from recorder.farm.local import RedisServer

REPO = Path(__file__).resolve().parent.parent

# moto S3 server fixtures (moto_server, s3_url) live in their own module.
pytest_plugins = ["s3_fixtures"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], object], *, timeout_s: float, what: str,
             interval_s: float = 0.05) -> object:
    """Poll predicate until it returns something truthy; fail the test after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


def in_ci() -> bool:
    """True under CI (CI=true, as CI services set it)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(condition: object, reason: str) -> None:
    """Skip the calling test when condition is false, saying reason; under CI fail it
    instead, so that CI never passes by skipping what it was set up to run (root, podman,
    a redis-server with TLS)."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"CI must run this test, but {reason}", pytrace=False)
    pytest.skip(reason)


def needs_integration_marker(request: pytest.FixtureRequest, what: str) -> None:
    """`make test-fast` (-m "not integration") runs no server, worker or encode: a test
    that starts one must say so."""
    if request.node.get_closest_marker("integration") is None:
        pytest.fail(f"{request.node.nodeid} starts {what}: mark it integration",
                    pytrace=False)


# Workers that tests start with --share-with-capture join this cgroup, not the host's own
# (encoder_worker/cpu_cap.py): a test's capture never caps another farm on this host.
TEST_CPU_CAP_GROUP = f"robot-encoding-farm-tests-{os.getpid()}"


@pytest.fixture(autouse=True, scope="session")
def _test_cpu_cap_group() -> Iterator[str]:
    os.environ["FARM_WORKER_CPU_CAP_GROUP"] = TEST_CPU_CAP_GROUP
    yield TEST_CPU_CAP_GROUP
    from encoder_worker.cpu_cap import CpuCap, CpuCapUnavailable

    try:
        CpuCap.remove(TEST_CPU_CAP_GROUP)
    except CpuCapUnavailable:
        pass  # no cgroup here that workers could join: never made
    except OSError as exc:
        warnings.warn(f"the tests' cgroup {TEST_CPU_CAP_GROUP} is left: {exc}", stacklevel=1)


@pytest.fixture(autouse=True)
def _work_in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative defaults (recordings/, benchmark_results/) land in the test's folder,
    never in the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def redis_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A redis-server owned by this test (TCP, free port, append-only file on)."""
    needs_integration_marker(request, "a redis-server")
    server = RedisServer(tmp_path / "redis", port=free_port(), appendonly=True)
    server.start()
    yield server
    # No test stops it but through stop(): if it went by itself, say so, from its own log.
    exit_code = server.process.poll() if server.process is not None else None
    server.stop()
    if exit_code is not None:
        pytest.fail(f"the test's redis-server exited by itself (status {exit_code}):\n"
                    f"{(server.workdir / 'redis.log').read_text(errors='replace')[-3000:]}",
                    pytrace=False)


@pytest.fixture
def broker_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def tmpfs() -> Iterator[Callable[[Path, str], Path]]:
    """Factory: mount a tmpfs of a size ("8m", "64k") at a folder, unmounted after the test:
    a disk that really fills up (root only)."""
    mounted: list[Path] = []

    def mount(folder: Path, size: str) -> Path:
        require(os.geteuid() == 0, "mounting a tmpfs (a disk that fills up) needs root")
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                       check=True)
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path, tmpfs: Callable[[Path, str], Path]) -> Path:
    """An 8 MB tmpfs: a disk that fills up a few seconds into a recording (root only)."""
    return tmpfs(tmp_path / "small-disk", "8m")


class WorkerProcess:
    def __init__(self, process: subprocess.Popen[bytes], log: Path, name: str) -> None:
        self.process = process
        self.log = log
        self.name = name

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=60)


@pytest.fixture
def start_worker(tmp_path: Path,
                 request: pytest.FixtureRequest) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: start `encoder-worker run` as a subprocess and wait until it answers pings."""
    needs_integration_marker(request, "workers")
    workers: list[WorkerProcess] = []

    def start(broker: str, *args: str, cwd: Path | None = None,
              env: dict[str, str] | None = None, wait: bool = True,
              command: list[str] | None = None) -> WorkerProcess:
        name = f"w{len(workers)}@test"
        log = tmp_path / f"worker-{len(workers)}.log"
        workdir = cwd or tmp_path / f"worker-{len(workers)}-cwd"
        workdir.mkdir(parents=True, exist_ok=True)
        base = command or [sys.executable, "-m", "encoder_worker.cli", "run", "--broker", broker]
        argv = [*base, "--hostname", name, *args]
        with open(log, "wb") as out:
            process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
                # Tests keep their storage under tmp_path: the workers' allow-list.
                env={**os.environ, "PYTHONPATH": str(REPO),
                     "FARM_WORKER_ALLOW_STORAGE": str(tmp_path), **(env or {})},
                start_new_session=True,
            )
        worker = WorkerProcess(process, log, name)
        workers.append(worker)
        if wait:
            wait_for(lambda: process.poll() is not None or answers_ping(broker, name),
                     timeout_s=60, what=f"worker {name} to answer pings")
            if process.poll() is not None:
                pytest.fail(f"worker exited with {process.returncode}:\n{worker.output()}")
        return worker

    yield start
    for worker in workers:
        worker.kill(signal.SIGTERM)


def answers_ping(broker: str, name: str) -> bool:
    """One ping from a fresh app: a connection the broker dropped is not reused, and the
    redis_server fixture says whether the server itself went."""
    app = make_app(broker)
    try:
        return any(name in reply for reply in app.control.ping(timeout=0.3))
    except redis.exceptions.ConnectionError as exc:
        print(f"ping to {name}: {exc}")  # shown with the test's output if it fails
        return False
    finally:
        app.close()


def pytest_sessionstart(session: pytest.Session) -> None:
    """The LeRobot suite (`-m lerobot`, make test-lerobot) needs LeRobot: without it every
    test would skip, so the run fails instead."""
    if session.config.option.markexpr == "lerobot" and importlib.util.find_spec("lerobot") is None:
        pytest.exit("the LeRobot suite runs in the LeRobot environment (make test-lerobot), "
                    "and lerobot is not installed in this one", returncode=1)
