"""What the benchmark ran on: CPU, Python, PyAV/FFmpeg and codec, broker kind."""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path
from urllib.parse import urlsplit

import av

from recorder.benchmark.results import EnvironmentInfo


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it; the machine type elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_count() -> int:
    """CPUs this process may run on (cgroup and affinity limits included where known)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1



def broker_kind(broker: str | None, *, async_encoding: bool) -> str:
    if not async_encoding:
        return "none (inline encoding)"
    if broker is None:
        return "zero-config local farm (private redis-server on a unix socket)"
    return f"external redis farm ({urlsplit(broker).scheme})"


def codec_description(codec: str) -> str:
    try:
        return av.codec.Codec(codec, "w").long_name
    except Exception as exc:  # reported; the encode itself says more
        return f"unavailable: {exc}"


def collect(*, codec: str, broker: str | None, async_encoding: bool,
            workers_answering: int = 0) -> EnvironmentInfo:
    """Describe this host and its encoder libraries."""
    libraries = {name: ".".join(map(str, version))
                 for name, version in av.library_versions.items()}
    return EnvironmentInfo(
        hostname=socket.gethostname(), platform=platform.platform(), cpu_model=cpu_model(),
        cpu_count=cpu_count(), python=platform.python_version(), pyav=av.__version__,
        ffmpeg=str(getattr(av, "ffmpeg_version_info", "unknown")), ffmpeg_libraries=libraries,
        codec=codec, codec_description=codec_description(codec),
        broker_kind=broker_kind(broker, async_encoding=async_encoding),
        workers_answering=workers_answering, recorder_pid=os.getpid(),
        load_average_1m=os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0,
    )
