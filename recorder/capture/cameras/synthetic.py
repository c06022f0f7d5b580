"""A synthetic camera with content a codec sees in practice: a textured scene that pans,
objects that move across it, slow lighting changes and mild sensor noise."""

from __future__ import annotations

import numpy as np

# Headroom so that lighting and noise never wrap around 255.
_MAX_LEVEL = 240
_NOISE_FRAMES = 16


class SyntheticCamera:
    """Deterministic per (seed, frame index); cheap enough for 4 cameras at 60 fps."""

    def __init__(self, name: str, *, width: int, height: int, fps: float, seed: int = 0) -> None:
        self.name = name
        self.width = width
        self.height = height
        self.fps = fps
        self._index = 0
        rng = np.random.default_rng(seed)
        self._pan = max(width, height) // 4
        self._scene = _make_scene(rng, height + self._pan, width + self._pan)
        self._objects = [
            (rng.integers(0, 256, 3, dtype=np.uint8).clip(20, _MAX_LEVEL),  # colour
             int(rng.integers(height // 10, height // 4)),  # size
             rng.uniform(0.2, 1.0, 2) * rng.choice([-1, 1], 2),  # velocity, widths per s
             rng.uniform(0, 1, 2))  # start position
            for _ in range(3)
        ]
        # Small non-negative noise, as a sensor adds; a few frames of it, reused.
        self._noise = rng.integers(0, 5, (_NOISE_FRAMES, height, width, 3), dtype=np.uint8)
        self._phase = rng.uniform(0, 2 * np.pi)

    def read(self) -> np.ndarray:
        frame = self.frame_at(self._index)
        self._index += 1
        return frame

    def frame_at(self, index: int) -> np.ndarray:
        t = index / self.fps
        h, w = self.height, self.width
        # A slow pan over the scene, like a camera on a moving arm.
        ox = int((np.sin(0.3 * t + self._phase) * 0.5 + 0.5) * self._pan)
        oy = int((np.cos(0.2 * t + self._phase) * 0.5 + 0.5) * self._pan)
        frame = self._scene[oy:oy + h, ox:ox + w].copy()
        for colour, size, velocity, start in self._objects:
            # Objects bounce between the frame's edges.
            x = int(_bounce(start[0] + velocity[0] * t) * (w - size))
            y = int(_bounce(start[1] + velocity[1] * t) * (h - size))
            frame[y:y + size, x:x + size] = colour
        # Lighting drifts by up to +-15 % over a few seconds.
        gain = 1.0 + 0.15 * np.sin(0.5 * t + self._phase)
        lut = np.minimum(np.arange(256) * gain, _MAX_LEVEL).astype(np.uint8)
        frame = lut[frame]
        frame += self._noise[index % _NOISE_FRAMES]
        return frame

    def close(self) -> None:
        pass


def _bounce(position: float) -> float:
    """Map a position on an endless line to 0..1..0, like a ball between two walls."""
    position %= 2.0
    return position if position <= 1.0 else 2.0 - position


def _make_scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A table-top like scene: smooth gradients, a tiled texture and soft blobs."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([
        90 + 60 * np.sin(x / 97.0 + 1.0) * np.cos(y / 131.0),
        100 + 50 * np.cos(x / 151.0 - y / 173.0),
        110 + 40 * np.sin((x + y) / 211.0),
    ], axis=-1)
    tiles = ((x // 24 + y // 24) % 2)[..., None] * 18.0
    grain = rng.normal(0, 6, (height // 4 + 1, width // 4 + 1, 1)).repeat(4, 0).repeat(4, 1)
    scene = base + tiles + grain[:height, :width]
    # Blobs up to a fifth of the larger side, at least 20 px where the frame has room:
    # settings allow frames down to 16x16, and larger frames keep their content per seed.
    largest = max(height, width) / 5
    smallest = 20.0 if largest >= 20 else largest / 2
    for _ in range(6):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        radius = rng.uniform(smallest, largest)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))
        scene += blob[..., None] * rng.uniform(-60, 60, 3)
    return np.clip(scene, 0, _MAX_LEVEL - 5).astype(np.uint8)


def synthetic_cameras(count: int, *, width: int, height: int, fps: float,
                      seed: int = 0) -> list[SyntheticCamera]:
    """count cameras cam0, cam1, ... with seeds seed, seed + 1, ..."""
    return [SyntheticCamera(f"cam{i}", width=width, height=height, fps=fps, seed=seed + i)
            for i in range(count)]
