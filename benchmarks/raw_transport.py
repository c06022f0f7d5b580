"""Raw transport at 1080p: what each way of storing raw frames costs the robot (CPU per
frame, MB/s for its cameras) and what it costs the final video (PSNR against the
camera's frames).

The same real-content frames (benchmarks/real_content.py at --width x --height) go
through the recorder's own camera writer once per compression, rounds interleaved
(raw_formats.write_once); the worker then encodes each stored episode as it would
(encode_job, the farm's default codec settings) and the video is decoded and compared
with the camera's frames converted to yuv420p. Lossless options give the same video as
none; MJPEG's loss is what its quantiser costs after the AV1 encode.

    python benchmarks/raw_transport.py --frames 60 --rounds 2 --quiet-load 1.0

Writes benchmarks/results/raw_transport_<unix time>.json (result_files.py) and prints the
table the README shows of it (tables.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import av
import numpy as np
import result_files
import script_tables
from markdown_tables import render
from raw_formats import write_once
from real_content import frames as real_frames

from encoder_worker.encode import encode_job
from encoder_worker.jobs import EncodeJob, EncoderOptions, Status
from encoder_worker.raw_frames import Compression, FramePacker
from encoder_worker.storage import open_storage

TRANSPORTS: tuple[Compression, ...] = ("none", "zstd", "ffv1", "mjpeg")


def psnr(video: Path, expected: list[np.ndarray]) -> float:
    """PSNR of the video's frames against expected (yuv420p arrays), over all of them."""
    with av.open(str(video)) as container:
        decoded = [frame.to_ndarray(format="yuv420p") for frame in container.decode(video=0)]
    if len(decoded) != len(expected):
        raise SystemExit(f"{video.name}: {len(decoded)} frames decoded, {len(expected)} written")
    mse = float(np.mean([np.mean((a.astype(np.float64) - b) ** 2)
                         for a, b in zip(decoded, expected, strict=True)]))
    return float("inf") if mse == 0 else 10 * float(np.log10(255 ** 2 / mse))


def encoded_psnr(root: Path, expected: list[np.ndarray], options: EncoderOptions) -> float:
    """The worker's encode of the raw episode under root, against expected."""
    storage = open_storage(root)
    job = EncodeJob(job_id=root.name, recording=0, camera="cam0", raw_storage=storage.url,
                    raw_prefix="raw/cam0", output_storage=storage.url,
                    output_key="videos/cam0.mp4", options=options)
    result = encode_job(job)
    if result.status != Status.SUCCEEDED:
        raise SystemExit(f"{root.name}: the worker's encode failed: {result.error}")
    return psnr(root / result.output_key, expected)  # a local folder: keys are paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--cameras", type=int, default=2)
    result_files.add_arguments(parser)
    args = parser.parse_args(argv)
    header = result_files.begin(args, argv)
    frames = list(real_frames(args.frames, width=args.width, height=args.height))
    packer = FramePacker(width=args.width, height=args.height, pix_fmt="yuv420p",
                         input_pix_fmt="rgb24")
    expected = [packer.convert(frame) for frame in frames]
    options = EncoderOptions()
    samples: dict[Compression, list[result_files.RawFormatSample]] = {
        c: [] for c in TRANSPORTS}
    quality: dict[Compression, float] = {}
    with tempfile.TemporaryDirectory(prefix="raw-transport-") as tmp:
        for round_ in range(args.rounds):
            for compression in TRANSPORTS:
                root = Path(tmp) / f"{round_}-{compression}"
                samples[compression].append(write_once(root, frames, "yuv420p", compression))
                if round_ == 0:
                    quality[compression] = encoded_psnr(root, expected, options)
    result = result_files.RawTransportResult(
        **header.model_dump(), frames=args.frames, width=args.width, height=args.height,
        fps=args.fps, cameras=args.cameras, rounds=args.rounds, codec=options.codec,
        codec_options=options.codec_options(),
        options=[result_files.RawTransportOption(compression=c, rounds=samples[c],
                                                 psnr_db=quality[c]) for c in TRANSPORTS])
    path = result_files.save(result, args.output_dir)
    print(render(script_tables.raw_transport(result, path)))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
