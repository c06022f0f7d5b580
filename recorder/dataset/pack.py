"""`recorder pack`: join a dataset's per-episode videos into LeRobot's usual files.

Workers publish one video per episode and camera (they finish in any order). LeRobot's
own writer appends episodes to files of up to 200 MB per camera; this does the same in
one pass at the end, losslessly: packets are copied (no re-encode), each episode's
timestamps offset by the real durations of the episodes before it in its file.

Safe to interrupt: the packed files are written under new file numbers and decoded back
(every episode's frames counted at its from/to timestamps) before the episode rows switch
to them in one atomic write; only then are the per-episode files deleted. A second run
packs what is still one episode per file and deletes files nothing refers to.
"""

from __future__ import annotations

import logging
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from encoder_worker.storage import Storage
from recorder.dataset import metadata
from recorder.dataset.failpoints import failpoint
from recorder.dataset.layout import CHUNK_SIZE, VIDEO_FILE_SIZE_MB, Layout
from recorder.dataset.staging import load_staged, staged_recordings
from recorder.dataset.videos import local_video, probe_video

logger = logging.getLogger(__name__)

# Timestamps of a frame in a packed file and in the episode rows agree within LeRobot's
# tolerance (1e-4 s); well inside it.
TIMESTAMP_TOLERANCE_S = 1e-5


class PackError(Exception):
    """Packing failed; the dataset is left as it was (the message says why)."""


@dataclass
class PackReport:
    files_written: dict[str, int] = field(default_factory=dict)  # video key -> packed files
    episodes_packed: int = 0
    files_deleted: int = 0
    bytes_written: int = 0


@dataclass
class _Entry:
    row: dict[str, Any]
    key: str  # its current video
    size: int


def pack_dataset(dataset: Storage, raw: Storage, *, max_file_mb: int = VIDEO_FILE_SIZE_MB,
                 scratch: Path | None = None) -> PackReport:
    """Pack every video of the dataset that holds one episode into files <= max_file_mb.

    Raises:
        PackError: a v2.1 dataset (one file per episode by design), or a packed file that
            does not decode to every episode's frames.
        DatasetError: no dataset there, or a damaged one.
    """
    info = metadata.read_info(dataset)
    if info is None:
        raise PackError(f"{dataset.url} holds no dataset (no meta/info.json)")
    if info["codebase_version"] != "v3.0":
        raise PackError(f"{dataset.url} is a {info['codebase_version']} dataset: its layout "
                        "is one video per episode; packing is for v3.0")
    rows = metadata.read_episode_rows(dataset, "v3.0", info["total_episodes"])
    video_keys = metadata.video_keys(info["features"])
    report = PackReport()
    with tempfile.TemporaryDirectory(prefix="pack-", dir=scratch) as tmp:
        for video_key in video_keys:
            groups = _groups(dataset, rows, video_key, max_file_mb * 1024 * 1024)
            next_number = _next_file_number(dataset, video_key)
            for group in groups:
                if len(group) < 2:
                    continue
                packed = Path(tmp) / f"packed-{next_number}.mp4"
                _concatenate(dataset, group, video_key, packed, scratch=Path(tmp))
                _verify(packed, group, video_key, fps=info["fps"])
                key = Layout().video_key_of(recording=next_number, video_key=video_key)
                report.bytes_written += packed.stat().st_size
                dataset.publish_file(key, packed)
                chunk, file = divmod(next_number, CHUNK_SIZE)
                for entry in group:
                    entry.row[f"videos/{video_key}/chunk_index"] = chunk
                    entry.row[f"videos/{video_key}/file_index"] = file
                report.files_written[video_key] = report.files_written.get(video_key, 0) + 1
                report.episodes_packed += len(group)
                next_number += 1
    if report.episodes_packed:
        failpoint("pack:before-switch")
        metadata.write_episode_rows(dataset, "v3.0", rows)  # the switch, one atomic put
        failpoint("pack:rows-switched")
        info["video_files_size_in_mb"] = max_file_mb
        metadata.write_json(dataset, "meta/info.json", info)
    report.files_deleted = _delete_unreferenced(dataset, raw, rows, video_keys)
    # Episodes per video key counted once per camera above; report episodes, not pairs.
    report.episodes_packed //= max(1, len(video_keys))
    return report


def video_file_key(row: dict[str, Any], video_key: str) -> str:
    return Layout().video_key_of(
        recording=row[f"videos/{video_key}/chunk_index"] * CHUNK_SIZE
        + row[f"videos/{video_key}/file_index"], video_key=video_key)


