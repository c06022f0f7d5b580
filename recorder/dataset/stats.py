"""Feature statistics as LeRobot computes them: min, max, mean, std, count, quantiles.

Numeric features: over every frame of the episode. Camera features: per channel, in
[0, 1], over sampled and downsampled frames, shape (3, 1, 1). Images are uint8, so an
exact 256-bin histogram per channel gives every statistic, quantiles included, and costs
a bincount per sampled frame in the camera's writer thread (never the record loop).
"""

from __future__ import annotations

import numpy as np

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{round(q * 100):02d}" for q in QUANTILES)
# LeRobot samples about 100 frames of a 300-frame episode; one frame in 3 at 30 fps is alike.
IMAGE_SAMPLES_PER_SECOND = 10
# LeRobot downsamples images whose larger side exceeds 300 px to about 150 px.
DOWNSAMPLE_ABOVE_PX = 300
DOWNSAMPLE_TARGET_PX = 150

Stats = dict[str, np.ndarray]


def numeric_stats(values: np.ndarray) -> Stats:
    """Stats of one numeric feature over an episode; values has one row per frame."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    stats: Stats = {
        "min": array.min(axis=0), "max": array.max(axis=0), "mean": array.mean(axis=0),
        "std": array.std(axis=0), "count": np.array([len(array)]),
    }
    for key, value in zip(QUANTILE_KEYS, np.quantile(array, QUANTILES, axis=0), strict=True):
        stats[key] = value
    return stats


def sample_stride(fps: float) -> int:
    """Every how many frames a camera frame is sampled for image stats."""
    return max(1, round(fps / IMAGE_SAMPLES_PER_SECOND))


class ImageStats:
    """Per-channel histograms of sampled frames (H, W, 3) uint8; result() gives the stats."""

    def __init__(self) -> None:
        self.histograms = np.zeros((3, 256), dtype=np.int64)
        self.samples = 0

    def add(self, frame: np.ndarray) -> None:
        height, width = frame.shape[:2]
        if max(height, width) > DOWNSAMPLE_ABOVE_PX:
            step = max(height, width) // DOWNSAMPLE_TARGET_PX
            frame = frame[::step, ::step]
        for channel in range(3):
            self.histograms[channel] += np.bincount(frame[..., channel].ravel(), minlength=256)
        self.samples += 1

    def result(self) -> Stats:
        """Stats with LeRobot's shapes: (3, 1, 1) per statistic, count (1,)."""
        if self.samples == 0:
            raise ValueError("no frame was sampled")
        values = np.arange(256, dtype=np.float64) / 255.0
        totals = self.histograms.sum(axis=1).astype(np.float64)
        mean = (self.histograms * values).sum(axis=1) / totals
        mean_sq = (self.histograms * values**2).sum(axis=1) / totals
        present = self.histograms > 0
        cdf = np.cumsum(self.histograms, axis=1)
        stats: Stats = {
            "min": np.array([values[np.argmax(p)] for p in present]),
            "max": np.array([values[255 - np.argmax(p[::-1])] for p in present]),
            "mean": mean, "std": np.sqrt(np.maximum(mean_sq - mean**2, 0.0)),
        }
        for key, q in zip(QUANTILE_KEYS, QUANTILES, strict=True):
            stats[key] = np.array([values[np.searchsorted(cdf[c], q * totals[c])]
                                   for c in range(3)])
        stats = {key: value.reshape(3, 1, 1) for key, value in stats.items()}
        stats["count"] = np.array([self.samples])
        return stats


def aggregate(episodes: list[dict[str, Stats]]) -> dict[str, Stats]:
    """Dataset stats from episode stats, as LeRobot's aggregate_stats combines them."""
    keys = sorted({key for stats in episodes for key in stats})
    return {key: _aggregate_feature([s[key] for s in episodes if key in s]) for key in keys}


def _aggregate_feature(stats: list[Stats]) -> Stats:
    means = np.stack([s["mean"] for s in stats])
    variances = np.stack([s["std"] ** 2 for s in stats])
    counts = np.stack([s["count"] for s in stats]).astype(np.float64)
    total = counts.sum(axis=0)
    weights = counts.reshape(counts.shape + (1,) * (means.ndim - counts.ndim))
    mean = (means * weights).sum(axis=0) / total
    variance = ((variances + (means - mean) ** 2) * weights).sum(axis=0) / total
    result: Stats = {
        "min": np.min(np.stack([s["min"] for s in stats]), axis=0),
        "max": np.max(np.stack([s["max"] for s in stats]), axis=0),
        "mean": mean, "std": np.sqrt(variance), "count": total.astype(np.int64),
    }
    for key in QUANTILE_KEYS:
        if all(key in s for s in stats):
            values = np.stack([s[key] for s in stats])
            # LeRobot keeps the outermost: the lowest low quantile, the highest high one.
            result[key] = values.min(axis=0) if int(key[1:]) <= 50 else values.max(axis=0)
    return result


def to_json(stats: dict[str, Stats]) -> dict[str, dict[str, list]]:
    return {key: {name: np.asarray(value).tolist() for name, value in feature.items()}
            for key, feature in stats.items()}


def from_json(data: dict[str, dict[str, list]]) -> dict[str, Stats]:
    return {key: {name: np.asarray(value) for name, value in feature.items()}
            for key, feature in data.items()}
