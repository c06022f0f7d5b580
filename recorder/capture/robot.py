"""A synthetic robot for `recorder record` and the benchmark: joint state and actions.

Stands in for a real arm the way the synthetic cameras stand in for real ones, so that a
recorded dataset has what LeRobot datasets hold besides video: observation.state and
action vectors, one row per frame.
"""

from __future__ import annotations

import numpy as np


class SyntheticRobot:
    """dof joints that follow smooth, seed-dependent trajectories; the action leads the state."""

    def __init__(self, *, dof: int = 6, fps: float = 30, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.dof = dof
        self.fps = fps
        self._frequency = rng.uniform(0.1, 0.5, dof)
        self._phase = rng.uniform(0, 2 * np.pi, dof)
        self._amplitude = rng.uniform(10, 60, dof)  # degrees
        self._index = 0

    @property
    def names(self) -> list[str]:
        return [f"joint{i}.pos" for i in range(self.dof)]

    def features(self) -> dict[str, dict]:
        """The LeRobot features this robot records."""
        vector = {"dtype": "float32", "shape": [self.dof], "names": self.names}
        return {"observation.state": dict(vector), "action": dict(vector)}

    def read(self) -> dict[str, np.ndarray]:
        """The state now and the action commanded next."""
        t = self._index / self.fps
        self._index += 1
        return {"observation.state": self.position_at(t),
                "action": self.position_at(t + 1 / self.fps)}

    def position_at(self, t: float) -> np.ndarray:
        """The joints' positions t seconds into the trajectory, in degrees."""
        angle = 2 * np.pi * self._frequency * t + self._phase
        return (self._amplitude * np.sin(angle)).astype(np.float32)
