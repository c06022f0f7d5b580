"""Paths as results files keep them: nothing of the folders of the machine that made them.

Results files are committed and compared across machines (benchmarks/results/), so a
checkout's absolute path or a temp folder in them says nothing to a reader and leaks the
machine's layout. A local path under the results' own folder is kept relative to it, any
other local path by its name; URLs with a host (s3://bucket/prefix, rtsp://camera) stay,
passwords removed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import PurePosixPath
from urllib.parse import urlsplit

from encoder_worker.broker import redact

# Device names are the same on every machine (/dev/video0): kept as they are.
DEVICE_ROOT = PurePosixPath("/dev")


def portable_location(location: str, *, base: str | os.PathLike[str] | None = None) -> str:
    """A storage URL, folder or file as a results file keeps it.

    Args:
        location: a local path, a file:// URL, or any other URL.
        base: the folder the results file belongs to (its output dir): a local path under
            it is kept relative to it.
    """
    parts = urlsplit(location)
    if parts.scheme not in ("", "file") and parts.netloc:
        return redact(location) or location  # a host's URL: nothing of this machine in it
    path = PurePosixPath(parts.path if parts.scheme else location)
    if not path.is_absolute() or path.is_relative_to(DEVICE_ROOT):
        return location
    if base is not None:
        # Both resolved: the runner names its runs' folders by the resolved output dir.
        root, real = PurePosixPath(os.path.realpath(base)), PurePosixPath(os.path.realpath(path))
        if real.is_relative_to(root) and real != root:
            return str(real.relative_to(root))
    if parts.scheme not in ("", "file"):
        # A local socket's URL (redis+socket:///run/redis.sock): its kind and file name.
        return f"{parts.scheme}://.../{path.name}"
    return path.name


def portable_command(argv: Sequence[str]) -> list[str]:
    """A command line with every absolute path in it (an argument, or --flag=PATH) cut to
    its name; device names and URLs stay (URLs without their passwords)."""
    portable = []
    for arg in argv:
        flag, equals, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        portable.append(f"{flag}{equals}{portable_location(value)}" if value else arg)
    return portable
