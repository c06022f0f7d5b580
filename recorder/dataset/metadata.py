"""LeRobot metadata files: info.json, tasks, episode rows and stats, in v3.0 or v2.1.

Every file is written whole in one put (atomic on a local folder and on S3). info.json
is written last by complete_dataset(): it is the commit point a reader trusts, and
whatever lies beyond its totals (a data file, an episode row written before a crash) is
invisible to LeRobot and rewritten by the next completion.
"""

from __future__ import annotations

import io
import json
from typing import Any

import av
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from encoder_worker.jobs import EncoderOptions
from encoder_worker.storage import KeyNotFound, Storage
from recorder.dataset import stats as stats_module
from recorder.dataset.layout import (
    CHUNK_SIZE,
    DATA_FILE_SIZE_MB,
    DATA_PATH,
    DEFAULT_FEATURES,
    EPISODES_KEY,
    FORMATS,
    INFO_KEY,
    LEGACY_DATA_PATH,
    LEGACY_EPISODES_KEY,
    LEGACY_EPISODES_STATS_KEY,
    LEGACY_TASKS_KEY,
    LEGACY_VIDEO_PATH,
    STATS_KEY,
    TASKS_KEY,
    VIDEO_FILE_SIZE_MB,
    VIDEO_PATH,
    DatasetFormat,
    video_info,
)

# Extra column of the episode rows: which recording an episode came from (LeRobot
# ignores it; completion uses it to know what has joined already).
RECORDING_COLUMN = "farm/recording"


class DatasetError(Exception):
    """The dataset cannot be created, appended to or completed; the message says why."""


def new_info(*, format: DatasetFormat, fps: int, features: dict[str, dict],
             robot_type: str | None, options: EncoderOptions) -> dict[str, Any]:
    """info.json of an empty dataset with these features (video info filled in)."""
    all_features = {**features_with_video_info(features, fps=fps, options=options),
                    **DEFAULT_FEATURES}
    info: dict[str, Any] = {
        "codebase_version": format, "robot_type": robot_type, "total_episodes": 0,
        "total_frames": 0, "total_tasks": 0, "chunks_size": CHUNK_SIZE, "fps": fps,
        "splits": {}, "features": all_features,
    }
    if format == "v3.0":
        info.update(data_files_size_in_mb=DATA_FILE_SIZE_MB,
                    video_files_size_in_mb=VIDEO_FILE_SIZE_MB, data_path=DATA_PATH,
                    video_path=VIDEO_PATH)
    else:
        info.update(total_chunks=0, total_videos=0, data_path=LEGACY_DATA_PATH,
                    video_path=LEGACY_VIDEO_PATH)
    return info


def open_or_create(storage: Storage, *, format: DatasetFormat, fps: int,
                   features: dict[str, dict], robot_type: str | None,
                   options: EncoderOptions) -> None:
    """Check an existing dataset against a new recording, or write a new info.json.

    Raises:
        DatasetError: the dataset there has another version, fps or set of features;
            nothing was changed.
    """
    info = read_info(storage)
    if info is None:
        write_json(storage, INFO_KEY, new_info(format=format, fps=fps, features=features,
                                               robot_type=robot_type, options=options))
        return
    if info["codebase_version"] != format:
        raise DatasetError(
            f"{storage.url} is a LeRobot {info['codebase_version']} dataset; this recording "
            f"writes {format}: pass --dataset-format {info['codebase_version']} to append to "
            "it, or record into a new --repo-id")
    theirs = {k: (f["dtype"], list(f["shape"])) for k, f in info["features"].items()
              if k not in DEFAULT_FEATURES}
    ours = {k: (f["dtype"], list(f["shape"])) for k, f in features.items()}
    if info["fps"] != fps or theirs != ours:
        raise DatasetError(
            f"{storage.url} was recorded at {info['fps']} fps with features {theirs}; this "
            f"recording has {fps} fps and {ours}. Episodes of one dataset share them: "
            "record into a new --repo-id")


def features_with_video_info(features: dict[str, dict], *, fps: int,
                             options: EncoderOptions) -> dict[str, dict]:
    codec = av.codec.Codec(options.codec, "w").name
    canonical = {"libsvtav1": "av1", "libaom-av1": "av1", "libx264": "h264",
                 "libx265": "hevc", "h264_nvenc": "h264", "hevc_nvenc": "hevc",
                 "av1_nvenc": "av1"}.get(codec, codec)
    encoder: dict[str, object] = {"g": options.gop, "crf": options.crf, "preset": options.preset,
               "fast_decode": 0, "video_backend": "pyav", "extra_options": options.extra}
    result = {}
    for key, feature in features.items():
        feature = {**feature, "shape": list(feature["shape"])}
        if feature["dtype"] == "video":
            height, width = feature["shape"][:2]
            feature["info"] = video_info(width=width, height=height, fps=fps, codec=canonical,
                                         pix_fmt=options.pix_fmt, encoder=encoder)
        result[key] = feature
    return result


