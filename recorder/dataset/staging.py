"""Staged episodes: recorded and committed, waiting for their videos to join the dataset.

save_episode() writes, beside the episode's raw frames, its data rows (rows.parquet) and
then its record (episode.json): the record is the episode's commit point, the dataset's
journal of what was recorded. complete_dataset() turns a staged episode into LeRobot
metadata once every one of its videos is published.
"""

from __future__ import annotations

import io
import time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from encoder_worker.raw_layout import RAW_ROOT, record_key, recording_of_record, rows_key
from encoder_worker.storage import KeyNotFound, Storage

STAGING_SCHEMA_VERSION = 1


class StagedEpisode(BaseModel):
    """What complete_dataset() needs of one recorded episode besides its rows and videos."""

    schema_version: int = STAGING_SCHEMA_VERSION
    recording: int = Field(ge=0)
    length: int = Field(ge=1)
    tasks: list[str] = Field(description="the episode's tasks, in order of first use")
    videos: dict[str, str] = Field(description="video feature key -> key of its video")
    # Per feature and statistic, nested lists (numpy arrays as JSON).
    stats: dict[str, dict[str, Any]]
    recorded_at: float = Field(default_factory=time.time)


def rows_to_parquet(columns: dict[str, pa.Array]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer)
    return buffer.getvalue()


def staged_recordings(raw: Storage) -> list[int]:
    """Recording numbers with a committed episode record, in order."""
    return sorted(n for key in raw.list_keys(RAW_ROOT)
                  if (n := recording_of_record(key)) is not None)


def load_staged(raw: Storage, recording: int) -> StagedEpisode:
    return StagedEpisode.model_validate_json(raw.get_bytes(record_key(recording)))


def load_rows(raw: Storage, recording: int) -> pa.Table | None:
    """The episode's data rows; None when they are not uploaded yet."""
    try:
        return pq.read_table(io.BytesIO(raw.get_bytes(rows_key(recording))))
    except KeyNotFound:
        return None
