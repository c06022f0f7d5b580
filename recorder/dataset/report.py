"""EpisodeReport: what saving one episode cost the caller, and what it stored."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from recorder.capture.record_loop import CaptureStats


@dataclass
class EpisodeReport:
    recording: int  # the recording number: names its raw frames and, until packing, videos
    frames_recorded: dict[str, int]  # camera -> frames in its manifest
    frames: int = 0  # frames added (data rows)
    raw_bytes: int = 0  # raw frame bytes stored (or shipped), all cameras
    # How long save_episode() held the caller. With a farm, the commit (last segments,
    # manifests, rows, then the episode record) runs behind the next capture: commit_s.
    save_s: float = 0.0
    commit_s: float = 0.0
    submission_s: float = 0.0  # farm: sending jobs, waiting for queue room included
    inline_encode_s: float = 0.0  # inline: the recorder blocked on encoding
    writer_waits: int = 0  # frames for which a camera writer was behind and add_frame waited
    job_ids: list[str] = field(default_factory=list)
    capture: CaptureStats | None = None  # filled in by a capture loop that measured it
