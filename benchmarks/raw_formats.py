"""Raw frame formats: bytes stored (or shipped) per frame and robot CPU per frame.

Writes the same real-content 640x480 frames (benchmarks/real_content.py) through the
recorder's own camera writer (CameraWriter -> RawEpisodeWriter -> a local folder) once
per format, rounds interleaved, and reads them back as a worker does. CPU is the whole
process's (every thread: the conversion and compression run in the writer thread).

    python benchmarks/raw_formats.py --frames 150 --rounds 3 --quiet-load 1.0

Writes benchmarks/results/raw_formats_<unix time>.json (result_files.py) and prints the
table the README shows of it (tables.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import result_files
import script_tables
from markdown_tables import render
from real_content import frames as real_frames

from encoder_worker.raw_episode import RawEpisodeReader, RawEpisodeWriter
from encoder_worker.raw_frames import Compression
from encoder_worker.raw_sinks import DirectSink
from encoder_worker.storage import open_storage
from recorder.capture.raw_writer import CameraWriter

FORMATS: list[tuple[str, Compression]] = [
    ("rgb24", "none"), ("yuv420p", "none"), ("rgb24", "zstd"), ("yuv420p", "zstd"),
    ("yuv420p", "ffv1"), ("yuv420p", "mjpeg")]


def write_once(root: Path, frames: list[np.ndarray], pix_fmt: str, compression: Compression
               ) -> result_files.RawFormatSample:
    storage = open_storage(root)
    height, width, _ = frames[0].shape
    writer = RawEpisodeWriter(DirectSink(storage, "raw/cam0"), episode=0, camera="cam0",
                              width=width, height=height, fps=30, pix_fmt=pix_fmt,
                              input_pix_fmt="rgb24", compression=compression)
    camera = CameraWriter(writer, queue_frames=len(frames))
    cpu, wall = time.process_time(), time.perf_counter()
    for index, frame in enumerate(frames):
        camera.put(frame, index / 30, period_s=1.0)
    manifest = camera.finish()
    write_cpu, write_wall = time.process_time() - cpu, time.perf_counter() - wall
    cpu = time.process_time()
    count = sum(1 for _ in RawEpisodeReader(storage, "raw/cam0").frames())
    read_cpu = time.process_time() - cpu
    if count != len(frames):
        raise SystemExit(f"{pix_fmt}/{compression}: read back {count} of {len(frames)} frames")
    return result_files.RawFormatSample(
        bytes_per_frame=manifest.stored_bytes / len(frames),
        write_cpu_ms=1000 * write_cpu / len(frames),
        write_wall_ms=1000 * write_wall / len(frames),
        read_cpu_ms=1000 * read_cpu / len(frames))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    result_files.add_arguments(parser)
    args = parser.parse_args(argv)
    header = result_files.begin(args, argv)
    frames = list(real_frames(args.frames))
    samples: dict[tuple[str, Compression], list[result_files.RawFormatSample]] = {
        f: [] for f in FORMATS}
    with tempfile.TemporaryDirectory(prefix="raw-formats-") as tmp:
        for round_ in range(args.rounds):
            for pix_fmt, compression in FORMATS:
                root = Path(tmp) / f"{round_}-{pix_fmt}-{compression}"
                samples[pix_fmt, compression].append(
                    write_once(root, frames, pix_fmt, compression))
    height, width, _ = frames[0].shape
    result = result_files.RawFormatsResult(
        **header.model_dump(), frames=args.frames, width=width, height=height,
        rounds=args.rounds, rgb24_bytes_per_frame=frames[0].nbytes,
        formats=[result_files.RawFormatRounds(pix_fmt=pix_fmt, compression=compression,
                                              rounds=rounds)
                 for (pix_fmt, compression), rounds in samples.items()])
    path = result_files.save(result, args.output_dir)
    print(render(script_tables.raw_formats(result, path)))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
