"""Where raw episodes live in their storage: the one module that knows the key layout.

    raw/episode_000007/                 one recording, named by its recording number
        cam0/segment_00000.raw ...      a camera's raw frames (raw_episode.py's format)
        cam0/manifest.json              written last: that camera's frames are complete
        rows.parquet                    the episode's data rows (state, action, task)
        episode.json                    the episode record, written last: its commit point

The recording number is given when capture starts; LeRobot's episode index is given
later, when the episode joins the dataset. Both sides import this module: the recorder
writes these keys, workers read them.
"""

from __future__ import annotations

import re

RAW_ROOT = "raw"
MANIFEST_NAME = "manifest.json"
ROWS_NAME = "rows.parquet"
RECORD_NAME = "episode.json"

_RECORDING = re.compile(r"^raw/episode_(\d{6})/")
_RECORD = re.compile(r"^raw/episode_(\d{6})/episode\.json$")
_MANIFEST = re.compile(r"^raw/episode_(\d{6})/([^/]+)/manifest\.json$")


def recording_prefix(recording: int) -> str:
    """The prefix of everything one recording stored."""
    return f"{RAW_ROOT}/episode_{recording:06d}"


def raw_prefix(*, recording: int, camera: str) -> str:
    """The prefix of one camera's raw frames in one recording."""
    return f"{recording_prefix(recording)}/{camera}"


def manifest_key(prefix: str) -> str:
    return f"{prefix}/{MANIFEST_NAME}"


def segment_name(index: int) -> str:
    return f"segment_{index:05d}.raw"


def rows_key(recording: int) -> str:
    return f"{recording_prefix(recording)}/{ROWS_NAME}"


def record_key(recording: int) -> str:
    return f"{recording_prefix(recording)}/{RECORD_NAME}"


def partial_name(name: str) -> str:
    """The name a file has while it is written: dotted, so no reader takes it whole."""
    return f".{name}.partial"


def is_partial(name: str) -> bool:
    return name.startswith(".") and name.endswith(".partial")


def recording_of(key: str) -> int | None:
    """The recording number of any key under a recording's prefix; None for others."""
    match = _RECORDING.match(key)
    return int(match.group(1)) if match else None


def recording_of_record(key: str) -> int | None:
    """The recording number of an episode record's key; None for any other key."""
    match = _RECORD.match(key)
    return int(match.group(1)) if match else None


def manifest_of(key: str) -> tuple[int, str] | None:
    """(recording, camera) of a manifest's key; None for any other key."""
    match = _MANIFEST.match(key)
    return (int(match.group(1)), match.group(2)) if match else None
