"""The `farm_worker` remote-control command that `encoder-worker status` broadcasts: each
worker answers with its host, pid, concurrency, uptime and the jobs it runs now (one
broadcast instead of Celery's stats() and active(), which would be two)."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from celery.worker.control import inspect_command

from encoder_worker.celery_app import worker_settings


@inspect_command(name="farm_worker")
def farm_worker(state: Any, **_: Any) -> dict[str, Any]:
    """This worker's host, pid, concurrency, uptime and running jobs (for status)."""
    from celery.worker import state as worker_state

    controller = state.consumer.controller
    jobs = []
    now = time.time()
    for request in list(worker_state.active_requests):
        args = request.args or []
        payload = args[0] if args and isinstance(args[0], dict) else {}
        jobs.append({"task_id": request.id, "job_id": payload.get("job_id"),
                     "recording": payload.get("recording"), "camera": payload.get("camera"),
                     "running_s": now - request.time_start if request.time_start else None,
                     "worker_pid": request.worker_pid})
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "concurrency": controller.concurrency, "pool": type(controller.pool).__name__,
            "uptime_s": now - controller.startup_time.timestamp(),
            "metrics_port": worker_settings(state.app).metrics_port, "jobs": jobs}
