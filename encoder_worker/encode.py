"""Encode one raw episode to MP4 with PyAV: fetch, encode, verify by decoding, publish.

The same function serves the worker task and the recorder's inline (sync) baseline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TypeVar

# SVT-AV1 prints banners on stderr per encode unless told to keep to errors.
os.environ.setdefault("SVT_LOG", "1")

import av
from av.video.reformatter import VideoReformatter

from encoder_worker.jobs import EncodeJob, EncodeResult, EncoderOptions, FailureReason, Status
from encoder_worker.priority import demote_realtime_threads
from encoder_worker.raw_episode import Manifest, RawEpisodeError, RawEpisodeReader
from encoder_worker.storage import KeyNotFound, Storage, open_storage
from encoder_worker.verify import PacketVerifier, VerifyError, check_file

logger = logging.getLogger(__name__)


class EncodeError(Exception):
    """The encoder failed or its output did not verify; the message says how, reason
    which (ENCODE, VERIFY, OUTPUT_TAKEN)."""

    def __init__(self, message: str, *, reason: FailureReason = FailureReason.ENCODE) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Encoded:
    """What encode_frames measured and verified."""

    fetch_s: float
    encode_s: float
    verify_s: float
    duration_s: float  # the written video's, as its readers get it


# MP4 metadata tag naming the raw episode a video was made from (its manifest's digest).
SOURCE_TAG = "comment"
SOURCE_PREFIX = "robot-encoding-farm source="
# An encode's progress callback is called at most this often (and once more at its end).
PROGRESS_INTERVAL_S = 1.0
# progress(frames_done, frames_total)
ProgressCallback = Callable[[int, int], None]
# pause(): returns when the encode may go on (priority.CaptureYield); called between frames
PauseCallback = Callable[[], None]
# ... every this many frames (a Redis EXISTS each: a few per second at most).
PAUSE_EVERY_FRAMES = 15
# Frames fetched, unpacked and converted ahead of the encoder, in a thread of their own:
# about 40 MB at 640x480 rgb24, enough to ride out an S3 round trip of a segment.
READ_AHEAD_FRAMES = 45
# SVT-AV1's level of parallelism (lp=) for an encode on a host of this many CPUs, where it
# differs from SVT's own choice (SVT counts the host's CPUs, not the process's affinity).
# SVT picks level 2 on 2 CPUs, which leaves them partly idle: level 3 encoded 640x480
# 1.07-1.10x as fast there (1080p: 1.02x), the same bitstream, at about 40 MB more
# memory (180 MB at 1080p), and so covers the verifier's decode beside it
# (benchmarks/README.md, "Worker fps against bare PyAV"). Other CPU counts were not
# measured to gain, so SVT chooses there.
SVT_LEVEL_FOR_CPUS = {2: 3}
T = TypeVar("T")


def encode_job(job: EncodeJob, *, scratch_dir: Path | None = None,
               before_publish: Callable[[], None] | None = None,
               progress: ProgressCallback | None = None,
               pause: PauseCallback | None = None) -> EncodeResult:
    """Run one EncodeJob to a published, verified MP4.

    Failures that retrying cannot fix (missing or corrupt raw data, a codec error, an
    output that does not verify) come back as a FAILED result with the reason; storage
    and network errors are raised so that the caller can retry.

    Args:
        before_publish: called just before publishing; raises to stop it (a lost lease).
        progress: told (frames_done, frames_total) while frames are encoded, at most every
            PROGRESS_INTERVAL_S and after the last frame; it must not raise.
        pause: called before anything else, then every PAUSE_EVERY_FRAMES frames; it
            returns when the encode may go on. Its time is in no stage's.
    """
    with timed_result(job) as result:
        _encode_into(result, job, scratch_dir=scratch_dir, before_publish=before_publish,
                     progress=progress, pause=pause)
    return result


@contextlib.contextmanager
def timed_result(job: EncodeJob) -> Iterator[EncodeResult]:
    """The result of running job in the block, timed. Data and codec failures in it make
    it FAILED with their reason (an exception's notes say the stage); others propagate."""
    started = time.time()
    result = EncodeResult(job_id=job.job_id, recording=job.recording, camera=job.camera,
                          status=Status.SUCCEEDED, output_storage=job.output_storage,
                          output_key=job.output_key, codec=job.options.codec,
                          worker_host=socket.gethostname(), worker_pid=os.getpid(),
                          started_at=started)
    result.timings.queue_wait_s = max(0.0, started - job.submitted_at)
    try:
        yield result
    except RawEpisodeError as exc:
        _failed(result, job, exc, FailureReason.RAW_EPISODE)
    except EncodeError as exc:
        _failed(result, job, exc, exc.reason)
    except av.FFmpegError as exc:
        _failed(result, job, exc, FailureReason.ENCODE)
    result.finished_at = time.time()
    result.timings.total_s = result.finished_at - started


def _failed(result: EncodeResult, job: EncodeJob, exc: Exception,
            reason: FailureReason) -> None:
    result.status = Status.FAILED
    result.reason = reason
    result.duration_s = None
    stage = "".join(f"{note}: " for note in getattr(exc, "__notes__", []))
    result.error = f"{type(exc).__name__}: {stage}{exc}"
    logger.error("job %s (episode %d, camera %s) failed: %s",
                 job.job_id, job.recording, job.camera, result.error)


def _encode_into(result: EncodeResult, job: EncodeJob, *, scratch_dir: Path | None,
                 before_publish: Callable[[], None] | None,
                 progress: ProgressCallback | None = None,
                 pause: PauseCallback | None = None) -> None:
    if pause is not None:
        pause()  # before the codec's start (memory, threads) and the first reads
    raw_storage = open_storage(job.raw_storage)
    output_storage = open_storage(job.output_storage)
    reader = RawEpisodeReader(raw_storage, job.raw_prefix)
    manifest = reader.manifest
    if manifest.interrupted:
        raise RawEpisodeError(
            f"{job.raw_prefix} was interrupted while recording ({manifest.frame_count} frames "
            "kept); it is not encoded as a complete episode"
        )
    if manifest.frame_count == 0:
        raise RawEpisodeError(f"{job.raw_prefix} has no frames")
    source = SOURCE_PREFIX + reader.manifest_digest
    result.frames = manifest.frame_count
    with tempfile.TemporaryDirectory(prefix="encode-", dir=scratch_dir) as tmp:
        # Published videos were verified first: a second copy of this job (a redelivery)
        # has nothing left to do, if the video is of these very frames.
        existing = published_copy(output_storage, job.output_key, source,
                                  Path(tmp) / "existing.mp4")
        if existing is not None:
            result.status = Status.ALREADY_DONE
            result.bytes = existing.stat().st_size
            return
        encode_and_publish(result, reader, job, output_storage, job.output_key,
                           Path(tmp) / "episode.mp4", source=source, progress=progress,
                           pause=pause, before_publish=before_publish)


def published_copy(storage: Storage, key: str, source: str, local: Path, *,
                   replace_other: bool = False) -> Path | None:
    """A local copy of the video at key when it is there and tagged source, else None.

    Raises:
        EncodeError: key holds a video of other raw frames (OUTPUT_TAKEN), unless
            replace_other: then None, and it is encoded again over it.
    """
    try:
        storage.download_file(key, local)
    except KeyNotFound:
        return None
    found = video_source(local)
    if found == source:
        return local
    if not replace_other:
        raise EncodeError(f"{storage.url}/{key} already holds a video of other raw frames; "
                          "it is not overwritten: move it away, or record into a new dataset",
                          reason=FailureReason.OUTPUT_TAKEN)
    logger.warning("%s/%s is a video of other raw frames (%s); encoding it again",
                   storage.url, key, found)
    return None


def encode_and_publish(result: EncodeResult, reader: RawEpisodeReader, job: EncodeJob,
                       storage: Storage, key: str, video: Path, *, source: str,
                       progress: ProgressCallback | None, pause: PauseCallback | None,
                       before_publish: Callable[[], None] | None, first_frame: int = 0,
                       frame_count: int | None = None) -> None:
    """encode_frames into video, then publish it under key; result gets the timings and
    the verified duration."""
    timings = result.timings
    encoded = encode_frames(reader, video, job, source=source, progress=progress,
                            pause=pause, first_frame=first_frame, frame_count=frame_count)
    timings.fetch_s, timings.encode_s = encoded.fetch_s, encoded.encode_s
    timings.verify_s = encoded.verify_s
    result.duration_s = encoded.duration_s
    result.bytes = video.stat().st_size
    if before_publish is not None:
        before_publish()
    t0 = time.perf_counter()
    publish(storage, key, video)
    timings.publish_s = time.perf_counter() - t0
    result.status = Status.SUCCEEDED


def encode_frames(reader: RawEpisodeReader, video: Path, job: EncodeJob, *,
                  source: str = "", progress: ProgressCallback | None = None,
                  first_frame: int = 0, frame_count: int | None = None,
                  pause: PauseCallback | None = None) -> Encoded:
    """Encode frames of reader into video and verify it; returns the stage times and the
    verified video's duration.

    Frames are read, unpacked and converted READ_AHEAD_FRAMES ahead in another thread:
    fetch_s is the time the encoder waited for them. Every packet the encoder gives is
    decoded in a third thread as it comes (verify.PacketVerifier: count, order, size),
    and the file is read back packet by packet at the end (verify.check_file): verify_s
    is the time both took after the last frame was encoded.

    Raises:
        EncodeError: the encoder failed (ENCODE), or its output did not verify (VERIFY).

    Args:
        source: written to the video's metadata, to recognise it later.
        progress, pause: see encode_job.
        first_frame, frame_count: the frames to encode (default: all); the video's first
            frame has pts 0 either way.
    """
    manifest = reader.manifest
    options = job.options
    total = manifest.frame_count - first_frame if frame_count is None else frame_count
    rate = Fraction(manifest.fps).limit_denominator(1001)
    fetch_s = encode_s = 0.0
    reformatter = VideoReformatter()  # one swscale context for every frame

    def video_frames() -> Iterator[av.VideoFrame]:
        for array in reader.frames(first_frame, total):
            # Wraps the array, no copy: the encoder copies what it keeps.
            frame = av.VideoFrame.from_numpy_buffer(array, format=manifest.pix_fmt)
            yield reformatter.reformat(frame, format=options.pix_fmt)

    try:
        # The first frames are read while the codec starts (10-20 ms for SVT-AV1 here).
        with read_ahead(video_frames(), READ_AHEAD_FRAMES) as frames, \
                av.open(str(video), mode="w", format="mp4") as container:
            if source:
                container.metadata[SOURCE_TAG] = source
            stream = container.add_stream(options.codec, rate=rate,
                                          options=worker_codec_options(options))
            assert isinstance(stream, av.VideoStream)
            stream.width = manifest.width
            stream.height = manifest.height
            stream.pix_fmt = options.pix_fmt
            # Constant frame rate: frame i is shown at i / fps.
            stream.time_base = Fraction(1, 1) / rate
            stream.codec_context.open()
            demote_realtime_threads()
            verifier = PacketVerifier(stream.codec_context, width=manifest.width,
                                      height=manifest.height)
            index = 0
            if progress is not None:
                progress(0, total)
            reported = time.perf_counter()
            while True:
                if pause is not None and index % PAUSE_EVERY_FRAMES == 0:
                    pause()
                t0 = time.perf_counter()
                frame = next(frames, None)
                t1 = time.perf_counter()
                fetch_s += t1 - t0
                if frame is None:
                    break
                frame.pts = index
                packets = stream.encode(frame)
                verifier.add(packets)
                container.mux(packets)
                t2 = time.perf_counter()
                encode_s += t2 - t1
                index += 1
                if progress is not None and t2 - reported >= PROGRESS_INTERVAL_S:
                    progress(index, total)
                    reported = t2
            if progress is not None:
                progress(index, total)
            t0 = time.perf_counter()
            packets = stream.encode(None)  # flush the encoder's delayed frames
            verifier.add(packets)
            container.mux(packets)
        encode_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        verifier.check(total)
        duration_s = check_file(video, frames=total, fps=manifest.fps,
                                size=(manifest.width, manifest.height))
        verify_s = time.perf_counter() - t0
    except (av.FFmpegError, av.codec.codec.UnknownCodecError) as exc:
        raise EncodeError(
            f"{options.codec} failed on {manifest.width}x{manifest.height} "
            f"{options.pix_fmt}: {exc}"
        ) from exc
    except VerifyError as exc:
        raise EncodeError(f"the encoded video does not verify: {exc}",
                          reason=FailureReason.VERIFY) from exc
    return Encoded(fetch_s, encode_s, verify_s, duration_s)


def worker_codec_options(options: EncoderOptions, cpus: int | None = None
                         ) -> dict[str, str]:
    """options' codec options as the farm encodes with them (workers, and the recorder's
    inline encode): SVT-AV1 at the level of parallelism measured best for a host of cpus
    CPUs (default: this host's; SVT_LEVEL_FOR_CPUS), unless the options give a level
    (a user's, or lp=1 beside a capture). Threads change the speed, not the bitstream."""
    level = SVT_LEVEL_FOR_CPUS.get(os.cpu_count() or 1 if cpus is None else cpus)
    return (options.with_svt_level(level) if level else options).codec_options()


@contextlib.contextmanager
def read_ahead(items: Iterator[T], depth: int) -> Iterator[Iterator[T]]:
    """items, produced up to depth ahead by a thread of their own.

    An exception in items is raised by the consumer, where it reaches the next item;
    leaving the block early stops the thread.
    """
    buffer: queue.Queue[tuple[bool, T | BaseException | None]] = queue.Queue(depth)
    stop = threading.Event()

    def offer(entry: tuple[bool, T | BaseException | None]) -> bool:
        while not stop.is_set():
            with contextlib.suppress(queue.Full):
                buffer.put(entry, timeout=0.2)  # bounded, so that stop is seen
                return True
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer((False, item)):
                    return
            offer((True, None))
        except BaseException as exc:  # raised in the consumer's thread instead
            offer((True, exc))

    def consume() -> Iterator[T]:
        while True:
            done, value = buffer.get()
            if done:
                if isinstance(value, BaseException):
                    raise value
                return
            yield value  # type: ignore[misc]

    thread = threading.Thread(target=produce, daemon=True, name="read-ahead")
    thread.start()
    try:
        yield consume()
    finally:
        stop.set()
        thread.join()


def verify_video(video: Path, manifest: Manifest, *, frame_count: int | None = None) -> None:
    """Decode every frame of the video back: their count must be frame_count (default:
    the manifest's), their size the raw frames', their pts 0, 1/fps, 2/fps, ...

    Raises:
        EncodeError: the video does not decode, or count, size or timing disagree.
    """
    expected = manifest.frame_count if frame_count is None else frame_count
    count = 0
    try:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            # Frame threads: the check decodes every frame, as fast as the cores allow.
            stream.thread_type = "AUTO"
            if (stream.width, stream.height) != (manifest.width, manifest.height):
                raise EncodeError(f"video is {stream.width}x{stream.height}, "
                                  f"raw is {manifest.width}x{manifest.height}",
                                  reason=FailureReason.VERIFY)
            assert stream.time_base is not None
            step = 1 / (Fraction(manifest.fps).limit_denominator(1001) * stream.time_base)
            for frame in container.decode(stream):
                if frame.pts is None or frame.pts != count * step:
                    raise EncodeError(f"frame {count} has pts {frame.pts}, expected "
                                      f"{count * step} (one frame every 1/{manifest.fps:g} s)",
                                      reason=FailureReason.VERIFY)
                count += 1
    except av.FFmpegError as exc:
        raise EncodeError(f"the encoded video does not decode: {exc}",
                          reason=FailureReason.VERIFY) from exc
    if count != expected:
        raise EncodeError(f"video has {count} frames, the raw episode {expected}",
                          reason=FailureReason.VERIFY)


def video_source(video: Path) -> str | None:
    """The source tag encode_frames wrote into a video, if any."""
    try:
        with av.open(str(video)) as container:
            return container.metadata.get(SOURCE_TAG)
    except av.FFmpegError:
        return None


def publish(storage: Storage, key: str, video: Path) -> None:
    """Put the verified video under its final key in one atomic step."""
    storage.publish_file(key, video)
    logger.info("published %s/%s", storage.url, key)
