"""SVT-AV1's thread count for encodes that share one CPU, as two local workers do beside a
capture that keeps the other CPU (issue 21): the CPU and wall time of two encodes of the
same frames at once, both on one CPU in SCHED_IDLE, with SVT's own thread count and with
its fewest (`svtav1-params lp=1`), rounds alternated.

    python benchmarks/svt_threads.py /tmp/real_clip.mp4 --frames 300 --rounds 4 [--cpu 1]

Writes benchmarks/results/svt_threads_<unix time>.json (result_files.py) and prints the
table the README shows of it (tables.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import av
import result_files
import script_tables
from markdown_tables import render

LEROBOT_OPTIONS = {"g": "2", "crf": "30", "preset": "12"}


def encode(clip: Path, frames: int, lp: str) -> tuple[float, float]:
    """Encode the clip's first frames with libsvtav1; (wall s, CPU s) of the encode alone."""
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
    wall, cpu = time.perf_counter(), time.process_time()
    with av.open(os.devnull, "w", format="mp4") as out:
        stream = out.add_stream("libsvtav1", rate=30, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for array in arrays:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="yuv420p")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clip", type=Path, help="a video file (benchmarks/real_content.py)")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--cpu", type=int, default=1, help="the one CPU both encodes share")
    parser.add_argument("--one", choices=["default", "1"], help=argparse.SUPPRESS)
    result_files.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.one:  # a child: one encode, its times on stdout
        wall, cpu = encode(args.clip, args.frames, args.one)
        print(f"{wall:.3f} {cpu:.3f}")
        return 0
    header = result_files.begin(args, argv)
    cpu_s: dict[str, list[float]] = {"default": [], "1": []}
    wall_s: dict[str, list[float]] = {"default": [], "1": []}
    for _ in range(args.rounds):
        for lp in ("default", "1"):
            command = ["taskset", "-c", str(args.cpu), "chrt", "-i", "0", sys.executable,
                       __file__, str(args.clip), "--frames", str(args.frames), "--one", lp]
            # SVT_LOG=1: SVT-AV1's errors only, not its banner per encode.
            children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                                         env={**os.environ, "SVT_LOG": "1"})
                        for _ in range(2)]
            for child in children:
                out, _ = child.communicate()
                if child.returncode:
                    return child.returncode
                wall, cpu = map(float, out.split())
                cpu_s[lp].append(cpu)
                wall_s[lp].append(wall)
                print(f"lp={lp:7} wall {wall:.2f} s  cpu {cpu:.2f} s")
    result = result_files.SvtThreadsResult(
        **header.model_dump(), clip=args.clip.name, frames=args.frames, rounds=args.rounds,
        cpu=args.cpu, cpu_s=cpu_s, wall_s=wall_s)
    path = result_files.save(result, args.output_dir)
    print(render(script_tables.svt_threads(result, path)))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
