"""Worker settings: FARM_* environment variables, overridden by CLI flags of the same names."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BROKER = "redis://localhost:6379/0"
ENCODE_QUEUE = "encode"


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FARM_", extra="ignore")

    broker: str = Field(default=DEFAULT_BROKER, description="Redis URL of the farm")
    # The worker's own view of a local storage folder (e.g. where a shared disk is mounted):
    # it replaces the folder named in jobs. S3 URLs in jobs are used as sent.
    storage: str | None = None
    concurrency: int = Field(default=1, ge=1, description="encodes run at once on this worker")
    queue: str = ENCODE_QUEUE
    scratch_dir: Path | None = Field(default=None, description="temp folder for encodes")
    # Seconds of silence after which a worker's job lease lapses and its job is re-queued.
    lease_ttl_s: float = Field(default=60.0, gt=1)
    # How long after submission a job waits for its raw manifest (a recorder uploading in
    # the background, or riding out an outage) before it fails as never committed.
    manifest_wait_s: float = Field(default=3600.0, ge=0)
    # Longer than the longest encode: Redis redelivers unacked tasks only after this.
    visibility_timeout_s: int = Field(default=6 * 3600, gt=0)
    result_expires_s: int = Field(default=7 * 24 * 3600, gt=0)
    loglevel: str = "INFO"
