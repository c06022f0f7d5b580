"""A test hook: stop this process dead at a named point, to show a crash there is safe.

`failpoint("pack:rows-switched")` does nothing unless the environment variable
FARM_FAILPOINT names that point; then the process SIGKILLs itself there, as a power cut or
the OOM killer would stop it (no cleanup, no exception handler runs). Tests set it on a
`recorder pack` or `recorder encode-pending` subprocess; nothing else reads it.
"""

from __future__ import annotations

import os
import signal

ENV_VAR = "FARM_FAILPOINT"


def failpoint(name: str) -> None:
    """SIGKILL this process if FARM_FAILPOINT names this point."""
    if os.environ.get(ENV_VAR) == name:
        os.kill(os.getpid(), signal.SIGKILL)
