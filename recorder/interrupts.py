"""SIGTERM unwinds like Ctrl-C, so that every command keeps its frames and stops its farm."""

from __future__ import annotations

import signal
from typing import NoReturn


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def interrupt_on_sigterm() -> None:
    signal.signal(signal.SIGTERM, _interrupt)
