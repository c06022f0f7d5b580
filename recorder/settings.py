"""Recorder settings: FARM_* environment variables and the `recorder` flags of the same names."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

import av
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from encoder_worker.jobs import EncoderOptions
from encoder_worker.raw_frames import Compression
from encoder_worker.storage import check_url


class RecorderSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FARM_", extra="ignore")

    episodes: int = Field(default=2, ge=1, description="episodes to record")
    episode_time: float = Field(default=10.0, gt=0, le=3600, description="seconds per episode")
    reset_time: float = Field(default=0.0, ge=0, description="seconds between episodes")
    fps: int = Field(default=30, ge=1, le=240, description="capture rate, frames per second")
    cameras: int = Field(default=2, ge=1, le=16, description="synthetic cameras")
    width: int = Field(default=640, ge=16, le=7680, description="frame width, even")
    height: int = Field(default=480, ge=16, le=4320, description="frame height, even")
    seed: int = Field(default=0, description="seed of the synthetic cameras and robot")
    robot_dof: int = Field(default=6, ge=1, le=64,
                           description="joints of the synthetic robot (state and action size)")
    robot_type: str = Field(default="synthetic", description="robot_type in meta/info.json")
    task: str = Field(default="move the synthetic arm",
                      description="the task in words, stored with every frame")
    dataset_format: Literal["v3.0", "v2.1"] = Field(
        default="v3.0", description="LeRobot dataset version: v3.0 (LeRobot >= 0.4) or the "
                                    "v2.1 per-episode layout of older LeRobot")

    async_encoding: bool = Field(default=False, description="encode on the farm, not inline")
    video_encoding_workers: int = Field(
        default=2, ge=1, le=64, description="local workers of the zero-config farm")
    video_encoding_queue_size: int = Field(
        default=100, ge=1, description="encode jobs outstanding at most; then the recorder waits")
    wait: bool = Field(default=True, description="wait for every video at the end")

    broker: str | None = Field(
        default=None, description="Redis URL of a farm; none starts a private one")
    storage: str | None = Field(
        default=None, description="where raw episodes go (folder or s3://); default: the dataset")
    output_storage: str | None = Field(
        default=None, description="where videos go; default: the raw storage")
    output_dir: Path = Field(default=Path("recordings"), description="local root of datasets")
    repo_id: str = Field(default="local/robot_dataset", description="dataset name")

    codec: str = Field(default="libsvtav1", description="libsvtav1, libx264, libx265, h264_nvenc…")
    crf: int | None = Field(default=30, ge=0, le=63, description="constant rate factor")
    gop: int | None = Field(default=2, ge=1, description="keyframe interval")
    preset: str | None = Field(default="12", description="encoder preset")
    pix_fmt: str = Field(default="yuv420p", description="pixel format of the video")

    segment_frames: int = Field(default=30, ge=1, description="frames per raw segment file")
    raw_format: Literal["auto", "rgb24", "yuv420p"] = Field(
        default="auto",
        description="pixel format of stored raw frames: yuv420p takes half the bytes of "
                    "rgb24 and loses nothing a yuv420p video keeps; auto: yuv420p when "
                    "--pix-fmt is yuv420p, else rgb24")
    raw_compression: Compression = Field(
        default="none",
        description="lossless compression of raw frames: none; zstd (about 0.35x of rgb24 "
                    "with yuv420p, a few ms of robot CPU per frame); ffv1 (about 0.2x, "
                    "about 12 ms per frame: for fast hosts with slow disks or links)")
    writer_queue_frames: int = Field(
        default=90, ge=1, description="frames a camera's writer may hold before the loop waits")
    shared_folder: bool = Field(
        default=False,
        description="the storage folders are on a disk every worker mounts (NFS); workers "
                    "map them with their own --storage")
    spool_max_mb: int = Field(
        default=4096, ge=1,
        description="raw MB waiting for upload (s3 storage) before recording waits for uploads")
    spool_dir: Path | None = Field(
        default=None,
        description="local folder of raw files waiting for upload (s3 storage), one sub-folder "
                    "per storage; kept across runs. Default: OUTPUT_DIR/.upload-spool")
    capture_nice: int = Field(
        default=0, ge=-20, le=0,
        description="run the recorder (capture loop, camera writers) at this nice value and "
                    "its session's autogroup with it, e.g. -10: ahead of other programs on "
                    "the robot host (needs root, CAP_SYS_NICE or an RLIMIT_NICE allowance); "
                    "0: unchanged")
    # Defaults measured (benchmarks/README.md, "Split episodes"): see recorder/dataset/
    # jobs.py's part_count for why.
    split_after_s: float = Field(
        default=20.0, ge=0,
        description="async: an episode longer than this many seconds is encoded as parts by "
                    "several workers at once, joined into one video; 0: never split")
    split_part_s: float = Field(
        default=7.5, gt=0,
        description="seconds per part of a split episode, at most (the part count is "
                    "rounded up to a multiple of 4)")

    @field_validator("storage", "output_storage")
    @classmethod
    def _storage_url(cls, url: str | None) -> str | None:
        return None if url is None else check_url(url)

    @field_validator("codec")
    @classmethod
    def _known_encoder(cls, codec: str) -> str:
        try:
            av.codec.Codec(codec, "w")
        except av.codec.codec.UnknownCodecError:
            raise ValueError(f"this PyAV/FFmpeg build has no encoder {codec!r}; try libsvtav1, "
                             "libx264, libx265 or h264_nvenc") from None
        return codec

    @model_validator(mode="after")
    def _even_size(self) -> Self:
        if self.pix_fmt in ("yuv420p", "nv12") and (self.width % 2 or self.height % 2):
            raise ValueError(f"--width and --height must be even for pix_fmt {self.pix_fmt} "
                             f"(an even width and height), got {self.width}x{self.height}")
        if self.raw_compression == "ffv1" and self.raw_pix_fmt != "yuv420p":
            raise ValueError("--raw-compression ffv1 stores yuv420p frames: use it with "
                             "--raw-format yuv420p (or auto with --pix-fmt yuv420p)")
        return self

    @property
    def raw_pix_fmt(self) -> str:
        """The pixel format raw frames are stored in (--raw-format, auto resolved)."""
        if self.raw_format != "auto":
            return self.raw_format
        # A yuv420p video keeps no more than yuv420p raw frames hold.
        return "yuv420p" if self.pix_fmt == "yuv420p" else "rgb24"

    def raw_pix_fmt_for(self, width: int, height: int) -> str:
        """raw_pix_fmt for a camera of this size: auto keeps rgb24 for an odd size,
        which yuv420p cannot hold."""
        if self.raw_format == "auto" and (width % 2 or height % 2):
            return "rgb24"
        return self.raw_pix_fmt

    @property
    def dataset_root(self) -> Path:
        return self.output_dir / self.repo_id

    @property
    def raw_storage_url(self) -> str:
        return self.storage or str(self.dataset_root)

    @property
    def output_storage_url(self) -> str:
        return self.output_storage or self.raw_storage_url

    def encoder_options(self) -> EncoderOptions:
        return EncoderOptions(codec=self.codec, crf=self.crf, gop=self.gop, preset=self.preset,
                              pix_fmt=self.pix_fmt)
