"""Whether a farm's workers can reach the recorder's storage: refuse setups where not."""

from __future__ import annotations

from urllib.parse import urlparse

from encoder_worker.broker import redact
from encoder_worker.storage import StorageError, open_storage
from recorder.farm.options import FarmOptions


def broker_is_local(broker: str) -> bool:
    """True for a broker on this machine (unix socket or loopback): its workers are local."""
    if broker.startswith(("redis+socket://", "socket://", "unix://")):
        return True
    host = urlparse(broker).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def check_farm_storage(options: FarmOptions, *, raw_url: str, output_url: str) -> None:
    """Refuse a local folder for raw data or videos when workers may be on other machines.

    Inline encoding and the private local farm run on this machine and can use any
    storage; so can a farm whose broker is on this machine. A farm elsewhere can have
    workers on other machines, which cannot read or write this machine's folders.

    Raises:
        ValueError: the combination cannot work; the message says what to use instead.
    """
    broker = options.broker
    if not options.async_encoding or broker is None or broker_is_local(broker):
        return
    if options.shared_folder:
        return  # the user says every worker mounts these folders
    for flag, url in (("--storage", raw_url), ("--output-storage", output_url)):
        if not open_storage(url).shared_across_hosts:
            raise ValueError(
                f"{flag} {url} is a folder on this machine, but workers of the farm at "
                f"{redact(broker)} can run on other machines and cannot reach it: use {flag} "
                "s3://bucket/prefix, a broker on this machine (localhost) with local "
                "workers, or --shared-folder if every worker mounts this folder (NFS) and "
                "names its mount with encoder-worker --storage"
            )


def check_storage_access(*, raw_url: str, output_url: str) -> None:
    """Fail before recording when raw or video storage cannot be written.

    Raises:
        StorageError: says which storage and why (missing bucket, credentials, rights).
    """
    for flag, url in (("--storage", raw_url), ("--output-storage", output_url)):
        try:
            open_storage(url).check_access()
        except StorageError as exc:
            raise StorageError(f"{flag} {url}: {exc}") from exc
