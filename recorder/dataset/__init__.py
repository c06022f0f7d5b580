"""The LeRobot-shaped dataset API: FarmDataset (add_frame, save_episode, finalize)."""

from recorder.dataset.metadata import DatasetError
from recorder.dataset.writer import EpisodeReport, FarmDataset

__all__ = ["DatasetError", "EpisodeReport", "FarmDataset"]