def read_info(storage: Storage) -> dict[str, Any] | None:
    """The dataset's info.json, or None when there is no dataset there yet.

    Raises:
        DatasetError: there is a dataset of a format this farm does not write.
    """
    try:
        info = json.loads(storage.get_bytes(INFO_KEY))
    except KeyNotFound:
        return None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{storage.url}/{INFO_KEY} is not valid JSON ({exc}); the dataset "
                           "is left as it is") from exc
    version = info.get("codebase_version")
    if version not in FORMATS:
        raise DatasetError(
            f"{storage.url} holds a LeRobot dataset of codebase version {version!r}; this "
            f"farm writes {' or '.join(FORMATS)} and never modifies another version: record "
            "into a new --repo-id (or convert it with LeRobot's own tools first)")
    return info


def write_json(storage: Storage, key: str, value: Any) -> None:
    storage.put_bytes(key, (json.dumps(value, indent=2) + "\n").encode())


def write_parquet(storage: Storage, key: str, table: pa.Table) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.put_bytes(key, buffer.getvalue())


def read_parquet(storage: Storage, key: str) -> pa.Table | None:
    try:
        return pq.read_table(io.BytesIO(storage.get_bytes(key)))
    except KeyNotFound:
        return None


def read_tasks(storage: Storage, format: DatasetFormat) -> list[str]:
    """Task strings in task_index order."""
    if format == "v2.1":
        lines = _read_jsonl(storage, LEGACY_TASKS_KEY)
        return [line["task"] for line in sorted(lines, key=lambda line: line["task_index"])]
    try:
        frame = pd.read_parquet(io.BytesIO(storage.get_bytes(TASKS_KEY)))
    except KeyNotFound:
        return []
    return [str(task) for task in frame.sort_values("task_index").index]


def write_tasks(storage: Storage, format: DatasetFormat, tasks: list[str]) -> None:
    if format == "v2.1":
        _write_jsonl(storage, LEGACY_TASKS_KEY,
                     [{"task_index": i, "task": task} for i, task in enumerate(tasks)])
        return
    frame = pd.DataFrame({"task_index": list(range(len(tasks)))},
                         index=pd.Index(tasks, name="task"))
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    storage.put_bytes(TASKS_KEY, buffer.getvalue())


def video_keys(features: dict[str, dict]) -> list[str]:
    """The camera features, in the dataset's order."""
    return [key for key, feature in features.items() if feature["dtype"] == "video"]


def joined_recordings(rows: list[dict[str, Any]]) -> set[int]:
    """The recording numbers of these episode rows: episodes in the dataset."""
    return {row[RECORDING_COLUMN] for row in rows if row.get(RECORDING_COLUMN) is not None}


def read_episode_rows(storage: Storage, format: DatasetFormat,
                      total_episodes: int) -> list[dict[str, Any]]:
    """The rows of the first total_episodes episodes (rows beyond are not committed)."""
    if format == "v2.1":
        rows = _read_jsonl(storage, LEGACY_EPISODES_KEY)
        stats = {line["episode_index"]: line["stats"]
                 for line in _read_jsonl(storage, LEGACY_EPISODES_STATS_KEY)}
        for row in rows:
            row["stats"] = stats.get(row["episode_index"], {})
    else:
        table = read_parquet(storage, EPISODES_KEY)
        rows = table.to_pylist() if table is not None else []
    rows = sorted((r for r in rows if r["episode_index"] < total_episodes),
                  key=lambda r: r["episode_index"])
    if [r["episode_index"] for r in rows] != list(range(total_episodes)):
        raise DatasetError(f"{storage.url}: the episode rows do not cover episodes 0.."
                           f"{total_episodes - 1} that info.json counts; the dataset is "
                           "damaged and left as it is")
    return rows


def write_episode_rows(storage: Storage, format: DatasetFormat,
                       rows: list[dict[str, Any]]) -> None:
    if format == "v2.1":
        _write_jsonl(storage, LEGACY_EPISODES_KEY, [
            {k: v for k, v in row.items() if k != "stats"} for row in rows])
        _write_jsonl(storage, LEGACY_EPISODES_STATS_KEY, [
            {"episode_index": row["episode_index"], "stats": row["stats"]} for row in rows])
        return
    write_parquet(storage, EPISODES_KEY, pa.Table.from_pylist(rows))


def episode_stats(row: dict[str, Any], format: DatasetFormat) -> dict[str, dict[str, Any]]:
    """The stats of one episode row, as {feature: {stat: nested lists}}."""
    if format == "v2.1":
        return dict(row["stats"])
    result: dict[str, dict[str, Any]] = {}
    for column, value in row.items():
        if column.startswith("stats/"):
            feature, stat = column[len("stats/"):].rsplit("/", 1)
            result.setdefault(feature, {})[stat] = value
    return result


def write_stats(storage: Storage, rows: list[dict[str, Any]], format: DatasetFormat) -> None:
    per_episode = [stats_module.from_json(episode_stats(row, format)) for row in rows]
    write_json(storage, STATS_KEY, stats_module.to_json(stats_module.aggregate(per_episode)))


def _read_jsonl(storage: Storage, key: str) -> list[dict[str, Any]]:
    try:
        text = storage.get_bytes(key).decode()
    except KeyNotFound:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _write_jsonl(storage: Storage, key: str, lines: list[dict[str, Any]]) -> None:
    storage.put_bytes(key, "".join(json.dumps(line) + "\n" for line in lines).encode())
