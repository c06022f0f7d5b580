"""Long episodes encoded as parts by several workers at once, then joined into one video.

A part job (EncodeJob.part) encodes its range of the raw episode's frames to an MP4 of
its own, decodes it back and publishes it atomically under PARTS_ROOT in the output
storage; an encode starts with a keyframe, so every part does. Then it looks in the
storage whether every part of the video is there: the last part to be published always
finds them all. It joins them under the video's join lease (ledger.JobLedger.join_lock):

- already joined (the video is there, tagged with this raw episode): nothing to do, so
  a redelivered part job, or a second part that finished at the same moment and waited
  for the lease, publishes nothing;
- else the parts are remuxed with stream copy (no re-encode: lossless and fast), each
  part's packets shifted by the real durations of the parts before it, the result
  checked and published under the job's output_key, then the parts are deleted.

Windows (PartSpec.window_frames): an episode's frames are also encoded while it is
recorded, a window at a time (raw_episode.RawEpisodeWriter sends each once the frame after
it is written). Such a job carries the window's copy of the manifest, as the episode's is
not written yet; the part sent when the episode is saved encodes the rest. The parts'
count is known only from the saved manifest (jobs.window_ranges): a window finished
before that publishes its part and leaves the join to the last part. Each part is tagged
with the digest of its frames' segments (Manifest.frames_digest), which the join checks
against the saved manifest. A window of an episode that was cleared or interrupted finds
its manifest marked so and publishes nothing (Status.DISCARDED); the recorder removes
the parts published before that (recorder/dataset/commit.py).

A worker that dies mid-part or mid-join: its part job's lease lapses and the job is sent
again; the new run finds its part published (or the video) and goes on to the join. The
join lease lapses too, ttl_s after its dead holder's last heartbeat.

Verification: every frame is decoded in its part, on the part's worker (so in parallel),
before the part is published; stream copy then moves those very packets. The joined file
is checked packet by packet (one per frame, the manifest's count, pts exactly one frame
apart, dts increasing, a keyframe and identical codec parameters at every part start)
and decoded from every part start. Decoding the whole joined video again was measured:
7.4 s for 60 s at 640x480 on one core, on the one worker that joins after the last part
(8 parts on 1 worker: 69.6 s against 58.9 s unsplit), which alone would break the goal
of 1.2 x (one worker's time / K).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av

from encoder_worker.encode import (
    SOURCE_PREFIX,
    SOURCE_TAG,
    EncodeError,
    PauseCallback,
    ProgressCallback,
    encode_and_publish,
    publish,
    published_copy,
    timed_result,
    video_source,
)
from encoder_worker.jobs import (
    EncodeJob,
    EncodeResult,
    FailureReason,
    PartSpec,
    Status,
    parts_folder,
    window_ranges,
)
from encoder_worker.ledger import JobLease
from encoder_worker.raw_episode import Manifest, ManifestMissing, RawEpisodeError, RawEpisodeReader
from encoder_worker.storage import KeyNotFound, Storage, open_storage

logger = logging.getLogger(__name__)

# Parts that do not join into one verified video fail the job with this reason.
JOIN = FailureReason.VERIFY
_RANGE = re.compile(r" frames=(\d+)\+(\d+)$")


def parts_prefix(job: EncodeJob) -> str:
    """The folder of the parts of job's video (output keys are unique per storage)."""
    return parts_folder(job.output_key)


def part_key(job: EncodeJob, index: int) -> str:
    assert job.part is not None
    if job.part.window_frames is not None:
        return f"{parts_prefix(job)}/window-{index:04d}.mp4"
    return f"{parts_prefix(job)}/part-{index:03d}-of-{job.part.count:03d}.mp4"


def part_digest(reader: RawEpisodeReader, part: PartSpec) -> str:
    """What a part's source tag names: its frames' segments for a window's part (the same
    in the window's manifest and the saved one), else the whole manifest."""
    if part.window_frames is None:
        return reader.manifest_digest
    return reader.manifest.frames_digest(part.first_frame, part.frame_count)


def part_source(digest: str, part: PartSpec) -> str:
    """A part's source tag: the raw manifest's digest and its frame range."""
    return f"{SOURCE_PREFIX}{digest} frames={part.first_frame}+{part.frame_count}"


