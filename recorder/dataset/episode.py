"""One episode being captured: its camera writers, and its other features as data rows.

FarmDataset.add_frame() fills a CapturedEpisode; save_episode() hands it to the
EpisodeCommitter, which finishes the writers and stores the rows and the episode record.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from encoder_worker.raw_episode import Manifest
from encoder_worker.raw_sinks import DirectSink
from recorder.capture.raw_writer import CameraWriter
from recorder.dataset.staging import StagedEpisode, rows_to_parquet
from recorder.dataset.stats import ImageStats, Stats, numeric_stats, to_json
from recorder.farm.spool_sink import SpoolSink

logger = logging.getLogger(__name__)

RawSink = DirectSink | SpoolSink


@dataclass
class CapturedEpisode:
    """What add_frame() gathered of one recording, until save_episode() commits it."""

    recording: int
    writers: dict[str, CameraWriter]  # video key -> its camera's writer
    sinks: list[RawSink]
    image_stats: dict[str, ImageStats]  # video key -> stats, filled by its writer thread
    columns: dict[str, list[np.ndarray]]  # numeric feature -> one value per frame
    tasks: list[str] = field(default_factory=list)
    timestamps: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    writer_waits: int = 0  # frames for which a camera writer was behind and add_frame waited

    @property
    def frames(self) -> int:
        return len(self.tasks)

    def rows_and_record(self, videos: dict[str, str]) -> tuple[bytes, StagedEpisode]:
        """The episode's data rows (parquet) and its record.

        Args:
            videos: video feature key -> the key its video is published at.
        """
        columns: dict[str, pa.Array] = {}
        stats: dict[str, Stats] = {}
        for key, values in self.columns.items():
            array = np.stack(values)
            dtype = pa.from_numpy_dtype(array.dtype)
            columns[key] = pa.FixedSizeListArray.from_arrays(
                pa.array(array.reshape(-1), dtype), array.shape[1])
            stats[key] = numeric_stats(array)
        timestamps = np.asarray(self.timestamps, dtype=np.float32)
        frame_index = np.arange(self.frames, dtype=np.int64)
        columns["timestamp"] = pa.array(timestamps)
        columns["frame_index"] = pa.array(frame_index)
        columns["task"] = pa.array(self.tasks, pa.string())
        stats["timestamp"] = numeric_stats(timestamps)
        stats["frame_index"] = numeric_stats(frame_index)
        for key, image_stats in self.image_stats.items():
            stats[key] = image_stats.result()
        # episode_index, index and task_index are given when the episode joins the dataset.
        record = StagedEpisode(recording=self.recording, length=self.frames,
                               tasks=list(dict.fromkeys(self.tasks)), videos=videos,
                               stats=to_json(stats))
        return rows_to_parquet(columns), record


def finish_writers(writers: Iterable[CameraWriter], *, interrupted: bool) -> list[Manifest]:
    """Commit every camera's episode, also when one of them fails; then raise its error."""
    manifests: list[Manifest] = []
    errors: list[BaseException] = []
    for writer in writers:
        try:
            manifests.append(writer.finish(interrupted=interrupted))
        except BaseException as exc:  # Ctrl-C included: the other cameras still commit
            errors.append(exc)
            if len(errors) > 1:  # the first is raised, and said by whoever catches it
                camera = writer.writer.camera
                said = str(exc)
                logger.error("%s", said if said.startswith(f"camera {camera}")
                             else f"camera {camera}: {said}")
    if errors:
        raise errors[0]
    return manifests


def image_sampler(stats: ImageStats, stride: int) -> Callable[[int, np.ndarray], None]:
    """Adds every stride-th frame to stats (called in the camera's writer thread)."""
    def sample(index: int, frame: np.ndarray) -> None:
        if index % stride == 0:
            stats.add(frame)
    return sample
