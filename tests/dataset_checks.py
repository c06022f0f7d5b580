"""Check a recorded dataset against LeRobot's v3.0 contract with pyarrow and PyAV only.

What LeRobot 0.6's reader relies on: info.json's totals, the episode rows' data ranges and
video files, and each frame found at from_timestamp + timestamp (within 1e-4 s). Frames
are compared with the raw frames they were encoded from.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from video_checks import psnr

from encoder_worker.raw_episode import RawEpisodeReader
from encoder_worker.raw_layout import raw_prefix
from encoder_worker.storage import open_storage

TOLERANCE_S = 1e-4


def check_v3_dataset(root: Path, *, raw_url: str | None, episodes: int, cameras: list[str],
                     frames_per_episode: int | None = None, min_psnr_db: float = 30.0,
                     state_dim: int | None = 6) -> dict:
    """Assert root is a complete v3.0 dataset of these episodes; returns its info.

    Args:
        raw_url: where the raw frames are, to compare each decoded frame with; None when
            they were deleted (raw retention): every frame is still found at its time.
    """
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["total_episodes"] == episodes
    video_keys = [k for k, f in info["features"].items() if f["dtype"] == "video"]
    assert video_keys == [f"observation.images.{c}" for c in cameras]
    for key in ("fps", "features", "total_frames", "total_tasks", "chunks_size", "data_path",
                "video_path", "data_files_size_in_mb", "video_files_size_in_mb", "splits"):
        assert key in info, key
    for key in video_keys:
        video_info = info["features"][key]["info"]
        assert {"video.height", "video.width", "video.codec", "video.pix_fmt", "video.fps",
                "has_audio", "is_depth_map"} <= set(video_info)
    if state_dim:
        assert info["features"]["observation.state"]["shape"] == [state_dim]
        assert info["features"]["action"]["shape"] == [state_dim]
    assert (root / "meta/stats.json").exists() and (root / "meta/tasks.parquet").exists()
    stats = json.loads((root / "meta/stats.json").read_text())
    for key in video_keys:
        assert np.asarray(stats[key]["mean"]).shape == (3, 1, 1)
        assert 0.0 <= np.min(stats[key]["min"]) <= np.max(stats[key]["max"]) <= 1.0

    rows = pa.concat_tables(
        [pq.read_table(p) for p in sorted((root / "meta/episodes").glob("*/*.parquet"))]
    ).to_pylist()[:episodes]
    assert [r["episode_index"] for r in rows] == list(range(episodes))
    # Data files in LeRobot's load order; rows beyond total_frames are not committed.
    data = pa.concat_tables(
        [pq.read_table(p) for p in sorted((root / "data").glob("*/*.parquet"))]
    ).slice(0, info["total_frames"]).to_pylist()
    assert [d["index"] for d in data] == list(range(info["total_frames"]))
    expected_from = 0
    for row in rows:
        assert row["dataset_from_index"] == expected_from, "no gap between episodes"
        expected_from = row["dataset_to_index"]
        length = row["length"]
        assert row["dataset_to_index"] - row["dataset_from_index"] == length
        if frames_per_episode is not None:
            assert length == frames_per_episode
        episode_rows = data[row["dataset_from_index"]:row["dataset_to_index"]]
        assert {d["episode_index"] for d in episode_rows} == {row["episode_index"]}
        assert [d["frame_index"] for d in episode_rows] == list(range(length))
        data_file = root / info["data_path"].format(chunk_index=row["data/chunk_index"],
                                                    file_index=row["data/file_index"])
        assert data_file.exists()
        timestamps = [d["timestamp"] for d in episode_rows]
        recording = row["farm/recording"]
        for camera, key in zip(cameras, video_keys, strict=True):
            video = root / info["video_path"].format(
                video_key=key, chunk_index=row[f"videos/{key}/chunk_index"],
                file_index=row[f"videos/{key}/file_index"])
            start = row[f"videos/{key}/from_timestamp"]
            decoded = frames_at(video, [start + t for t in timestamps])
            assert len(decoded) == length
            if raw_url is None:
                continue
            prefix = raw_prefix(recording=recording, camera=camera)
            raw = list(RawEpisodeReader(open_storage(raw_url), prefix).rgb_frames())
            assert len(decoded) == len(raw) == length
            for index, (got, want) in enumerate(zip(decoded, raw, strict=True)):
                value = psnr(got, want)
                assert value > min_psnr_db, f"{video} episode {row['episode_index']} " \
                                            f"frame {index}: PSNR {value:.1f}"
    assert expected_from == info["total_frames"]
    return info


def lerobot_installed() -> bool:
    return importlib.util.find_spec("lerobot") is not None


def check_with_lerobot(root: Path, *, episodes: int, frames: int, cameras: list[str],
                       min_psnr_db: float = 27.0) -> int:
    """Load root with LeRobot's own LeRobotDataset (make lerobot-conformance installs it),
    decode every item of every camera and compare it with its raw frame; returns the count
    of items."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    info = json.loads((root / "meta/info.json").read_text())
    dataset = LeRobotDataset("farm/conformance", root=root, video_backend="pyav")
    assert len(dataset) == episodes * frames
    assert dataset.num_episodes == episodes
    assert dataset.meta.video_keys == [f"observation.images.{c}" for c in cameras]
    recordings = {row["episode_index"]: row["farm/recording"]
                  for row in dataset.meta.episodes}
    raw = {(episode, camera): list(RawEpisodeReader(
        open_storage(root), raw_prefix(recording=recording, camera=camera)).rgb_frames())
        for episode, recording in recordings.items() for camera in cameras}
    for index in range(len(dataset)):
        item = dataset[index]
        episode, frame = int(item["episode_index"]), int(item["frame_index"])
        for name in ("observation.state", "action"):
            assert list(item[name].shape) == info["features"][name]["shape"]
        for camera in cameras:
            key = f"observation.images.{camera}"
            image = item[key]
            height, width, channels = info["features"][key]["shape"]
            assert tuple(image.shape) == (channels, height, width)
            decoded = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            value = psnr(decoded, raw[episode, camera][frame])
            assert value > min_psnr_db, (index, camera, value)
    return len(dataset)


def frames_at(video: Path, times: list[float]) -> list[np.ndarray]:
    """The decoded frames whose timestamps match times (each within TOLERANCE_S)."""
    decoded: list[tuple[float, np.ndarray]] = []
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            decoded.append((float(frame.time), frame.to_ndarray(format="rgb24")))
    found = []
    for wanted in times:
        matches = [image for time, image in decoded if abs(time - wanted) < TOLERANCE_S]
        assert len(matches) == 1, f"{video}: {len(matches)} frames at {wanted:.4f} s"
        found.append(matches[0])
    return found


def mirror(storage_url: str, folder: Path) -> Path:
    """Download every object under storage_url into folder (to check an S3 dataset)."""
    storage = open_storage(storage_url)
    for key in storage.list_keys(""):
        target = folder / key
        target.parent.mkdir(parents=True, exist_ok=True)
        storage.download_file(key, target)
    return folder
