"""Encoder workers: Celery tasks that turn raw robot episodes into verified MP4s."""

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy, so that importing the contracts does not build a Celery app.
    if name in ("app", "celery"):
        from encoder_worker.worker_app import app

        return app
    raise AttributeError(name)
