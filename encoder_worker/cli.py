"""`encoder-worker run | failed | requeue | status | ping`: a worker of the farm, its failed
jobs, the farm's status, and a healthcheck."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from typing import Any

from encoder_worker.broker import BrokerUnreachable, check_broker, redis_client
from encoder_worker.cli_settings import add_settings_arguments, settings_from_args
from encoder_worker.jobs import FailureReason
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
    failed = commands.add_parser("failed", help="list the farm's failed jobs and why")
    add_settings_arguments(failed, WorkerSettings, fields=["broker"])
    failed.add_argument("--json", action="store_true", help="one JSON document")
    requeue = commands.add_parser(
        "requeue", help="send failed jobs again (a job whose video is there already is not "
                        "encoded twice)")
    add_settings_arguments(requeue, WorkerSettings, fields=["broker", "queue"])
    requeue.add_argument("job_ids", nargs="*", metavar="JOB_ID")
    requeue.add_argument("--all-failed", action="store_true", help="every failed job")
    status = commands.add_parser(
        "status", help="the farm now: queue, workers and their jobs, leases, countdowns, the "
                       "last hour's jobs (read-only)")
    add_settings_arguments(status, WorkerSettings, fields=["broker", "queue"])
    status.add_argument("--json", action="store_true", help="one JSON document (with "
                        "--watch: one a line per refresh)")
    status.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    status.add_argument("--interval", type=float, default=2.0, metavar="S",
                        help="seconds between refreshes with --watch [default 2]")
    status.add_argument("--inspect-timeout", type=float, default=1.0, metavar="S",
                        help="seconds to wait for workers' answers [default 1]")
    ping = commands.add_parser(
        "ping", help="a healthcheck: exit 0 when a worker on this host answers a Celery ping "
                     "through the farm's Redis, 1 when none does")
    add_settings_arguments(ping, WorkerSettings, fields=["broker"])
    ping.add_argument("--node", default=None,
                      help="the Celery node name to ask (default: any worker on this host)")
    ping.add_argument("--timeout", type=float, default=5.0, metavar="S",
                      help="seconds to wait for an answer [default 5]")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = settings_from_args(parser, WorkerSettings, args)
    if args.command in ("failed", "requeue"):
        return run_failed_command(parser, args, settings)
    if args.command == "status":
        return run_status_command(args, settings)
    if args.command == "ping":
        return run_ping_command(args, settings)
    if not settings.storage_roots():
        parser.error("say which storage this worker may use: --storage PATH|s3://bucket/prefix "
                     "(where it reads jobs' raw frames), or --allow-storage URL[,URL...]; jobs "
                     "naming any other storage are refused")
    logging.basicConfig(level=settings.loglevel.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.nice:
        from encoder_worker.priority import lower_priority

        lower_priority(settings.nice)
    if settings.share_with_capture:
        from encoder_worker.cpu_cap import join_for_worker

        join_for_worker(settings.cpu_cap_group)  # before the pool forks: children join too
    for flag, url in (("--storage", settings.storage),
                      ("--output-storage", settings.output_storage)):
        # A wrong path, endpoint, bucket or credentials show now, not as failed jobs later.
        try:
            if url:
                storage = open_storage(url)
                folder = storage.local_path("")
                if folder is not None and not folder.is_dir():
                    # A missing NFS mount must not look like an empty farm.
                    raise StorageError(f"the folder {folder} does not exist: mount the shared "
                                       "disk there (or create the folder) and start again")
                storage.check_access()
        except (StorageError, ValueError) as exc:
            print(f"encoder-worker: {flag} {url}: {exc}", file=sys.stderr)
            return 1
    if not _broker_answers(settings.broker):
        return 1
    if settings.metrics_port is not None:
        from encoder_worker.metrics import MetricsServerError, start_metrics_server

        try:  # before the pool forks: its children inherit the metrics folder
            start_metrics_server(settings.metrics_port)
        except MetricsServerError as exc:
            print(f"encoder-worker: --metrics-port: {exc}", file=sys.stderr)
            return 1
    return run_worker(settings, hostname=args.hostname, pool=args.pool)


def run_failed_command(parser: argparse.ArgumentParser, args: argparse.Namespace,
                       settings: WorkerSettings) -> int:
    """`encoder-worker failed` and `encoder-worker requeue`."""
    if args.command == "requeue" and bool(args.job_ids) == bool(args.all_failed):
        parser.error("requeue needs JOB_ID ... or --all-failed (one of them)")
    if not _broker_answers(settings.broker):
        return 1
    from encoder_worker.ledger import JobLedger

    ledger = JobLedger(redis_client(settings.broker))
    if args.command == "failed":
        print_failures(ledger.failures(), as_json=args.json)
        return 0
    from encoder_worker.celery_app import ENCODE_TASK, make_app

    app = make_app(settings.broker)
    job_ids = list(ledger.failures()) if args.all_failed else args.job_ids
    missing = []
    for job_id in job_ids:
        entry = ledger.take_failure(job_id)
        if entry is None:
            missing.append(job_id)
            continue
        app.send_task(ENCODE_TASK, args=[entry["payload"]], task_id=entry["task_id"],
                      queue=settings.queue)
    app.close()
    print(f"requeued {len(job_ids) - len(missing)} jobs; `encoder-worker failed` lists any "
          "that fail again")
    if missing:
        print(f"encoder-worker: no failed job {', '.join(missing)} (`encoder-worker failed` "
              "lists them)", file=sys.stderr)
        return 1
    return 0


def run_status_command(args: argparse.Namespace, settings: WorkerSettings) -> int:
    """`encoder-worker status`."""
    if not _broker_answers(settings.broker):
        return 1
    from encoder_worker.status_view import run_status

    return run_status(settings.broker, queue=settings.queue, as_json=args.json,
                      watch=args.watch, interval_s=args.interval,
                      inspect_timeout_s=args.inspect_timeout)


def run_ping_command(args: argparse.Namespace, settings: WorkerSettings) -> int:
    """`encoder-worker ping`: does a worker on this host answer through Redis?"""
    if not _broker_answers(settings.broker):
        return 1
    from encoder_worker.celery_app import make_app

    app = make_app(settings.broker)
    host = socket.gethostname()
    try:
        replies = app.control.ping(destination=[args.node] if args.node else None,
                                   timeout=args.timeout)
    finally:
        app.close()
    # Node names are NAME@HOST-PID (encoder-worker run) or NAME@HOST (--hostname NAME@%h).
    answered = [node for reply in replies for node in reply
                if node == args.node or (args.node is None and (
                    node.split("@", 1)[-1] == host
                    or node.split("@", 1)[-1].startswith(f"{host}-")))]
    if not answered:
        where = args.node or f"on {host}"
        print(f"encoder-worker: no worker {where} answered within {args.timeout:g}s "
              f"({len(replies)} elsewhere did)", file=sys.stderr)
        return 1
    print(f"pong from {', '.join(sorted(answered))}")
    return 0


def _broker_answers(broker: str) -> bool:
    """Ping the broker once; False, having said why, when it does not answer."""
    try:
        check_broker(broker)
    except (BrokerUnreachable, ValueError) as exc:
        print(f"encoder-worker: {exc}", file=sys.stderr)
        return False
    return True


def print_failures(failures: dict[str, dict], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(failures, indent=2))
        return
    if not failures:
        print("no failed jobs")
        return
    for job_id, entry in sorted(failures.items(), key=lambda item: item[1]["failed_at"]):
        result = entry["result"]
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry["failed_at"]))
        # Older workers kept no reason, and called the recording "episode".
        reason = result.get("reason") or FailureReason.OTHER
        recording = result.get("recording", result.get("episode", "?"))
        where = f"recording {recording} camera {result.get('camera', '?')}"
        print(f"{at}  {reason}  {job_id}  {where}: {result.get('error')}")


def run_worker(settings: WorkerSettings, *, hostname: str | None, pool: str) -> int:
    from celery.signals import worker_shutdown

    from encoder_worker.celery_app import make_app

    app = make_app(settings.broker, settings=settings)
    app.conf.farm_worker_settings = settings.model_dump(mode="json")
    import encoder_worker.tasks  # noqa: F401  - registers the encode task

    node = hostname or f"encoder@{socket.gethostname()}-{os.getpid()}"
    # worker_main drops the worker's exit code: a worker that crashed ("Unrecoverable
    # error") exited 0 and supervisors did not restart it. Its shutdown signal has it.
    exit_codes: list[int] = []

    def keep_exit_code(sender: Any = None, **_: Any) -> None:
        exit_codes.append(getattr(sender, "exitcode", None) or 0)

    worker_shutdown.connect(keep_exit_code, weak=False)
    app.worker_main([
        "worker", f"--concurrency={settings.concurrency}", f"--queues={settings.queue}",
        f"--loglevel={settings.loglevel}", f"--hostname={node}", f"--pool={pool}",
        "--without-gossip", "--without-mingle",
    ])
    code = max(exit_codes, default=0)
    if code:
        logging.getLogger(__name__).error("the worker stopped on an error (exit code %s); see "
                                          "the log above", code)
    return code


if __name__ == "__main__":
    sys.exit(main())
