"""Which farm a recording uses: none (inline), a farm at --broker, or the zero-config one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from encoder_worker.broker import BrokerUnreachable, check_broker
from encoder_worker.storage import StorageError
from encoder_worker.storage.local import LocalStorage
from recorder.farm.client import EncodingFarmClient
from recorder.farm.local import FarmStartError, LocalFarm
from recorder.farm.options import FarmOptions
from recorder.farm.storage_check import check_farm_storage, check_storage_access


class RecorderError(Exception):
    """A problem the user can fix; printed without a traceback, exit code 1."""


@contextlib.contextmanager
def farm_for(options: FarmOptions, *, raw_url: str,
             output_url: str) -> Iterator[EncodingFarmClient | None]:
    """The farm client for these options (None: inline), once storage and farm answer.

    Args:
        raw_url, output_url: where the recording's raw frames and videos go.

    Raises:
        RecorderError: storage or broker cannot be reached, local workers did not start
        or all died.
    """
    try:
        check_storage_access(raw_url=raw_url, output_url=output_url)
    except StorageError as exc:
        raise RecorderError(str(exc)) from exc
    if not options.async_encoding:
        yield None
        return
    try:
        check_farm_storage(options, raw_url=raw_url, output_url=output_url)
        if options.broker is not None:
            check_broker(options.broker)
            with EncodingFarmClient(options.broker,
                                    queue_size=options.video_encoding_queue_size) as client:
                yield client
            return
        # The local workers' allow-list; folders absolute, as jobs name them.
        storage = [url if url.startswith("s3://") else LocalStorage.from_url(url).url
                   for url in (raw_url, output_url)]
        with LocalFarm(workers=options.video_encoding_workers, storage=storage) as local, \
                EncodingFarmClient(local.broker_url,
                                   queue_size=options.video_encoding_queue_size) as client:
            client.health_check = local.check_workers
            yield client
    except (BrokerUnreachable, FarmStartError, ValueError) as exc:
        raise RecorderError(str(exc)) from exc
