"""Which farm a recording uses: none (inline), a farm at --broker, or the zero-config one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from encoder_worker.broker import BrokerUnreachable, check_broker
from encoder_worker.storage import StorageError
from encoder_worker.storage.local import LocalStorage
from recorder.farm.client import EncodingFarmClient
from recorder.farm.local import FarmStartError, LocalFarm
from recorder.farm.storage_check import check_farm_storage, check_storage_access
from recorder.settings import RecorderSettings


class RecorderError(Exception):
    """A problem the user can fix; printed without a traceback, exit code 1."""


@contextlib.contextmanager
def farm_for(settings: RecorderSettings) -> Iterator[EncodingFarmClient | None]:
    """The farm client for these settings (None: inline), once storage and farm answer.

    Raises:
        RecorderError: storage or broker cannot be reached, local workers did not start
        or all died.
    """
    try:
        check_storage_access(settings)
    except StorageError as exc:
        raise RecorderError(str(exc)) from exc
    if not settings.async_encoding:
        yield None
        return
    try:
        check_farm_storage(settings)
        if settings.broker is not None:
            check_broker(settings.broker)
            with EncodingFarmClient(settings.broker,
                                    queue_size=settings.video_encoding_queue_size) as client:
                yield client
            return
        # The local workers' allow-list; folders absolute, as jobs name them.
        storage = [url if url.startswith("s3://") else LocalStorage.from_url(url).url
                   for url in (settings.raw_storage_url, settings.output_storage_url)]
        with LocalFarm(workers=settings.video_encoding_workers, storage=storage) as local, \
                EncodingFarmClient(local.broker_url,
                                   queue_size=settings.video_encoding_queue_size) as client:
            client.health_check = local.check_workers
            yield client
    except (BrokerUnreachable, FarmStartError, ValueError) as exc:
        raise RecorderError(str(exc)) from exc
