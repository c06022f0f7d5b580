"""`recorder`'s settings: FARM_* environment variables and the flags of the same names.

They are the dataset layer's options (DatasetOptions, FarmOptions, the job contract's
EncoderOptions: each field defined once, there) plus what only a `recorder record` session
has: how many episodes of what length, the synthetic cameras and robot, the capture's nice.
"""

from __future__ import annotations

from typing import Self

import av
from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from encoder_worker.jobs import EncoderOptions
from recorder.dataset.options import DatasetOptions
from recorder.farm.options import FarmOptions


class RecorderSettings(BaseSettings, DatasetOptions, FarmOptions, EncoderOptions):
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
    capture_nice: int = Field(
        default=0, ge=-20, le=0,
        description="run the recorder (capture loop, camera writers) at this nice value and "
                    "its session's autogroup with it, e.g. -10: ahead of other programs on "
                    "the robot host (needs root, CAP_SYS_NICE or an RLIMIT_NICE allowance); "
                    "0: unchanged")

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
        self.check_raw_format(self.pix_fmt)
        return self

    def dataset_options(self) -> DatasetOptions:
        return DatasetOptions.model_validate(self._fields_of(DatasetOptions))

    def farm_options(self) -> FarmOptions:
        return FarmOptions.model_validate(self._fields_of(FarmOptions))

    def encoder_options(self) -> EncoderOptions:
        return EncoderOptions.model_validate(self._fields_of(EncoderOptions))

    def _fields_of(self, model: type[BaseModel]) -> dict[str, object]:
        return self.model_dump(include=set(model.model_fields))
