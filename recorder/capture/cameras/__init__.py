"""Camera sources: anything that hands out RGB frames of a fixed size on request."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class CameraError(Exception):
    """A camera cannot be opened or read; the message names the source."""


class CameraSource(Protocol):
    name: str
    width: int
    height: int

    def read(self) -> np.ndarray:
        """The newest frame, (height, width, 3) uint8 RGB; raises CameraError."""

    def close(self) -> None: ...
