"""The Celery application: JSON only, late acks, one task prefetched per process."""

from __future__ import annotations

from celery import Celery

from encoder_worker.settings import ENCODE_QUEUE, WorkerSettings

ENCODE_TASK = "encoder_worker.encode"


def make_app(broker: str, *, settings: WorkerSettings | None = None) -> Celery:
    """A Celery app on broker, its results kept in the same Redis."""
    # A recorder's app (settings None) reads no worker settings from its environment.
    settings = settings or WorkerSettings.model_construct(broker=broker)
    app = Celery("encoder_worker", broker=broker, backend=broker, include=["encoder_worker.tasks"])
    if broker.startswith("redis://"):  # rediss:// (TLS) keeps kombu's own, untested here
        # Items on the queue that are not messages are set aside, never fatal.
        app.conf.broker_transport = "encoder_worker.transport:Transport"
    transport = {"visibility_timeout": settings.visibility_timeout_s}
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
    return app
