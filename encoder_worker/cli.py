"""`encoder-worker run`: start a Celery worker that takes encode jobs from the farm."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

from encoder_worker.broker import BrokerUnreachable, check_broker
from encoder_worker.cli_settings import add_settings_arguments, settings_from_args
from encoder_worker.settings import WorkerSettings
from encoder_worker.storage import StorageError, open_storage


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="encoder-worker", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="take encode jobs from the farm until stopped")
    add_settings_arguments(run, WorkerSettings)
    run.add_argument("--hostname", default=None,
                     help="Celery node name (default encoder@HOST-PID)")
    run.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"],
                     help="Celery pool; prefork isolates encodes in child processes")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = settings_from_args(parser, WorkerSettings, args)
    logging.basicConfig(level=settings.loglevel.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.nice:
        lower_priority(settings.nice)
    for flag, url in (("--storage", settings.storage),
                      ("--output-storage", settings.output_storage)):
        # A wrong path, endpoint, bucket or credentials show now, not as failed jobs later.
        try:
            if url:
                storage = open_storage(url)
                folder = storage.local_dir("")
                if folder is not None and not folder.is_dir():
                    # A missing NFS mount must not look like an empty farm.
                    raise StorageError(f"the folder {folder} does not exist: mount the shared "
                                       "disk there (or create the folder) and start again")
                storage.check_access()
        except (StorageError, ValueError) as exc:
            print(f"encoder-worker: {flag} {url}: {exc}", file=sys.stderr)
            return 1
    try:
        check_broker(settings.broker)
    except (BrokerUnreachable, ValueError) as exc:
        print(f"encoder-worker: {exc}", file=sys.stderr)
        return 1
    return run_worker(settings, hostname=args.hostname, pool=args.pool)


def lower_priority(nice: int) -> None:
    """Add nice to this process, and to its autogroup where the kernel has one.

    With autogroup scheduling (on by default in most distributions' kernels) a process's
    nice counts only within its session's group; a worker in its own session would
    otherwise compete with the record loop as an equal (measured: late frames).
    """
    os.nice(nice)
    autogroup = Path("/proc/self/autogroup")
    if autogroup.exists():
        try:
            autogroup.write_text(str(nice))
        except OSError as exc:
            logging.getLogger(__name__).warning("could not lower the autogroup's priority: %s",
                                                exc)


def run_worker(settings: WorkerSettings, *, hostname: str | None, pool: str) -> int:
    from encoder_worker.celery_app import make_app

    app = make_app(settings.broker, settings=settings)
    app.conf.farm_worker_settings = settings.model_dump(mode="json")
    import encoder_worker.tasks  # noqa: F401  - registers the encode task

    node = hostname or f"encoder@{socket.gethostname()}-{os.getpid()}"
    app.worker_main([
        "worker", f"--concurrency={settings.concurrency}", f"--queues={settings.queue}",
        f"--loglevel={settings.loglevel}", f"--hostname={node}", f"--pool={pool}",
        "--without-gossip", "--without-mingle",
    ])
    return 0


if __name__ == "__main__":
    sys.exit(main())
