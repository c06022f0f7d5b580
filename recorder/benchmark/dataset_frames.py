"""The frames a LeRobot v3.0 dataset's videos really hold, per episode and camera.

An episode row names, for each camera, the video file its frames are in and their span
(`videos/<key>/from_timestamp` .. `to_timestamp`); LeRobot concatenates episodes into one
file, the farm writes one file per episode. Decoding every frame of a file and counting
those in each episode's span tells frames lost (a streaming encoder that dropped some)
from the rows the episode has. Works alike for LeRobot's own datasets and the farm's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import pyarrow.parquet as pq


@dataclass(frozen=True)
class EpisodeFrames:
    episode: int  # its index in the dataset
    rows: int  # its length: data rows
    videos: dict[str, int]  # video key -> frames decoded in its span


def _episode_rows(root: Path) -> Iterator[dict]:
    for path in sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet")):
        yield from pq.read_table(path).to_pylist()


def frame_times(path: Path) -> list[float]:
    """The time of every frame a video file decodes to, in seconds."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # decoding is the slow part; order is kept
        return [float(frame.time) for frame in container.decode(stream)
                if frame.time is not None]


def video_frames(root: Path) -> list[EpisodeFrames]:
    """Every episode of the dataset at root, with the frames of each camera's video.

    Raises:
        FileNotFoundError: no meta/info.json there.
    """
    info = json.loads((root / "meta" / "info.json").read_text())
    fps = float(info["fps"])
    keys = [key for key, feature in info["features"].items() if feature["dtype"] == "video"]
    decoded: dict[Path, list[float]] = {}
    found = []
    for row in sorted(_episode_rows(root), key=lambda r: r["episode_index"]):
        videos = {}
        for key in keys:
            path = root / info["video_path"].format(
                video_key=key, chunk_index=row[f"videos/{key}/chunk_index"],
                file_index=row[f"videos/{key}/file_index"])
            if path not in decoded:
                decoded[path] = frame_times(path) if path.is_file() else []
            # Frame i of the episode is at from + i / fps: half a frame's margin either side.
            start = row[f"videos/{key}/from_timestamp"] - 0.5 / fps
            end = row[f"videos/{key}/to_timestamp"] - 0.5 / fps
            videos[key] = sum(start <= t < end for t in decoded[path])
        found.append(EpisodeFrames(episode=row["episode_index"], rows=row["length"],
                                   videos=videos))
    return found
