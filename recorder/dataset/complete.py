"""Completing a dataset: staged episodes whose videos are all published join it, in order.

Called by FarmDataset.finalize() once the farm is done, and by `recorder encode-pending`
(which first encodes whatever video is missing). It is idempotent and safe to interrupt:
episodes join as a contiguous prefix in recording order (LeRobot's episode indices and
data indices have no gaps), data files and episode rows are written before info.json,
and info.json, written last, is what makes them part of the dataset.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from encoder_worker.jobs import EncodeResult, Status
from encoder_worker.storage import Storage
from recorder.dataset import metadata
from recorder.dataset.failpoints import failpoint
from recorder.dataset.layout import INFO_KEY, Layout
from recorder.dataset.retention import drop_counted_raw, drop_parts_left
from recorder.dataset.staging import StagedEpisode, load_rows, load_staged, staged_recordings
from recorder.dataset.videos import VideoProbe, local_video, probe_video

logger = logging.getLogger(__name__)

_V3_VIDEO = re.compile(r"chunk-(\d{3})/file-(\d{3})\.mp4$")


@dataclass
class Completion:
    """What a completion pass did and what still keeps episodes out."""

    added: list[int] = field(default_factory=list)  # episode indices that joined now
    total_episodes: int = 0
    total_frames: int = 0
    # (recording, why) of the first staged episode that cannot join yet; later ones wait too.
    waiting: tuple[int, str] | None = None
    staged_left: int = 0  # staged episodes not in the dataset after this pass
    raw_dropped: list[int] = field(default_factory=list)  # recordings whose raw frames went

    @property
    def complete(self) -> bool:
        return self.staged_left == 0


def verified_videos(results: Iterable[EncodeResult]) -> dict[str, VideoProbe]:
    """Video key -> frame count and duration, of the videos these results verified and
    published (a worker verifies each by decoding it): completion then need not read them."""
    return {r.output_key: VideoProbe(frames=r.frames, duration_s=r.duration_s)
            for r in results if r.status is Status.SUCCEEDED and r.duration_s is not None}


def complete_dataset(dataset: Storage, raw: Storage, *,
                     verified: Mapping[str, VideoProbe] | None = None,
                     keep_raw: bool = False) -> Completion:
    """Add every staged episode whose videos are all published, then delete the raw
    frames of every episode the dataset counts (retention.py); returns what happened.

    Args:
        verified: video key (its key in dataset) -> frame count and duration, as the
            encode that published it verified them (verified_videos of its results).
            These videos are not read again; the others (an earlier run's, packed ones)
            are read back to count their frames, a download each on S3.
        keep_raw: keep every raw frame (`--keep-raw`).

    Raises:
        DatasetError: no info.json, a dataset of another version, or a published video
            that disagrees with its episode's rows.
    """
    with _completion_lock(dataset):
        info = metadata.read_info(dataset)
        if info is None:
            raise metadata.DatasetError(f"{dataset.url} has no {INFO_KEY}: not a dataset "
                                        "this farm created")
        fmt = info["codebase_version"]
        layout = Layout(fmt)
        rows = metadata.read_episode_rows(dataset, fmt, info["total_episodes"])
        joined = metadata.joined_recordings(rows)
        staged = [r for r in staged_recordings(raw) if r not in joined]
        tasks = metadata.read_tasks(dataset, fmt)
        result = Completion()
        new_rows: list[dict[str, Any]] = []
        added_videos: list[str] = []
        frames = info["total_frames"]
        for recording in staged:
            episode = load_staged(raw, recording)
            data = load_rows(raw, recording)
            why = "its data rows are not uploaded yet" if data is None else \
                _missing_videos(dataset, episode)
            if why:
                result.waiting = (recording, why)
                break
            assert data is not None
            index = info["total_episodes"] + len(new_rows)
            durations = _check_videos(dataset, episode, verified or {})
            for task in episode.tasks:
                if task not in tasks:
                    tasks.append(task)
            metadata.write_parquet(dataset, layout.data_key(index),
                                   _data_table(data, index=index, first_frame=frames,
                                               tasks=tasks))
            if fmt == "v2.1":
                _legacy_videos(dataset, layout, episode, index)
            new_rows.append(_episode_row(episode, fmt=fmt, index=index, first_frame=frames,
                                         durations=durations, layout=layout))
            frames += episode.length
            added_videos += episode.videos.values()
        result.staged_left = len(staged) - len(new_rows)
        if new_rows:
            failpoint("complete:data-written")
            rows += new_rows
            metadata.write_tasks(dataset, fmt, tasks)
            metadata.write_episode_rows(dataset, fmt, rows)
            failpoint("complete:rows-written")
            metadata.write_stats(dataset, rows, fmt)
            failpoint("complete:before-info")
            info.update(total_episodes=len(rows), total_frames=frames, total_tasks=len(tasks),
                        splits={"train": f"0:{len(rows)}"})
            if fmt == "v2.1":
                info.update(total_chunks=(len(rows) - 1) // info["chunks_size"] + 1,
                            total_videos=len(rows) * sum(
                                f["dtype"] == "video" for f in info["features"].values()))
            metadata.write_json(dataset, INFO_KEY, info)  # the commit point
            result.added = [row["episode_index"] for row in new_rows]
            logger.info("dataset %s: episodes %s joined", dataset.url, result.added)
            drop_parts_left(dataset, added_videos)
        result.total_episodes = info["total_episodes"]
        result.total_frames = info["total_frames"]
        if not keep_raw:
            result.raw_dropped = drop_counted_raw(raw, metadata.joined_recordings(rows))
        return result


def _missing_videos(dataset: Storage, episode: StagedEpisode) -> str:
    missing = [key for key, video in episode.videos.items() if not dataset.exists(video)]
    return f"videos not published yet: {', '.join(missing)}" if missing else ""


def _check_videos(dataset: Storage, episode: StagedEpisode,
                  verified: Mapping[str, VideoProbe]) -> dict[str, float]:
    """Video key -> duration; raises when a video's frames disagree with the rows."""
    durations = {}
    for key, video in episode.videos.items():
        probe = verified.get(video)
        if probe is None:
            with local_video(dataset, video) as path:
                probe = probe_video(path)
        if probe.frames != episode.length:
            raise metadata.DatasetError(
                f"{dataset.url}/{video} has {probe.frames} frames, recording "
                f"{episode.recording} has {episode.length} data rows; the episode is not "
                "added: move the video away and run `recorder encode-pending` to encode it "
                "again")
        durations[key] = probe.duration_s
    return durations


def _data_table(data: pa.Table, *, index: int, first_frame: int, tasks: list[str]) -> pa.Table:
    length = data.num_rows
    task_index = [tasks.index(task) for task in data.column("task").to_pylist()]
    table = data.drop_columns(["task"])
    table = table.append_column("episode_index", pa.array([index] * length, pa.int64()))
    table = table.append_column("index", pa.array(range(first_frame, first_frame + length),
                                                  pa.int64()))
    return table.append_column("task_index", pa.array(task_index, pa.int64()))


def _episode_row(episode: StagedEpisode, *, fmt: str, index: int, first_frame: int,
                 durations: dict[str, float], layout: Layout) -> dict[str, Any]:
    row: dict[str, Any] = {"episode_index": index, "tasks": episode.tasks,
                           "length": episode.length}
    if fmt == "v2.1":
        row["stats"] = episode.stats
        row[metadata.RECORDING_COLUMN] = episode.recording
        return row
    data_key = layout.data_key(index)
    data_chunk, data_file = _chunk_file_of(data_key)
    row.update({"data/chunk_index": data_chunk, "data/file_index": data_file,
                "dataset_from_index": first_frame,
                "dataset_to_index": first_frame + episode.length})
    for key, video in sorted(episode.videos.items()):
        chunk, file = _chunk_file_of(video)
        row.update({f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file,
                    f"videos/{key}/from_timestamp": 0.0,
                    f"videos/{key}/to_timestamp": durations[key]})
    row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
    for feature, feature_stats in sorted(episode.stats.items()):
        for stat, value in feature_stats.items():
            row[f"stats/{feature}/{stat}"] = value
    row[metadata.RECORDING_COLUMN] = episode.recording
    return row


def _chunk_file_of(key: str) -> tuple[int, int]:
    match = _V3_VIDEO.search(key.replace(".parquet", ".mp4"))
    if match is None:
        raise ValueError(f"{key} is not a chunk-XXX/file-XXX path")
    return int(match.group(1)), int(match.group(2))


def _legacy_videos(dataset: Storage, layout: Layout, episode: StagedEpisode,
                   index: int) -> None:
    """v2.1 names videos by episode index: copy a video whose recording number differs."""
    for key, video in episode.videos.items():
        target = layout.legacy_video(episode=index, video_key=key)
        if target != video and not dataset.exists(target):
            with local_video(dataset, video) as path:
                dataset.publish_file(target, _copy_for_publish(path))


def _copy_for_publish(path: Path) -> Path:
    copy = path.with_name(f".{path.name}.copy")
    with open(path, "rb") as src, open(copy, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    return copy


@contextlib.contextmanager
def _completion_lock(dataset: Storage) -> Iterator[None]:
    """One completer at a time on a local folder (flock); on S3, run one at a time."""
    folder = dataset.local_path("meta")
    if folder is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".complete.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
