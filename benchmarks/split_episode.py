"""Split-episode latency: one long episode, K workers each pinned to its own CPU core.

    .venv/bin/python benchmarks/split_episode.py                      # 60 s, K = 1 and 2
    .venv/bin/python benchmarks/split_episode.py --workers 1 2 4 --parts 8 --readme ''

Writes one raw episode (synthetic camera, real-looking content), starts a private
redis-server, then for each K starts K `encoder-worker run` processes, worker i pinned
to core i (os.sched_setaffinity, inherited by its pool's child), and times each job
from submission to its video being published (the last part's finished_at, after the
join). K = 1 encodes the whole episode unsplit: that is the baseline T1; the goal is
<= 1.2 x T1 / K. Every video is decoded back and checked against the raw frames by
count and pts (the farm's own verification) before it counts. Prints a markdown table
and appends it, with the command and the load average, to benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from encoder_worker.celery_app import make_app  # noqa: E402
from encoder_worker.encode import verify_video  # noqa: E402
from encoder_worker.jobs import EncodeJob, EncodeResult, Status, split_job  # noqa: E402
from encoder_worker.raw_episode import (  # noqa: E402
    DirectSink,
    RawEpisodeReader,
    RawEpisodeWriter,
)
from encoder_worker.raw_layout import raw_prefix  # noqa: E402
from encoder_worker.storage import open_storage  # noqa: E402
from recorder.capture.cameras.synthetic import SyntheticCamera  # noqa: E402
from recorder.dataset.jobs import part_count  # noqa: E402
from recorder.farm.client import EncodingFarmClient  # noqa: E402
from recorder.farm.local import RedisServer  # noqa: E402
from recorder.settings import RecorderSettings  # noqa: E402

SECTION = "## Split episodes"


@dataclass
class Run:
    workers: int
    parts: int
    latency_s: float  # submission to the video published
    worker_s: float  # the workers' time on the video, all parts and the join
    join_s: float
    result: EncodeResult


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="K values; K = 1 also runs unsplit: the baseline T1")
    parser.add_argument("--parts", type=int, nargs="*", default=None,
                        help="part counts to run at each K (default: the recorder's split "
                             "of this episode, part_count)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the raw episode goes (default: a temp folder)")
    parser.add_argument("--readme", default=str(REPO / "benchmarks/README.md"),
                        help="append the results here ('' to only print them)")
    args = parser.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    if max(args.workers) > len(cores):
        parser.error(f"K = {max(args.workers)} workers need as many cores; this machine "
                     f"lets this process use {len(cores)}")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="split-bench-", dir=args.work_dir) as tmp:
        root = Path(tmp)
        frames = round(args.seconds * args.fps)
        t0 = time.perf_counter()
        job = write_raw(root / "data", frames=frames, fps=args.fps, width=args.width,
                        height=args.height)
        print(f"raw episode: {frames} frames {args.width}x{args.height} written in "
              f"{time.perf_counter() - t0:.1f}s", flush=True)
        default_parts = part_count(frames, args.fps, RecorderSettings())
        redis = RedisServer(root / "redis", port=free_port())
        redis.start()
        try:
            runs = []
            for k in args.workers:
                counts = [p for p in args.parts or [default_parts] if p > 1]
                for parts in ([1, *counts] if k == 1 else counts):
                    runs.append(measure(job, redis.url, root, workers=k, parts=parts,
                                        cores=cores, frames=frames))
                    print(row(runs[-1], runs), flush=True)
        finally:
            redis.stop()
    load_after = os.getloadavg()
    report = section(runs, args, argv, frames=frames, load=(load_before, load_after))
    print("\n" + report)
    if args.readme:
        with open(args.readme, "a") as readme:
            readme.write("\n" + report)
        print(f"appended to {args.readme}")
    return 0


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_raw(folder: Path, *, frames: int, fps: int, width: int, height: int) -> EncodeJob:
    storage = open_storage(str(folder))
    camera = SyntheticCamera("cam0", width=width, height=height, fps=fps, seed=0)
    prefix = raw_prefix(recording=0, camera="cam0")
    # Stored as the recorder stores it for a yuv420p video (its default, --raw-format auto).
    writer = RawEpisodeWriter(DirectSink(storage, prefix), episode=0, camera="cam0",
                              width=width, height=height, fps=fps, pix_fmt="yuv420p",
                              input_pix_fmt="rgb24", segment_frames=30)
    for index in range(frames):
        writer.write(camera.read(), index / fps)
    writer.close()
    return EncodeJob(job_id="bench", recording=0, camera="cam0", raw_storage=storage.url,
                     raw_prefix=prefix, output_storage=storage.url,
                     output_key="videos/cam0/episode_000000.mp4")


def start_workers(broker: str, count: int, cores: list[int], allow: Path
                  ) -> list[subprocess.Popen[bytes]]:
    workers = []
    for index in range(count):
        core = cores[index]

        def pin(core: int = core) -> None:
            os.sched_setaffinity(0, {core})

        log = open(allow / f"worker-{count}-{index}.log", "wb")  # noqa: SIM115
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "encoder_worker.cli", "run", "--broker", broker,
             "--hostname", f"bench{index}@split", "--concurrency", "1"],
            stdout=log, stderr=subprocess.STDOUT, cwd=allow, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(REPO), "FARM_WORKER_ALLOW_STORAGE": str(allow)},
            # Pinned before exec: the worker, its pool's child and the codec's threads.
            preexec_fn=pin))
        log.close()
    app = make_app(broker)
    try:
        deadline = time.monotonic() + 120
        names = {f"bench{i}@split" for i in range(count)}
        while True:
            answered = {name for reply in app.control.ping(timeout=0.5) for name in reply}
            if names <= answered:
                return workers
            if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                stop_workers(workers)
                raise SystemExit(f"workers did not start; see {allow}/worker-*.log")
    finally:
        app.close()


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            os.killpg(worker.pid, 15)
    for worker in workers:
        worker.wait(timeout=60)


def measure(job: EncodeJob, broker: str, root: Path, *, workers: int, parts: int,
            cores: list[int], frames: int) -> Run:
    storage = open_storage(job.output_storage)
    storage.delete(job.output_key)
    run_job = job.model_copy(update={"job_id": f"bench-k{workers}-p{parts}-{time.time_ns()}"})
    jobs = split_job(run_job, frames=frames, parts=parts)
    processes = start_workers(broker, workers, cores, root)
    try:
        with EncodingFarmClient(broker) as farm:
            submitted = time.time()
            for each in jobs:
                farm.submit(each)
            [result] = farm.wait(timeout_s=3600)
    finally:
        stop_workers(processes)
    if result.status is not Status.SUCCEEDED:
        raise SystemExit(f"K={workers}, {parts} parts: {result.status}: {result.error}")
    video = root / "check.mp4"
    storage.download_file(job.output_key, video)
    verify_video(video, RawEpisodeReader(open_storage(job.raw_storage), job.raw_prefix).manifest)
    return Run(workers=workers, parts=parts, latency_s=result.finished_at - submitted,
               worker_s=result.timings.total_s, join_s=result.timings.join_s, result=result)


def row(run: Run, runs: list[Run]) -> str:
    base = next((r.latency_s for r in runs if r.workers == 1 and r.parts == 1), None)
    if base is None:
        goal = ratio = "-"
    else:
        goal = f"{1.2 * base / run.workers:.1f}"
        ratio = f"{run.latency_s / (base / run.workers):.2f}"
    return (f"| {run.workers} | {run.parts if run.parts > 1 else 'unsplit'} | "
            f"{run.latency_s:.1f} | {goal} | {ratio} | {run.worker_s:.1f} | {run.join_s:.2f} |")


def section(runs: list[Run], args: argparse.Namespace, argv: list[str] | None, *,
            frames: int, load: tuple[tuple[float, ...], tuple[float, ...]]) -> str:
    command = " ".join(["benchmarks/split_episode.py",
                        *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    codec = runs[0].result.codec
    lines = [
        SECTION, "",
        f"One {args.seconds:g} s episode ({frames} frames, {args.width}x{args.height}, "
        f"{args.fps} fps, synthetic camera), encoded by K `encoder-worker` processes, each "
        f"pinned to its own core; {codec} with the default options. Latency: job "
        "submission to the joined video published (a part job's finished_at). T1 is "
        "the K = 1 unsplit run; the goal is <= 1.2 x T1 / K. Measured on "
        f"{platform.node()} ({len(os.sched_getaffinity(0))} cores, {platform.machine()}), "
        f"{time.strftime('%Y-%m-%d %H:%M')}:", "",
        "```", f".venv/bin/python {command}", "```", "",
        "| K workers | parts | latency s | goal 1.2 x T1/K s | latency / (T1/K) | "
        "worker time s | join s |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *[row(run, runs[:index + 1]) for index, run in enumerate(runs)], "",
        f"Load average (1, 5, 15 min) before: {', '.join(f'{v:.2f}' for v in load[0])}; "
        f"after: {', '.join(f'{v:.2f}' for v in load[1])} (the machine is shared: other "
        "work may have run beside it). Worker time and join s are summed over a video's "
        "part jobs.", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
