"""Worker settings: FARM_* environment variables, overridden by CLI flags of the same names."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from encoder_worker.cpu_cap import GROUP
from encoder_worker.jobs import ENCODE_QUEUE
from encoder_worker.storage import check_url

DEFAULT_BROKER = "redis://localhost:6379/0"


WORKER_ENV_PREFIX = "FARM_WORKER_"
# Before, workers read FARM_*, the recorder's names: FARM_STORAGE was a raw-data URL to one
# and a mount path to the other. Still read, with a warning, until the next release.
LEGACY_ENV_PREFIX = "FARM_"


class _LegacyEnvironment(EnvSettingsSource):
    """FARM_<NAME> for a worker setting not given as FARM_WORKER_<NAME>, with a warning."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls, env_prefix=LEGACY_ENV_PREFIX)

    def __call__(self) -> dict[str, Any]:
        given = {key.upper() for key in os.environ}
        found = {name: value for name, value in super().__call__().items()
                 if f"{WORKER_ENV_PREFIX}{name.upper()}" not in given}
        for name in found:
            warnings.warn(f"{LEGACY_ENV_PREFIX}{name.upper()} is read as "
                          f"{WORKER_ENV_PREFIX}{name.upper()}; rename it: workers stop reading "
                          "the recorder's FARM_* names in the next release",
                          FutureWarning, stacklevel=2)
        return found


class WorkerSettings(BaseSettings):
    """An encoder worker's settings: flags, FARM_WORKER_* variables (the recorder's are
    FARM_*, and mean other things: FARM_STORAGE is where a recorder writes)."""

    model_config = SettingsConfigDict(env_prefix=WORKER_ENV_PREFIX, extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _LegacyEnvironment(settings_cls), dotenv_settings,
                file_secret_settings)

    broker: str = Field(default=DEFAULT_BROKER, description="Redis URL of the farm")
    storage: str | None = Field(
        default=None,
        description="this worker's path to a local storage folder named in jobs (a shared "
                    "disk mounted elsewhere), or the s3://bucket/prefix its jobs use")
    output_storage: str | None = Field(
        default=None,
        description="this worker's path to a local video folder named in jobs, when it "
                    "differs from the raw folder")
    allow_storage: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="storage this worker may read and write besides --storage and "
                    "--output-storage: folders or s3://bucket/prefix, comma-separated (or a "
                    "JSON list); a job naming any other storage fails at once")
    concurrency: int = Field(default=1, ge=1, description="encodes run at once on this worker")
    queue: str = Field(default=ENCODE_QUEUE, description="queue to take jobs from")
    scratch_dir: Path | None = Field(default=None, description="temp folder for encodes")
    lease_ttl_s: float = Field(
        default=60.0, gt=1,
        description="seconds after a worker's last heartbeat before its job is re-queued")
    manifest_wait_s: float = Field(
        default=3600.0, ge=0,
        description="seconds a job waits for its raw manifest (a recorder still uploading "
                    "or riding out an outage) before it fails")
    visibility_timeout_s: int = Field(
        default=6 * 3600, gt=0,
        description="Redis redelivers unacked tasks after this; keep above the longest encode")
    result_expires_s: int = Field(default=7 * 24 * 3600, gt=0,
                                  description="seconds results are kept")
    failed_keep_s: int = Field(
        default=7 * 24 * 3600, gt=0,
        description="seconds failed jobs are kept for `encoder-worker failed` and `requeue`")
    idle_priority: bool = Field(
        default=False,
        description="encode in Linux's SCHED_IDLE class: CPU only when nothing else on the "
                    "host wants it (beside a record loop)")
    yield_to_capture: bool = Field(
        default=False,
        description="pause encodes while a recorder on this host captures an episode, and "
                    "encode between episodes and after them (a robot host whose capture "
                    "must not lose a slot; see docs/architecture.md)")
    share_with_capture: bool = Field(
        default=False,
        description="while a recorder on this host captures an episode, encode in the CPU "
                    "time it leaves (a cgroup's cap, --cpu-cap-group) or, where this worker "
                    "cannot cap it, on the CPUs it leaves; pause where it keeps all")
    cpu_cap_group: str = Field(
        default=GROUP, pattern=r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$",
        description="with --share-with-capture: the cgroup that the host's workers join to "
                    "cap their CPU time while a recorder captures (needs root or a delegated "
                    "cgroup; without one they keep off the CPUs the capture keeps)")
    nice: int = Field(default=0, ge=0, le=19,
                      description="lower the worker's CPU priority (beside a record loop)")
    metrics_port: int | None = Field(
        default=None, ge=1, le=65535,
        description="serve Prometheus metrics on this port (http://HOST:PORT/metrics); "
                    "none: no metrics server")
    loglevel: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        default="INFO", description="DEBUG, INFO, WARNING or ERROR")

    @field_validator("storage", "output_storage")
    @classmethod
    def _storage_url(cls, url: str | None) -> str | None:
        return None if url is None else check_url(url)

    @field_validator("allow_storage", mode="before")
    @classmethod
    def _storage_list(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            value = json.loads(text) if text.startswith("[") else text.split(",")
        if isinstance(value, list):
            return [check_url(str(url).strip()) for url in value if str(url).strip()]
        return value

    def storage_roots(self) -> list[str]:
        """Every storage a job may name (as mapped to this worker's mounts)."""
        return [*self.allow_storage, *(url for url in (self.storage, self.output_storage) if url)]

    @field_validator("loglevel", mode="before")
    @classmethod
    def _upper(cls, level: object) -> object:
        return level.upper() if isinstance(level, str) else level
