"""`encoder-worker status` with 1,000 queued jobs: how long an operator waits for it.

A private redis-server on a free port, --jobs encode jobs queued as the recorder sends
them, then, --repeats times each:
- `encoder-worker status --json` as an operator runs it (a fresh process: Python's start
  and the imports included);
- farm_status() in this process (what a monitor that stays up pays per look).
First with no worker, then with one `encoder-worker run` answering the status broadcast.
That worker takes jobs from another queue, so all of them stay queued and none is encoded:
the status reads the same farm both times.

    python benchmarks/status_latency.py --jobs 1000 --repeats 5 --quiet-load 1.0

Writes benchmarks/results/status_latency_<unix time>.json (result_files.py) and prints
the table the README shows of it (tables.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import result_files
import script_tables
from markdown_tables import render

from encoder_worker.celery_app import ENCODE_TASK, make_app
from encoder_worker.jobs import ENCODE_QUEUE, EncodeJob
from encoder_worker.status import farm_status
from recorder.farm.local import RedisServer

WORKER = "statusbench@idle"
IDLE_QUEUE = "status-benchmark-idle"  # the worker's: nothing is ever sent there
WORKER_START_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def queue_jobs(broker: str, count: int, storage: Path) -> None:
    """count jobs on the encode queue, the oldest first, as EncodingFarmClient sends them."""
    app = make_app(broker)
    try:
        first = time.time() - count * 0.1
        for index in range(count):
            job = EncodeJob(job_id=f"queued-{index}", recording=index, camera="cam0",
                            raw_storage=str(storage), raw_prefix=f"raw/{index}",
                            output_storage=str(storage), output_key=f"videos/{index}.mp4",
                            submitted_at=first + index * 0.1)
            app.send_task(ENCODE_TASK, args=[job.model_dump(mode="json")],
                          task_id=job.job_id, queue=ENCODE_QUEUE)
    finally:
        app.close()


def start_worker(broker: str, folder: Path) -> subprocess.Popen[bytes]:
    """An `encoder-worker run` that answers the broadcast and takes no queued job."""
    log = open(folder / "worker.log", "wb")  # noqa: SIM115 - closed once handed over
    worker = subprocess.Popen(
        [sys.executable, "-m", "encoder_worker.cli", "run", "--broker", broker,
         "--queue", IDLE_QUEUE, "--hostname", WORKER, "--concurrency", "1"],
        stdout=log, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True,
        env={**os.environ, "FARM_WORKER_ALLOW_STORAGE": str(folder)})
    log.close()
    app = make_app(broker)
    try:
        deadline = time.monotonic() + WORKER_START_S
        while not any(WORKER in reply for reply in app.control.ping(timeout=0.5) or []):
            if worker.poll() is not None or time.monotonic() > deadline:
                stop_worker(worker)
                raise SystemExit(f"the worker did not answer within {WORKER_START_S:.0f} s; "
                                 f"see {folder / 'worker.log'}")
    finally:
        app.close()
    return worker


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        os.killpg(worker.pid, signal.SIGTERM)
    worker.wait(timeout=60)


def measure(broker: str, *, repeats: int, workers: int) -> result_files.StatusCase:
    """repeats looks through the CLI, then as many through farm_status()."""
    cli_s, api_s, answered_in_s, depths = [], [], [], set()
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "encoder_worker.cli", "status",
                               "--broker", broker, "--json"], capture_output=True, text=True,
                              timeout=120)
        cli_s.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"encoder-worker status failed ({done.returncode}): {done.stderr}")
        status = json.loads(done.stdout)
        answered = sum(worker["answered"] for worker in status["workers"])
        if answered != workers:
            raise SystemExit(f"{answered} workers answered the status, not {workers}")
        depths.add(status["queue"]["depth"])
    for _ in range(repeats):
        started = time.perf_counter()
        seen = farm_status(broker)
        api_s.append(time.perf_counter() - started)
        answered_in_s.append(seen.answered_in_s)
        depths.add(seen.queue.depth)
    if len(depths) != 1:
        raise SystemExit(f"the queue changed while it was measured: depths {sorted(depths)}")
    return result_files.StatusCase(workers=workers, cli_s=cli_s, api_s=api_s,
                                   answered_in_s=answered_in_s, queue_depth=depths.pop())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000, help="jobs queued")
    parser.add_argument("--repeats", type=int, default=5, help="looks per case and way")
    result_files.add_arguments(parser)
    args = parser.parse_args(argv)
    header = result_files.begin(args, argv)
    with tempfile.TemporaryDirectory(prefix="status-bench-") as tmp:
        folder = Path(tmp)
        redis = RedisServer(folder / "redis", port=free_port())
        redis.start()
        try:
            queue_jobs(redis.url, args.jobs, folder)
            cases = [measure(redis.url, repeats=args.repeats, workers=0)]
            worker = start_worker(redis.url, folder)
            try:
                cases.append(measure(redis.url, repeats=args.repeats, workers=1))
            finally:
                stop_worker(worker)
        finally:
            redis.stop()
    if any(case.queue_depth != args.jobs for case in cases):
        raise SystemExit(f"status saw {[c.queue_depth for c in cases]} queued, not {args.jobs}")
    result = result_files.StatusLatencyResult(**header.model_dump(), queued_jobs=args.jobs,
                                              repeats=args.repeats, cases=cases)
    path = result_files.save(result, args.output_dir)
    print(render(script_tables.status_latency(result, path)))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
