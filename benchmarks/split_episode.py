"""Split-episode latency: one long episode, K workers each pinned to its own CPU core.

    python benchmarks/split_episode.py --quiet-load 1.0        # 60 s, K = 1 and 2
    python benchmarks/split_episode.py --workers 1 2 4 --parts 8

Writes one raw episode (synthetic camera, real-looking content), starts a private
redis-server, then for each K starts K `encoder-worker run` processes, worker i pinned
to core i (os.sched_setaffinity, inherited by its pool's child), and times each job
from submission to its video being published (the last part's finished_at, after the
join). K = 1 encodes the whole episode unsplit: that is the baseline T1; the goal is
<= 1.2 x T1 / K. Every video is decoded back and checked against the raw frames by
count and pts (the farm's own verification) before it counts. Writes
benchmarks/results/split_episode_<unix time>.json (result_files.py) and prints the table
the README shows of it (tables.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import result_files  # noqa: E402
import script_tables  # noqa: E402
from markdown_tables import render  # noqa: E402

from encoder_worker.celery_app import make_app  # noqa: E402
from encoder_worker.encode import verify_video  # noqa: E402
from encoder_worker.jobs import EncodeJob, EncodeResult, Status, split_job  # noqa: E402
from encoder_worker.raw_episode import (  # noqa: E402
    RawEpisodeReader,
    RawEpisodeWriter,
)
from encoder_worker.raw_layout import raw_prefix  # noqa: E402
from encoder_worker.raw_sinks import DirectSink  # noqa: E402
from encoder_worker.storage import open_storage  # noqa: E402
from recorder.capture.cameras.synthetic import SyntheticCamera  # noqa: E402
from recorder.dataset.jobs import part_count  # noqa: E402
from recorder.farm.client import EncodingFarmClient  # noqa: E402
from recorder.farm.local import RedisServer  # noqa: E402
from recorder.settings import RecorderSettings  # noqa: E402


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
    result_files.add_arguments(parser)
    args = parser.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    if max(args.workers) > len(cores):
        parser.error(f"K = {max(args.workers)} workers need as many cores; this machine "
                     f"lets this process use {len(cores)}")
    header = result_files.begin(args, argv)
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
            runs: list[Run] = []
            for k in args.workers:
                counts = [p for p in args.parts or [default_parts] if p > 1]
                for parts in ([1, *counts] if k == 1 else counts):
                    runs.append(measure(job, redis.url, root, workers=k, parts=parts,
                                        cores=cores, frames=frames))
                    print(f"K = {k}, {parts} part(s): {runs[-1].latency_s:.1f} s", flush=True)
        finally:
            redis.stop()
    result = result_files.SplitEpisodeResult(
        **header.model_dump(), seconds=args.seconds, fps=args.fps, width=args.width,
        height=args.height, frames=frames, codec=runs[0].result.codec,
        runs=[result_files.SplitRun(workers=run.workers, parts=run.parts,
                                    latency_s=run.latency_s, worker_s=run.worker_s,
                                    join_s=run.join_s) for run in runs])
    path = result_files.save(result, args.output_dir)
    print("\n" + render(script_tables.split_episode(result, path)))
    print(f"\nresults: {path}")
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


if __name__ == "__main__":
    sys.exit(main())