def video_id(job: EncodeJob) -> str:
    """The id of the video a part belongs to, for its join lease: the same for every part,
    every copy of a job and every recorder run that encodes it (pass the job as sent:
    workers may map its storage to other local paths)."""
    return hashlib.sha256(f"{job.output_storage}\n{job.output_key}".encode()).hexdigest()[:32]


def encode_part_and_join(job: EncodeJob, *, join_lock: JobLease, scratch_dir: Path | None = None,
                         before_publish: Callable[[], None] | None = None,
                         progress: ProgressCallback | None = None,
                         pause: PauseCallback | None = None) -> EncodeResult:
    """Encode job's part, then join the video if every part is there.

    As encode_job: data and codec failures come back as a FAILED result, storage errors
    and LeaseLost are raised for the caller to retry (the part is then found published).
    """
    assert job.part is not None
    part = job.part
    stage = f"part {part.index + 1} of {part.count}"
    with timed_result(job) as result:
        try:
            _encode_part(result, job, scratch_dir=scratch_dir, before_publish=before_publish,
                         progress=progress, pause=pause)
            if result.status is Status.DISCARDED:
                return result
            stage = "the join"
            t0 = time.perf_counter()
            result.joined = join_parts(job, lock=join_lock, scratch_dir=scratch_dir)
            result.timings.join_s = time.perf_counter() - t0
        except (RawEpisodeError, EncodeError, av.FFmpegError) as exc:
            exc.add_note(f"{stage} of {job.output_key}")
            raise
    return result


def _encode_part(result: EncodeResult, job: EncodeJob, *, scratch_dir: Path | None,
                 before_publish: Callable[[], None] | None,
                 progress: ProgressCallback | None, pause: PauseCallback | None) -> None:
    assert job.part is not None
    part = job.part
    if pause is not None:
        pause()  # before the codec's start (memory, threads) and the first reads
    output = open_storage(job.output_storage)
    raw = open_storage(job.raw_storage)
    saved = saved_episode(job)
    if saved is not None and saved.manifest.interrupted:
        if job.window_manifest is None:
            raise RawEpisodeError(f"{job.raw_prefix} was interrupted while recording; it is "
                                  "not encoded as a complete episode")
        _discard(result, job, output)
        return
    reader = saved if job.window_manifest is None else RawEpisodeReader(
        raw, job.raw_prefix, window=job.window_manifest)
    assert reader is not None  # saved_episode raises for a job without a window
    manifest = reader.manifest
    if part.first_frame + part.frame_count > manifest.frame_count:
        raise RawEpisodeError(
            f"frames {part.first_frame}..{part.first_frame + part.frame_count - 1} are beyond "
            f"the raw episode's {manifest.frame_count} frames")
    key = part_key(job, part.index)
    source = part_source(part_digest(reader, part), part)
    result.frames = part.frame_count
    with tempfile.TemporaryDirectory(prefix="part-", dir=scratch_dir) as tmp:
        # A redelivered part job: the video (joined already) or its part may be there.
        done = None if saved is None else published_copy(
            output, job.output_key, SOURCE_PREFIX + saved.manifest_digest,
            Path(tmp) / "video.mp4")
        if done is not None:
            remove_parts(output, job)  # what a joiner that died after publishing left
        else:
            # A part left by another recording under this number is encoded again over.
            done = published_copy(output, key, source, Path(tmp) / "part.mp4",
                                  replace_other=True)
        if done is not None:
            result.status = Status.ALREADY_DONE
            result.bytes = done.stat().st_size
            return
        encode_and_publish(result, reader, job, output, key, Path(tmp) / "part.mp4",
                           source=source, progress=progress, pause=pause,
                           before_publish=before_publish, first_frame=part.first_frame,
                           frame_count=part.frame_count)


def saved_episode(job: EncodeJob) -> RawEpisodeReader | None:
    """The raw episode as saved (its manifest); None for a window's job while the episode
    is still being recorded.

    Raises:
        ManifestMissing: not a window's job, and no manifest.
    """
    try:
        return RawEpisodeReader(open_storage(job.raw_storage), job.raw_prefix)
    except ManifestMissing:
        if job.window_manifest is None:
            raise
        return None


def _discard(result: EncodeResult, job: EncodeJob, output: Storage) -> None:
    """The window's episode was cleared or interrupted: keep none of its parts."""
    remove_parts(output, job)
    result.status = Status.DISCARDED
    result.frames = 0
    logger.info("job %s: %s was cleared or interrupted while recording; its window is not "
                "kept", job.job_id, job.raw_prefix)


