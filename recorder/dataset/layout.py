"""Where everything of a LeRobot dataset lives: the one module that knows its layout.

v3.0 (LeRobot >= 0.4, the default) and the v2.1 per-episode layout, as an option for older
LeRobot. The farm adds its own staging records beside the raw frames (recorder/dataset/
staging.py); LeRobot ignores them.

Two numbers name an episode here. The *recording number* is given when capture starts: it
names the raw frames and, until packing, the episode's video files. The *episode index*
is LeRobot's: contiguous from 0, given when the episode joins the dataset. They differ
only after an interrupted recording, which keeps its raw frames but never joins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

DatasetFormat = Literal["v3.0", "v2.1"]
FORMATS: tuple[DatasetFormat, ...] = ("v3.0", "v2.1")

INFO_KEY = "meta/info.json"
STATS_KEY = "meta/stats.json"
TASKS_KEY = "meta/tasks.parquet"
EPISODES_KEY = "meta/episodes/chunk-000/file-000.parquet"
# v2.1
LEGACY_EPISODES_KEY = "meta/episodes.jsonl"
LEGACY_EPISODES_STATS_KEY = "meta/episodes_stats.jsonl"
LEGACY_TASKS_KEY = "meta/tasks.jsonl"

CHUNK_SIZE = 1000  # files per chunk folder (LeRobot's DEFAULT_CHUNK_SIZE)
DATA_FILE_SIZE_MB = 100
VIDEO_FILE_SIZE_MB = 200

CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
LEGACY_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
LEGACY_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"

CAMERA_PREFIX = "observation.images."

# Per-frame columns every LeRobot dataset has (LeRobot's DEFAULT_FEATURES).
DEFAULT_FEATURES: dict[str, dict] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}

_V3_VIDEO_FILE = re.compile(r"^videos/[^/]+/chunk-(\d{3})/file-(\d{3})\.mp4$")
_V2_VIDEO_FILE = re.compile(r"^videos/chunk-\d{3}/[^/]+/episode_(\d{6})\.mp4$")


def camera_key(camera: str) -> str:
    """The video feature key of a camera named camera ("cam0" -> observation.images.cam0)."""
    return camera if camera.startswith(CAMERA_PREFIX) else CAMERA_PREFIX + camera


def camera_name(video_key: str) -> str:
    """The camera name of a video feature key: its raw frames' folder name."""
    name = video_key.removeprefix(CAMERA_PREFIX)
    if not name or "/" in name:
        raise ValueError(f"video feature {video_key!r}: a name without '/' is needed")
    return name


def chunk_file(number: int) -> tuple[int, int]:
    """(chunk_index, file_index) of the number-th file of a kind."""
    return divmod(number, CHUNK_SIZE)


@dataclass(frozen=True)
class Layout:
    """Paths of one dataset format."""

    format: DatasetFormat = "v3.0"

    def video_key_of(self, *, recording: int, video_key: str) -> str:
        """Where the farm publishes the video of one recording and camera."""
        if self.format == "v2.1":
            return self.legacy_video(episode=recording, video_key=video_key)
        chunk, file = chunk_file(recording)
        return VIDEO_PATH.format(video_key=video_key, chunk_index=chunk, file_index=file)

    @staticmethod
    def legacy_video(*, episode: int, video_key: str) -> str:
        return LEGACY_VIDEO_PATH.format(episode_chunk=episode // CHUNK_SIZE,
                                        episode_index=episode, video_key=video_key)

    def data_key(self, episode: int) -> str:
        """The data parquet file of one episode: one file per episode in both formats."""
        if self.format == "v2.1":
            return LEGACY_DATA_PATH.format(episode_chunk=episode // CHUNK_SIZE,
                                           episode_index=episode)
        chunk, file = chunk_file(episode)
        return DATA_PATH.format(chunk_index=chunk, file_index=file)

    @staticmethod
    def video_file_numbers(keys: list[str]) -> list[int]:
        """The file numbers that video keys (of either layout) take."""
        numbers = []
        for key in keys:
            if m := _V3_VIDEO_FILE.match(key):
                numbers.append(int(m.group(1)) * CHUNK_SIZE + int(m.group(2)))
            elif m := _V2_VIDEO_FILE.match(key):
                numbers.append(int(m.group(1)))
        return numbers


def video_info(*, width: int, height: int, fps: int, codec: str, pix_fmt: str,
               encoder: dict[str, object]) -> dict[str, object]:
    """The "info" of a video feature, with the keys LeRobot 0.6 writes."""
    info: dict[str, object] = {
        "video.height": height, "video.width": width, "video.codec": codec,
        "video.pix_fmt": pix_fmt, "video.fps": fps, "video.channels": 3,
        "has_audio": False,
    }
    for name, value in encoder.items():
        info.setdefault(f"video.{name}", value)
    info["is_depth_map"] = False
    return info
