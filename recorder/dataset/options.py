"""What a FarmDataset is told: where it lives and how its raw frames are stored.

The encoder's settings are the job contract's EncoderOptions (one set of defaults, equal to
LeRobot's); which farm encodes is recorder/farm/options.py's FarmOptions. `recorder`'s
settings (recorder/settings.py) are these models plus its own session fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator

from encoder_worker.raw_frames import INTRA_CODECS, Compression
from encoder_worker.storage import check_url
from recorder.dataset.layout import DatasetFormat

RawFormat = Literal["auto", "rgb24", "yuv420p"]


class DatasetOptions(BaseModel):
    """Where a dataset and its raw frames are stored, and how raw frames are written."""

    repo_id: str = Field(default="local/robot_dataset", description="dataset name")
    output_dir: Path = Field(default=Path("recordings"), description="local root of datasets")
    storage: str | None = Field(
        default=None, description="where raw episodes go (folder or s3://); default: the dataset")
    output_storage: str | None = Field(
        default=None, description="where videos go; default: the raw storage")
    dataset_format: DatasetFormat = Field(
        default="v3.0", description="LeRobot dataset version: v3.0 (LeRobot >= 0.4) or the "
                                    "v2.1 per-episode layout of older LeRobot")

    segment_frames: int = Field(default=30, ge=1, description="frames per raw segment file")
    raw_format: RawFormat = Field(
        default="auto",
        description="pixel format of stored raw frames: yuv420p takes half the bytes of "
                    "rgb24 and loses nothing a yuv420p video keeps; auto: yuv420p when "
                    "--pix-fmt is yuv420p, else rgb24")
    raw_compression: Compression = Field(
        default="none",
        description="compression of raw frames: none; lossless zstd (about 0.35x of rgb24 "
                    "with yuv420p, a few ms of robot CPU per frame) or ffv1 (about 0.2x, "
                    "about 12 ms per frame: for fast hosts with slow disks or links); "
                    "mjpeg, near-lossless (about 0.05x, under 0.2 dB lost in the video): "
                    "the raw rate a robot's disk carries at 1080p")
    writer_queue_frames: int = Field(
        default=90, ge=1, description="frames a camera's writer may hold before the loop waits")
    spool_max_mb: int = Field(
        default=4096, ge=1,
        description="raw MB waiting for upload (s3 storage) before recording waits for uploads")
    keep_raw: bool = Field(
        default=False,
        description="keep every raw frame; by default an episode's raw frames are deleted once "
                    "the dataset counts it (its videos verified): interrupted and cleared "
                    "recordings keep theirs")
    spool_dir: Path | None = Field(
        default=None,
        description="local folder of raw files waiting for upload (s3 storage), one sub-folder "
                    "per storage; kept across runs. Default: OUTPUT_DIR/.upload-spool")

    @field_validator("storage", "output_storage")
    @classmethod
    def _storage_url(cls, url: str | None) -> str | None:
        return None if url is None else check_url(url)

    @property
    def dataset_root(self) -> Path:
        return self.output_dir / self.repo_id

    @property
    def raw_storage_url(self) -> str:
        return self.storage or str(self.dataset_root)

    @property
    def output_storage_url(self) -> str:
        return self.output_storage or self.raw_storage_url

    @property
    def spool_root(self) -> Path:
        """Where upload spools live; absolute, so messages naming it stay right."""
        return (self.spool_dir or self.output_dir / ".upload-spool").absolute()

    def raw_pix_fmt(self, video_pix_fmt: str) -> str:
        """The pixel format raw frames are stored in (raw_format, auto resolved)."""
        if self.raw_format != "auto":
            return self.raw_format
        # A yuv420p video keeps no more than yuv420p raw frames hold.
        return "yuv420p" if video_pix_fmt == "yuv420p" else "rgb24"

    def raw_pix_fmt_for(self, width: int, height: int, video_pix_fmt: str) -> str:
        """raw_pix_fmt for a camera of this size: auto keeps rgb24 for an odd size,
        which yuv420p cannot hold."""
        if self.raw_format == "auto" and (width % 2 or height % 2):
            return "rgb24"
        return self.raw_pix_fmt(video_pix_fmt)

    def check_raw_format(self, video_pix_fmt: str) -> None:
        """Raises ValueError when raw frames could not be stored as asked."""
        if (self.raw_compression in INTRA_CODECS
                and self.raw_pix_fmt(video_pix_fmt) != "yuv420p"):
            raise ValueError(f"--raw-compression {self.raw_compression} stores yuv420p "
                             "frames: use it with --raw-format yuv420p (or auto with "
                             "--pix-fmt yuv420p)")
