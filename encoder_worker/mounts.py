"""Which storage a worker may use, and where it reads a job's local folders.

Anyone who can write to the queue can send a job: a worker uses only the storage it was
told about (--storage, --output-storage, --allow-storage), reads a job's local folder at
its own mount of it, and checks that the mount is the recorder's folder.
"""

from __future__ import annotations

from encoder_worker.jobs import EncodeJob
from encoder_worker.settings import WorkerSettings
from encoder_worker.storage import StorageError, local_storage_id, open_storage, within


def localize(job: EncodeJob, settings: WorkerSettings) -> EncodeJob:
    """Read local folders named in a job where this worker has them mounted.

    A worker's --storage stands for the job's raw folder, and for its video folder too
    when the job names the same one; --output-storage stands for a separate video folder.
    S3 URLs are used as sent.
    """
    updates = {}
    if settings.storage and is_local_url(job.raw_storage):
        updates["raw_storage"] = settings.storage
    output_mount = settings.output_storage or (
        settings.storage if job.output_storage == job.raw_storage else None)
    if output_mount and is_local_url(job.output_storage):
        updates["output_storage"] = output_mount
    return job.model_copy(update=updates)


def storage_not_allowed(job: EncodeJob, settings: WorkerSettings) -> str | None:
    """Why this worker may not use the job's storage (None: it may).

    Without this, a job could make a worker read any folder, or write a video anywhere it
    may write.
    """
    roots = settings.storage_roots()
    for what, url in (("raw", job.raw_storage), ("video", job.output_storage)):
        if not any(within(url, root) for root in roots):
            allowed = ", ".join(roots) or "none"
            return (f"the job's {what} storage {url} is not one this worker may use "
                    f"(allowed: {allowed}); if it should, start the worker with "
                    "--allow-storage naming it, or --storage for a mount of it")
    return None


def storage_mismatch(sent: EncodeJob, local: EncodeJob) -> str | None:
    """Why this worker's folders are not the recorder's (None: they are, or unknown).

    A worker that maps a job's folder to its own --storage would otherwise look for raw
    frames that are not there for as long as --manifest-wait-s, and the recorder wait.
    """
    for what, url, mapped, expected in (
            ("raw", sent.raw_storage, local.raw_storage, sent.raw_storage_id),
            ("video", sent.output_storage, local.output_storage, sent.output_storage_id)):
        if expected is None or not is_local_url(mapped):
            continue
        try:
            found = local_storage_id(open_storage(mapped))
        except (StorageError, ValueError):  # unreadable, or not a storage URL: not ours
            found = None
        if found != expected:
            return (f"this worker reads the job's {what} folder {url} at {mapped}, which is "
                    "not the recorder's folder (its .farm-storage-id differs or is missing): "
                    "record into the folder the workers mount (recorder --storage PATH, "
                    "with the worker's --storage naming its own mount of it) or use "
                    "s3:// storage")
    return None


def is_local_url(url: str) -> bool:
    return not url.startswith("s3://")
