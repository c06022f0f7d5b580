"""Which farm encodes a recording, and how its jobs are sent."""

from __future__ import annotations

from pydantic import BaseModel, Field


class FarmOptions(BaseModel):
    """Inline encoding, the zero-config local farm, or a farm at a broker URL."""

    async_encoding: bool = Field(default=False, description="encode on the farm, not inline")
    video_encoding_workers: int = Field(
        default=2, ge=1, le=64, description="local workers of the zero-config farm")
    video_encoding_queue_size: int = Field(
        default=100, ge=1,
        description="videos being encoded at most (a video's windows and parts count once); "
                    "then the recorder waits")
    wait: bool = Field(default=True, description="wait for every video at the end")
    broker: str | None = Field(
        default=None, description="Redis URL of a farm; none starts a private one")
    shared_folder: bool = Field(
        default=False,
        description="the storage folders are on a disk every worker mounts (NFS); workers "
                    "map them with their own --storage")
    backlog_limit: int = Field(
        default=3, ge=1,
        description="episodes recorded and not encoded yet beyond which the recorder says "
                    "that the farm is slower than the robot (once), with what to do")
    share_capture_host: bool = Field(
        default=True,
        description="the zero-config farm's workers encode while an episode is captured, "
                    "in the CPU time the capture leaves (--capture-cpus); off: they pause for "
                    "the capture and encode between and after episodes "
                    "(benchmarks/README.md, 'Encoding during the capture')")
    capture_cpus: float = Field(
        default=0.7, ge=0,
        description="CPU a capture keeps for itself at least when workers on its host "
                    "share it, in CPUs: once the recorder was measured, workers that may cap "
                    "their CPU time (a cgroup: as root) use every CPU within the rest of the "
                    "host's CPU time, leaving it this or what it was measured to use plus "
                    "0.2, whichever is more; until then, where that is every CPU, and always "
                    "for other workers, they keep off this many CPUs, rounded up (0: none, "
                    "the encodes run on every CPU; "
                    "benchmarks/README.md, 'A cap on the workers' CPU time')")
    encode_window_s: float = Field(
        default=2.0, ge=0,
        description="async: each camera's frames are sent to the farm in windows of about "
                    "this many seconds while the episode is recorded, and joined into one "
                    "video when it is saved, so that the dataset is complete soon after the "
                    "last frame; 0: an episode is sent only once saved "
                    "(benchmarks/README.md, 'Encoding while recording')")
    # Defaults measured (benchmarks/README.md, "Split episodes"): see recorder/dataset/
    # jobs.py's part_count for why.
    split_after_s: float = Field(
        default=20.0, ge=0,
        description="async, with --encode-window-s 0: an episode longer than this many "
                    "seconds is encoded as parts by several workers at once, joined into one "
                    "video; 0: never split")
    split_part_s: float = Field(
        default=7.5, gt=0,
        description="seconds per part of a split episode, at most (the part count is "
                    "rounded up to a multiple of 4)")
