"""SVT-AV1's level of parallelism (its thread count) for two encodes at once, as two local
workers run them: the CPU and wall time of two encodes of the same frames at once, rounds
alternated over the levels.

By default both share one CPU in SCHED_IDLE, as beside a capture that keeps the other CPU
(issue 21), with SVT's own level and its fewest (`svtav1-params lp=1`):

    python benchmarks/svt_threads.py /tmp/real_clip.mp4 --frames 300 --rounds 4 [--cpus 1]

Two workers on a 2-CPU host with no capture, verifying as workers do (the level a worker
chooses there, encode.SVT_LEVEL_FOR_CPUS, against SVT's own and the fewest):

    python benchmarks/svt_threads.py /tmp/real_clip.mp4 --cpus 0,1 --normal-priority \
        --verify --levels default,1,3

Writes benchmarks/results/svt_threads_<unix time>.json (result_files.py) and prints the
table the README shows of it (tables.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import result_files
import script_tables
from markdown_tables import render

from encoder_worker.priority import demote_realtime_threads
from encoder_worker.verify import PacketVerifier

LEROBOT_OPTIONS = {"g": "2", "crf": "30", "preset": "12"}


class PeakMemory:
    """The most this process's resident memory grew over its size at start, sampled
    every 10 ms in a thread of its own while the block runs."""

    def __init__(self) -> None:
        self.grown_mb = 0.0
        self._done = threading.Event()
        self._start = self._rss_mb()

    @staticmethod
    def _rss_mb() -> float:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6

    def _sample(self) -> None:
        while not self._done.wait(0.01):
            self.grown_mb = max(self.grown_mb, self._rss_mb() - self._start)

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()


def encode(clip: Path, frames: int, lp: str, verify: bool
           ) -> tuple[float, float, float, float]:
    """Encode the clip's first frames with libsvtav1, its threads demoted from real time
    as workers' are (verify: decoding every packet as a worker does), once told to go on
    stdin: the encodes of a round start together. Returns the encode's start and end
    (monotonic clock, shared by processes), its CPU s and the MB its memory grew."""
    arrays = []
    with av.open(str(clip)) as source:
        for frame in source.decode(video=0):
            arrays.append(frame.to_ndarray(format="yuv420p"))
            if len(arrays) == frames:
                break
    height, width = arrays[0].shape[0] * 2 // 3, arrays[0].shape[1]
    options = dict(LEROBOT_OPTIONS)
    if lp != "default":
        options["svtav1-params"] = f"lp={lp}"
    print("ready", flush=True)
    sys.stdin.readline()
    start, cpu = time.monotonic(), time.process_time()
    with PeakMemory() as memory, av.open(os.devnull, "w", format="mp4") as out:
        stream = out.add_stream("libsvtav1", rate=30, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.open()
        demote_realtime_threads()  # as root SVT-AV1 makes them SCHED_FIFO
        verifier = PacketVerifier(stream.codec_context, width=width, height=height) \
            if verify else None
        for array in [*arrays, None]:
            picture = None if array is None else av.VideoFrame.from_ndarray(array, "yuv420p")
            packets = stream.encode(picture)
            if verifier is not None:
                verifier.add(packets)
            out.mux(packets)
        if verifier is not None:
            verifier.check(len(arrays))
    return start, time.monotonic(), time.process_time() - cpu, memory.grown_mb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clip", type=Path, help="a video file (benchmarks/real_content.py)")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--cpus", "--cpu", default="1",
                        help="the CPUs both encodes share, as taskset lists them (1, 0,1)")
    parser.add_argument("--levels", default="default,1",
                        help="SVT-AV1 levels of parallelism to alternate (default: SVT's own)")
    parser.add_argument("--normal-priority", action="store_true",
                        help="run the encodes at normal priority, not in SCHED_IDLE")
    parser.add_argument("--verify", action="store_true",
                        help="decode every packet as it comes, as workers do")
    parser.add_argument("--encodes", type=int, choices=[1, 2], default=2,
                        help="encodes at once per round")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    result_files.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.one:  # a child: one encode, its times on stdout
        start, end, cpu, grown_mb = encode(args.clip, args.frames, args.one, args.verify)
        print(f"{start:.4f} {end:.4f} {cpu:.3f} {grown_mb:.1f}")
        return 0
    if not args.clip.is_file():
        parser.error(f"{args.clip}: no such video file (make one with "
                     "benchmarks/real_content.py)")
    levels = args.levels.split(",")
    if any(level != "default" and not level.isdigit() for level in levels):
        parser.error(f"--levels {args.levels}: give SVT-AV1 levels (1-6) or default, "
                     "separated by commas")
    header = result_files.begin(args, argv)
    cpu_s: dict[str, list[float]] = {level: [] for level in levels}
    wall_s: dict[str, list[float]] = {level: [] for level in levels}
    span_s: dict[str, list[float]] = {level: [] for level in levels}
    memory_mb: dict[str, list[float]] = {level: [] for level in levels}
    priority = [] if args.normal_priority else ["chrt", "-i", "0"]
    for _ in range(args.rounds):
        for lp in levels:
            command = ["taskset", "-c", args.cpus, *priority, sys.executable, __file__,
                       str(args.clip), "--frames", str(args.frames), "--one", lp,
                       *(["--verify"] if args.verify else [])]
            # SVT_LOG=1: SVT-AV1's errors only, not its banner per encode.
            children = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         text=True, env={**os.environ, "SVT_LOG": "1"})
                        for _ in range(args.encodes)]
            for child in children:  # both have read their frames: start them together
                assert child.stdout is not None
                if child.stdout.readline() != "ready\n":  # it failed: its error is shown
                    for other in children:
                        other.kill()
                    return child.wait() or 1
            for child in children:
                assert child.stdin is not None
                child.stdin.write("go\n")
                child.stdin.flush()
            times = []
            for child in children:
                out, _ = child.communicate()
                if child.returncode:
                    return child.returncode
                start, end, cpu, grown_mb = map(float, out.split())
                times.append((start, end))
                memory_mb[lp].append(grown_mb)
                cpu_s[lp].append(cpu)
                wall_s[lp].append(end - start)
                print(f"lp={lp:7} wall {end - start:.2f} s  cpu {cpu:.2f} s")
            span_s[lp].append(max(end for _, end in times) - min(start for start, _ in times))
    result = result_files.SvtThreadsResult(
        **header.model_dump(), clip=args.clip.name, frames=args.frames, rounds=args.rounds,
        cpu=args.cpus, idle=not args.normal_priority, verify=args.verify, encodes=args.encodes,
        cpu_s=cpu_s,
        wall_s=wall_s, span_s=span_s, memory_mb=memory_mb)
    path = result_files.save(result, args.output_dir)
    print(render(script_tables.svt_threads(result, path)))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
