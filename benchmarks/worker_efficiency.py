"""Worker fps against bare PyAV fps: what fetching, verifying and publishing cost.

The same real-content 640x480 frames (benchmarks/real_content.py), the same codec
settings (the farm's defaults, LeRobot's), rounds interleaved in one process:
- bare: PyAV encodes the frames from memory into an MP4, nothing else;
- worker: encode_job() on the raw episode in a local folder, as a worker runs it
  (read ahead, encode, decode every frame to verify, publish).
Both are given frames in the raw format the recorder stores by default (yuv420p); bare
from rgb24 (what an inline encoder is given) is shown too. Run as root, SVT-AV1 gives its
threads real-time priority, which the farm's workers take back (a robot host's loop
must come first; priority.demote_realtime_threads): "bare, threads demoted" is bare PyAV
as the workers, and any worker not run as root, encode. "bare + verify" adds the worker's
verification alone (every packet decoded as it comes, verify.PacketVerifier) to it: what
decoding every frame costs, apart from fetching and publishing. Workers run SVT-AV1 at a
level of parallelism of their own where one was measured better for the host's CPUs
(encode.worker_codec_options: level 3 on 2 CPUs, where SVT picks 2); the bare paths
"at the worker's SVT level" are given the same, to show what that level brings apart from
the rest of the worker.

    python benchmarks/worker_efficiency.py --frames 300 --rounds 3 --quiet-load 1.0

Writes benchmarks/results/worker_efficiency_<unix time>.json (result_files.py) and prints
the table the README shows of it (tables.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from functools import partial
from pathlib import Path

import av
import numpy as np
import result_files
import script_tables
from markdown_tables import render
from real_content import frames as real_frames

from encoder_worker.encode import encode_job, worker_codec_options
from encoder_worker.jobs import EncodeJob, EncoderOptions, Status
from encoder_worker.priority import demote_realtime_threads
from encoder_worker.raw_episode import RawEpisodeWriter
from encoder_worker.raw_frames import FramePacker
from encoder_worker.raw_sinks import DirectSink
from encoder_worker.storage import open_storage
from encoder_worker.verify import PacketVerifier


def bare_encode(arrays: list[np.ndarray], pix_fmt: str, path: Path,
                options: EncoderOptions, *, demote: bool = False,
                verify: bool = False, worker_level: bool = False) -> float:
    """Seconds to encode arrays (of pix_fmt) to path with PyAV alone (verify: and decode
    every packet as the worker does; worker_level: SVT-AV1's threads as a worker sets
    them, else as SVT chooses)."""
    height, width = (arrays[0].shape[0] * 2 // 3, arrays[0].shape[1]) \
        if pix_fmt == "yuv420p" else arrays[0].shape[:2]
    started = time.perf_counter()
    with av.open(str(path), "w", format="mp4") as container:
        codec_options = worker_codec_options(options) if worker_level \
            else options.codec_options()
        stream = container.add_stream(options.codec, rate=30, options=codec_options)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, options.pix_fmt
        stream.time_base = Fraction(1, 30)
        stream.codec_context.open()
        if demote:
            demote_realtime_threads()
        verifier = PacketVerifier(stream.codec_context, width=width, height=height) \
            if verify else None
        for index, array in enumerate([*arrays, None]):
            if array is None:
                packets = stream.encode(None)
            else:
                frame = av.VideoFrame.from_ndarray(array, format=pix_fmt)
                frame.pts = index
                packets = stream.encode(frame.reformat(format=options.pix_fmt))
            if verifier is not None:
                verifier.add(packets)
            container.mux(packets)
    if verifier is not None:
        verifier.check(len(arrays))
    return time.perf_counter() - started


PATHS = ("bare yuv420p", "bare yuv420p, threads demoted", "bare + verify, threads demoted",
         "bare rgb24", "worker", "bare yuv420p, threads demoted, worker's SVT level",
         "bare + verify, threads demoted, worker's SVT level")


class Clock:
    """Each path's wall seconds (as its code measures them) and this process's CPU seconds
    (every thread: the codec's, the verifier's, the reader's) around it."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = {name: [] for name in PATHS}
        self.cpu_seconds: dict[str, list[float]] = {name: [] for name in PATHS}

    def run(self, path: str, timed: Callable[[], float]) -> None:
        started = time.process_time()
        self.seconds[path].append(timed())
        self.cpu_seconds[path].append(time.process_time() - started)


def measure(rgb: list[np.ndarray], rounds: int, options: EncoderOptions
            ) -> tuple[Clock, list[dict[str, float]]]:
    """Wall and CPU seconds per round of each path, rounds interleaved; the worker's stage
    timings."""
    height, width, _ = rgb[0].shape
    packer = FramePacker(width=width, height=height, pix_fmt="yuv420p", input_pix_fmt="rgb24")
    yuv = [packer.convert(frame) for frame in rgb]
    clock = Clock()
    stages: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="worker-efficiency-") as tmp:
        folder = Path(tmp)
        storage = open_storage(folder / "farm")
        writer = RawEpisodeWriter(DirectSink(storage, "raw/cam0"), episode=0, camera="cam0",
                                  width=width, height=height, fps=30, pix_fmt="yuv420p",
                                  input_pix_fmt="rgb24")
        for index, frame in enumerate(rgb):
            writer.write(frame, index / 30)
        writer.close()
        for round_ in range(rounds):
            clock.run("bare yuv420p", partial(
                bare_encode, yuv, "yuv420p", folder / f"bare-{round_}.mp4", options))
            clock.run("bare yuv420p, threads demoted", partial(
                bare_encode, yuv, "yuv420p", folder / f"demoted-{round_}.mp4", options,
                demote=True))
            clock.run("bare + verify, threads demoted", partial(
                bare_encode, yuv, "yuv420p", folder / f"verified-{round_}.mp4", options,
                demote=True, verify=True))
            job = EncodeJob(job_id=f"round-{round_}", recording=0, camera="cam0",
                            raw_storage=storage.url, raw_prefix="raw/cam0",
                            output_storage=storage.url, output_key=f"videos/{round_}.mp4",
                            options=options)
            clock.run("worker", partial(worker_encode, job, stages))
            clock.run("bare rgb24", partial(
                bare_encode, rgb, "rgb24", folder / f"bare-rgb-{round_}.mp4", options))
            clock.run("bare yuv420p, threads demoted, worker's SVT level", partial(
                bare_encode, yuv, "yuv420p", folder / f"level-{round_}.mp4", options,
                demote=True, worker_level=True))
            clock.run("bare + verify, threads demoted, worker's SVT level", partial(
                bare_encode, yuv, "yuv420p", folder / f"level-verified-{round_}.mp4",
                options, demote=True, verify=True, worker_level=True))
    return clock, stages


def worker_encode(job: EncodeJob, stages: list[dict[str, float]]) -> float:
    """Seconds for encode_job(job); its stage timings appended to stages."""
    started = time.perf_counter()
    result = encode_job(job)
    seconds = time.perf_counter() - started
    if result.status != Status.SUCCEEDED:
        raise SystemExit(f"the worker's encode failed: {result.error}")
    stages.append(result.timings.model_dump())
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    result_files.add_arguments(parser)
    args = parser.parse_args(argv)
    header = result_files.begin(args, argv)
    options = EncoderOptions()
    rgb = list(real_frames(args.frames))
    clock, stages = measure(rgb, args.rounds, options)
    height, width, _ = rgb[0].shape
    result = result_files.WorkerEfficiencyResult(
        **header.model_dump(), frames=args.frames, width=width, height=height,
        rounds=args.rounds, codec=options.codec, codec_options=options.codec_options(),
        worker_codec_options=worker_codec_options(options),
        seconds=clock.seconds, cpu_seconds=clock.cpu_seconds, worker_stages=stages)
    path = result_files.save(result, args.output_dir)
    print(render(script_tables.worker_efficiency(result, path)))
    print()
    print(render(script_tables.worker_ratios(result)))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