def _groups(dataset: Storage, rows: list[dict[str, Any]], video_key: str,
            max_bytes: int) -> list[list[_Entry]]:
    """Consecutive single-episode videos, grouped into files of at most max_bytes."""
    per_file: dict[str, int] = defaultdict(int)
    for row in rows:
        per_file[video_file_key(row, video_key)] += 1
    groups: list[list[_Entry]] = []
    current: list[_Entry] = []
    size = 0
    for row in rows:
        key = video_file_key(row, video_key)
        if per_file[key] != 1:  # packed already: ends a run of single-episode files
            if current:
                groups.append(current)
            current, size = [], 0
            continue
        entry = _Entry(row, key, dataset.size(key))
        if current and size + entry.size > max_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(entry)
        size += entry.size
    if current:
        groups.append(current)
    return groups


def _next_file_number(dataset: Storage, video_key: str) -> int:
    numbers = Layout.video_file_numbers(dataset.list_keys(f"videos/{video_key}"))
    return max(numbers, default=-1) + 1


def _concatenate(dataset: Storage, group: list[_Entry], video_key: str, output: Path, *,
                 scratch: Path) -> None:
    """Copy the group's packets into output; each episode starts where the last ended."""
    offset_s = 0.0
    last_dts: int | None = None
    with av.open(str(output), mode="w", format="mp4") as out:
        out_stream = None
        for entry in group:
            with local_video(dataset, entry.key, scratch=scratch) as path:
                duration = probe_video(path).duration_s
                with av.open(str(path)) as source:
                    stream = source.streams.video[0]
                    if out_stream is None:
                        out_stream = out.add_stream_from_template(stream, opaque=True)
                    time_base = stream.time_base
                    assert time_base is not None
                    offset = round(Fraction(offset_s).limit_denominator(10**9) / time_base)
                    for packet in source.demux(stream):
                        if packet.dts is None:
                            continue  # the demuxer's flush packet
                        packet.pts = None if packet.pts is None else packet.pts + offset
                        packet.dts += offset
                        if last_dts is not None and packet.dts <= last_dts:
                            raise PackError(f"{entry.key}: its first packets would be decoded "
                                            "before the previous episode's last; not packed")
                        last_dts = packet.dts
                        packet.stream = out_stream
                        out.mux(packet)
            entry.row[f"videos/{video_key}/from_timestamp"] = offset_s
            entry.row[f"videos/{video_key}/to_timestamp"] = offset_s + duration
            offset_s += duration


def _verify(packed: Path, group: list[_Entry], video_key: str, *, fps: int) -> None:
    """Decode the packed file: every episode's frames at its timestamps, none missing."""
    times: list[float] = []
    with av.open(str(packed)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            if frame.pts is None or frame.time is None:
                raise PackError(f"{packed.name}: a decoded frame has no timestamp")
            times.append(float(frame.time))
    if times != sorted(times):
        raise PackError(f"{packed.name}: decoded frames are out of order")
    for entry in group:
        start = entry.row[f"videos/{video_key}/from_timestamp"]
        length = entry.row["length"]
        expected = [start + i / fps for i in range(length)]
        got = [t for t in times if start - TIMESTAMP_TOLERANCE_S <= t
               < entry.row[f"videos/{video_key}/to_timestamp"] - TIMESTAMP_TOLERANCE_S]
        if len(got) != length or any(abs(a - b) > TIMESTAMP_TOLERANCE_S
                                     for a, b in zip(got, expected, strict=True)):
            raise PackError(
                f"episode {entry.row['episode_index']} {video_key}: {len(got)} frames at its "
                f"timestamps in the packed file, {length} expected; the dataset is unchanged")


def _delete_unreferenced(dataset: Storage, raw: Storage, rows: list[dict[str, Any]],
                         video_keys: list[str]) -> int:
    """Delete video files that no episode row and no staged episode refers to."""
    referenced = {video_file_key(row, key) for row in rows for key in video_keys}
    joined = metadata.joined_recordings(rows)
    for recording in staged_recordings(raw):
        if recording not in joined:  # its video waits to join: keep it
            referenced.update(load_staged(raw, recording).videos.values())
    deleted = 0
    for video_key in video_keys:
        for key in dataset.list_keys(f"videos/{video_key}"):
            if key.endswith(".mp4") and key not in referenced \
                    and Layout.video_file_numbers([key]):
                dataset.delete(key)
                failpoint("pack:deleting")
                deleted += 1
    return deleted
