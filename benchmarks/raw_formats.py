"""Raw frame formats: bytes stored (or shipped) per frame and robot CPU per frame.

Writes the same real-content 640x480 frames (benchmarks/real_content.py) through the
recorder's own camera writer (CameraWriter -> RawEpisodeWriter -> a local folder) once
per format, rounds interleaved, and reads them back as a worker does. CPU is the whole
process's (every thread: the conversion and compression run in the writer thread).

    python benchmarks/raw_formats.py --frames 150 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from real_content import frames as real_frames

from encoder_worker.raw_episode import DirectSink, RawEpisodeReader, RawEpisodeWriter
from encoder_worker.storage import open_storage
from recorder.capture.raw_writer import CameraWriter

FORMATS = [("rgb24", "none"), ("yuv420p", "none"), ("rgb24", "zstd"), ("yuv420p", "zstd"),
           ("yuv420p", "ffv1")]


def write_once(root: Path, frames: list, pix_fmt: str, compression: str) -> dict[str, float]:
    storage = open_storage(root)
    height, width, _ = frames[0].shape
    writer = RawEpisodeWriter(DirectSink(storage, "raw/cam0"), episode=0, camera="cam0",
                              width=width, height=height, fps=30, pix_fmt=pix_fmt,
                              input_pix_fmt="rgb24", compression=compression)  # type: ignore[arg-type]
    camera = CameraWriter(writer, queue_frames=len(frames))
    cpu, wall = time.process_time(), time.perf_counter()
    for index, frame in enumerate(frames):
        camera.put(frame, index / 30, period_s=1.0)
    manifest = camera.finish()
    write_cpu, write_wall = time.process_time() - cpu, time.perf_counter() - wall
    cpu = time.process_time()
    count = sum(1 for _ in RawEpisodeReader(storage, "raw/cam0").frames())
    read_cpu = time.process_time() - cpu
    assert count == len(frames)
    return {"bytes": manifest.stored_bytes / len(frames),
            "write_cpu_ms": 1000 * write_cpu / len(frames),
            "write_wall_ms": 1000 * write_wall / len(frames),
            "read_cpu_ms": 1000 * read_cpu / len(frames)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    frames = list(real_frames(args.frames))
    rgb_bytes = frames[0].nbytes
    load = os.getloadavg()[0]
    samples: dict[tuple[str, str], list[dict[str, float]]] = {f: [] for f in FORMATS}
    with tempfile.TemporaryDirectory(prefix="raw-formats-") as tmp:
        for round_ in range(args.rounds):
            for pix_fmt, compression in FORMATS:
                root = Path(tmp) / f"{round_}-{pix_fmt}-{compression}"
                samples[pix_fmt, compression].append(
                    write_once(root, frames, pix_fmt, compression))
    print(f"{args.frames} real-content 640x480 frames, {args.rounds} rounds interleaved, "
          f"medians; load average {load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    print()
    print("| raw format | compression | KiB per frame | x rgb24 | robot CPU ms per frame "
          "(write) | worker CPU ms per frame (read) | MB/s for 4 cameras at 30 fps |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (pix_fmt, compression), runs in samples.items():
        median = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
        print(f"| {pix_fmt} | {compression} | {median['bytes'] / 1024:.0f} | "
              f"{median['bytes'] / rgb_bytes:.2f} | {median['write_cpu_ms']:.2f} | "
              f"{median['read_cpu_ms']:.2f} | {median['bytes'] * 120 / 1e6:.0f} |")


if __name__ == "__main__":
    main()
