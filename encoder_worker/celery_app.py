"""The Celery application: JSON only, late acks, one task prefetched per process."""

from __future__ import annotations

import math
from typing import Any

from celery import Celery, states

import encoder_worker.transport  # noqa: F401  - the sentinel:// scheme names our transport
from encoder_worker.broker import RIDE_OUT_S, RedisUrl, parse_redis_url, sentinel_kwargs
from encoder_worker.jobs import ENCODE_QUEUE
from encoder_worker.settings import WorkerSettings

ENCODE_TASK = "encoder_worker.encode"
# kombu's transports, hardened (transport.py). A redis+socket:// URL names kombu's own
# transport in its scheme, which wins over broker_transport: the zero-config farm's socket
# belongs to the recorder alone.
TRANSPORTS = {"redis": "encoder_worker.transport:Transport",
              "rediss": "encoder_worker.transport:Transport",
              "sentinel": "encoder_worker.transport:SentinelTransport"}
SENTINEL_TIMEOUT_S = 5.0
RESULT_RETRY_MAX_MS = 1000  # Celery waits a random time up to this between tries...
RESULT_RETRIES = math.ceil(RIDE_OUT_S * 2000 / RESULT_RETRY_MAX_MS)  # ...for about RIDE_OUT_S


def make_app(broker: str, *, settings: WorkerSettings | None = None) -> Celery:
    """A Celery app on broker, its results kept in the same Redis.

    Raises:
        ValueError: broker is not a Redis URL this farm reads (broker.py).
    """
    # A recorder's app (settings None) reads no worker settings from its environment.
    is_worker = settings is not None
    settings = settings or WorkerSettings.model_construct(broker=broker)
    redis_url = parse_redis_url(broker)
    url = redis_url.celery_url()
    # A worker loads the task and the farm_worker command that status broadcasts.
    app = Celery("encoder_worker", broker=url, backend=url,
                 include=["encoder_worker.tasks", "encoder_worker.control"])
    if redis_url.scheme in TRANSPORTS:
        # Items on the queue that are not messages are set aside, never fatal.
        app.conf.broker_transport = TRANSPORTS[redis_url.scheme]
    if redis_url.tls:  # the same TLS arguments as every other client of the farm's Redis
        app.conf.broker_use_ssl = dict(redis_url.tls)
        app.conf.redis_backend_use_ssl = dict(redis_url.tls)
    transport = {"visibility_timeout": settings.visibility_timeout_s,
                 **sentinel_options(redis_url)}
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # A worker that dies mid-encode leaves its task to be redelivered, never lost...
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # ...and holds no queued encodes that idle workers could have taken.
        worker_prefetch_multiplier=1,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        result_expires=settings.result_expires_s,
        result_extended=True,
        task_track_started=True,
        task_default_queue=ENCODE_QUEUE,
        task_routes={ENCODE_TASK: {"queue": settings.queue}},
        # Events feed `celery events` / Flower in the compose farm.
        worker_send_task_events=True,
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        worker_hijack_root_logger=False,
    )
    if is_worker:
        # A worker stores its results through a failover as long as its ledger's calls wait
        # for one (broker.py); a recorder's reads fail at once and it polls again.
        app.conf.update(result_backend_always_retry=True,
                        result_backend_max_sleep_between_retries_ms=RESULT_RETRY_MAX_MS,
                        result_backend_max_retries=RESULT_RETRIES)
    return app


def finished_tasks(app: Celery, task_ids: list[str]) -> set[str]:
    """The ids among task_ids whose task has finished (a result is stored): one MGET of
    their result keys, where AsyncResult.ready() takes a round trip each (with windows,
    about 100 outstanding jobs, read on the recorder's commit thread beside a capture)."""
    backend = app.backend
    if not task_ids:
        return set()
    values = backend.mget([backend.get_key_for_task(task_id) for task_id in task_ids])
    return {task_id for task_id, value in zip(task_ids, values, strict=True)
            if value is not None and backend.decode_result(value).get("status")
            in states.READY_STATES}


def worker_settings(app: Celery) -> WorkerSettings:
    """The settings a worker's app was made with (encoder-worker run, worker_app.py)."""
    stored = app.conf.get("farm_worker_settings")
    return WorkerSettings.model_validate(stored) if stored else WorkerSettings()


def sentinel_options(redis_url: RedisUrl) -> dict[str, Any]:
    """kombu's and Celery's transport options for Sentinel: which master, and how to talk
    to the sentinels (the URL's password is the master's, as in Celery's own URLs)."""
    if redis_url.scheme != "sentinel":
        return {}
    timeouts = {"socket_timeout": SENTINEL_TIMEOUT_S, "socket_connect_timeout": SENTINEL_TIMEOUT_S}
    return {"master_name": redis_url.master_name,
            "sentinel_kwargs": sentinel_kwargs(redis_url, timeouts)}