def part_plan(job: EncodeJob, manifest: Manifest, digest: str) -> list[tuple[str, str]]:
    """(key, digest its source tag names) of each part of job's video, in order.

    Raises:
        EncodeError: the job's part count disagrees with the saved episode's length.
    """
    part = job.part
    assert part is not None
    if part.window_frames is None:
        assert part.count is not None
        return [(part_key(job, index), digest) for index in range(part.count)]
    ranges = window_ranges(manifest.frame_count, part.window_frames)
    if part.count not in (None, len(ranges)) or part.index >= len(ranges):
        raise EncodeError(f"part {part.index + 1} of {part.count} does not fit the "
                          f"{len(ranges)} windows of {manifest.frame_count} frames", reason=JOIN)
    return [(part_key(job, index), manifest.frames_digest(first, count))
            for index, (first, count) in enumerate(ranges)]


def frame_ticks(stream: av.VideoStream, fps: float) -> int:
    """One frame's duration in stream's time base; EncodeError if not a whole number."""
    rate = Fraction(fps).limit_denominator(1001)
    assert stream.time_base is not None
    ticks = 1 / (rate * stream.time_base)
    if ticks.denominator != 1:
        raise EncodeError(f"one frame at {fps} fps is {ticks} ticks of the video's time base "
                          f"{stream.time_base}, not a whole number: parts cannot be joined")
    return int(ticks)


def join_parts(job: EncodeJob, *, lock: JobLease, scratch_dir: Path | None = None) -> bool:
    """Join the video's parts if all are there and it is not joined yet; True if this
    call published it. Idempotent: any number of calls, at once or later, publish once."""
    assert job.part is not None
    output = open_storage(job.output_storage)
    reader = saved_episode(job)
    if reader is None:
        return False  # a window finished before its episode was saved: the save's part joins
    if reader.manifest.interrupted:  # cleared after this window was published
        remove_parts(output, job)
        return False
    plan = part_plan(job, reader.manifest, reader.manifest_digest)
    keys = [key for key, _ in plan]
    if not all(output.exists(key) for key in keys):
        return False  # the last part to be published joins
    source = SOURCE_PREFIX + reader.manifest_digest
    # Waits out a dead joiner's lease (ttl_s after its last heartbeat).
    if not lock.acquire(wait_s=lock.ttl_s * 1.5):
        logger.info("job %s: another worker is joining %s", job.job_id, job.output_key)
        return False
    try:
        with tempfile.TemporaryDirectory(prefix="join-", dir=scratch_dir) as tmp:
            if published_copy(output, job.output_key, source, Path(tmp) / "video.mp4") is not None:
                remove_parts(output, job)  # joined already; a join that died left them
                return False
            paths = []
            for index, key in enumerate(keys):
                path = Path(tmp) / f"part-{index:03d}.mp4"
                try:
                    output.download_file(key, path)
                except KeyNotFound:  # a joiner whose lease lapsed joined meanwhile?
                    if published_copy(output, job.output_key, source, Path(tmp) / "v.mp4"):
                        return False
                    raise
                paths.append(path)
            video = Path(tmp) / "joined.mp4"
            starts = join_videos(paths, video, manifest=reader.manifest,
                                 digest=reader.manifest_digest,
                                 part_digests=[digest for _, digest in plan])
            verify_joined(video, reader.manifest, starts)
            lock.check()  # a joiner that lost its lease must not publish over another
            publish(output, job.output_key, video)
        remove_parts(output, job)
    finally:
        lock.release()
    logger.info("job %s joined %d parts into %s", job.job_id, len(keys), job.output_key)
    return True


def join_videos(parts: list[Path], video: Path, *, manifest: Manifest, digest: str,
                part_digests: list[str] | None = None) -> list[int]:
    """Remux parts, in order, into video with stream copy; returns each part's first frame.

    Each part's timestamps are shifted by the real durations of the parts before it (its
    packets' pts + duration). The parts' source tags must name this raw episode (digest,
    or each part's part_digests entry) and tile its frames in order; the result is tagged
    as a whole-episode encode.

    Raises:
        EncodeError: the parts do not fit together.
    """
    starts: list[int] = []
    expected_first = 0
    with av.open(str(video), mode="w", format="mp4") as out:
        out.metadata[SOURCE_TAG] = SOURCE_PREFIX + digest
        target: av.VideoStream | None = None
        offset = 0
        last_dts: int | None = None
        for index, path in enumerate(parts):
            first, count = _part_range(
                path, digest if part_digests is None else part_digests[index], index)
            if first != expected_first:
                raise EncodeError(f"part {index + 1} starts at frame {first}, expected "
                                  f"{expected_first}", reason=JOIN)
            expected_first = first + count
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                ticks = frame_ticks(stream, manifest.fps)
                # Packets are copied as they are: every part must fit the first's header.
                params = (stream.codec_context.extradata, stream.time_base, stream.width,
                          stream.height)
                if target is None:
                    target = out.add_stream_from_template(stream, opaque=True)
                    first_params = params
                elif params != first_params:
                    raise EncodeError(f"part {index + 1} was encoded with other codec "
                                      "parameters than part 1; it cannot be stream-copied",
                                      reason=JOIN)
                packets = [p for p in container.demux(stream) if p.dts is not None]
                if len(packets) != count or not packets[0].is_keyframe:
                    raise EncodeError(f"part {index + 1} has {len(packets)} packets for "
                                      f"{count} frames, or does not start on a keyframe",
                                      reason=JOIN)
                start = min(p.pts for p in packets if p.pts is not None)
                end = max((p.pts or 0) + (p.duration or ticks) for p in packets)
                starts.append(first)
                for packet in packets:
                    assert packet.pts is not None and packet.dts is not None
                    packet.pts += offset - start
                    packet.dts += offset - start
                    if last_dts is not None and packet.dts <= last_dts:
                        raise EncodeError(
                            f"part {index + 1}: dts {packet.dts} would not increase after "
                            f"{last_dts} (a codec that reorders frames differently in each "
                            "part?); the parts are not joined", reason=JOIN)
                    last_dts = packet.dts
                    packet.stream = target
                    out.mux(packet)
                offset += end - start
    if expected_first != manifest.frame_count:
        raise EncodeError(f"the parts hold {expected_first} frames, the raw episode "
                          f"{manifest.frame_count}", reason=JOIN)
    return starts


def _part_range(path: Path, digest: str, index: int) -> tuple[int, int]:
    source = video_source(path) or ""
    match = _RANGE.search(source)
    if not source.startswith(SOURCE_PREFIX + digest + " ") or match is None:
        raise EncodeError(f"part {index + 1} is not a part of this raw episode ({source!r})",
                          reason=JOIN)
    return int(match.group(1)), int(match.group(2))


def verify_joined(video: Path, manifest: Manifest, starts: list[int]) -> None:
    """Check the joined video: one packet per frame, the manifest's count, pts exactly one
    frame apart, and that it decodes from every part start (starts: their first frames)."""
    try:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            ticks = frame_ticks(stream, manifest.fps)
            pts = sorted(p.pts for p in container.demux(stream)
                         if p.dts is not None and p.pts is not None)
            if len(pts) != manifest.frame_count:
                raise EncodeError(f"the joined video has {len(pts)} frames, the raw episode "
                                  f"{manifest.frame_count}", reason=JOIN)
            if pts != [pts[0] + i * ticks for i in range(len(pts))]:
                wrong = next(i for i in range(1, len(pts)) if pts[i] - pts[i - 1] != ticks)
                raise EncodeError(f"joined frames {wrong - 1} and {wrong} are "
                                  f"{pts[wrong] - pts[wrong - 1]} ticks apart, not {ticks}",
                                  reason=JOIN)
            for first in starts:
                want = pts[0] + first * ticks
                container.seek(want, stream=stream, backward=True, any_frame=False)
                frame = next(container.decode(stream), None)
                if frame is None or frame.pts != want:
                    raise EncodeError(f"the joined video does not decode from the part that "
                                      f"starts at frame {first} (pts {want}: got "
                                      f"{None if frame is None else frame.pts})",
                                      reason=JOIN)
    except av.FFmpegError as exc:
        raise EncodeError(f"the joined video does not decode: {exc}", reason=JOIN) from exc


def remove_parts(storage: Storage, job: EncodeJob) -> None:
    """Delete the parts of job's video (whatever their count), and their folder."""
    prefix = parts_prefix(job)
    for key in storage.list_keys(prefix):
        storage.delete(key)
    folder = storage.local_path(prefix)
    if folder is not None:
        # Only the video's own folder: the ones above may be getting another's parts now.
        # A local folder's own tidying, not a storage call: one not empty stays.
        with contextlib.suppress(OSError):
            folder.rmdir()
