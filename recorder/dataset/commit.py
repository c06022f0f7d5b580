"""EpisodeCommitter: an episode's way from the end of its capture to its encode jobs.

    save_episode() --commit()--> camera writers finished (last segments, manifests),
        then the rows, then the episode record: the commit point
    --> _deliver(): its jobs sent to the farm, or encoded inline, once the record is
        where workers read it (remote raw storage: once the upload spool has uploaded it;
        the spool's upload thread then hands the episode back)

With windows (JobPlan.window_frames), each camera's frames also go to the farm while the
episode is captured: the camera's sink hands each window over once its segments are where
workers read them, and its job is sent on the commit thread; the save then sends the rest
of each camera as the part that joins them all. A cleared or interrupted episode's windows
are discarded: the farm client forgets their results, and their published parts are
removed once its manifests, marked interrupted, are stored (a window's worker looks at
the manifest after publishing its part, so either side removes it).

The committer owns the upload spool of remote raw storage (opened, resumed, the sinks of
new episodes), the episodes earlier runs left in it, and, with a farm, the one commit
thread: commit() returns at once, episodes commit and are delivered there in order, and
a failed commit is raised by the next raise_failed(). Inline, commit() commits and
encodes in the caller's thread (the robot waits for inline encodes by definition, and
Ctrl-C reaches them there).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from encoder_worker.jobs import EncodeJob, EncodeResult, parts_folder
from encoder_worker.raw_episode import Manifest
from encoder_worker.raw_layout import RAW_ROOT, record_key, recording_of_record, rows_key
from encoder_worker.raw_sinks import DirectSink
from encoder_worker.storage import Storage, StorageError
from recorder.dataset.episode import CapturedEpisode, RawSink, finish_writers
from recorder.dataset.jobs import JobPlan, encode_inline, video_job_ids
from recorder.dataset.report import EpisodeReport
from recorder.dataset.staging import load_staged
from recorder.farm.client import EncodingFarmClient
from recorder.farm.spool_folder import spool_folder
from recorder.farm.spool_sink import SpoolSink
from recorder.farm.upload_spool import Upload, UploadSpool, when_all_done

logger = logging.getLogger(__name__)


@dataclass
class Delivery:
    """One episode's encode jobs, sent (or encoded inline) once its record is stored."""

    recording: int
    jobs: list[EncodeJob] = field(default_factory=list)
    # None: an earlier run's episode found in the upload spool; its jobs are made from its
    # record, for the videos still missing, when it is delivered.
    report: EpisodeReport | None = None


class EpisodeCommitter:
    """Commits saved episodes in order and delivers their jobs; see the module's doc.

    Raises:
        SpoolBusy: another recorder uploads to this storage from the same spool folder.
    """

    def __init__(self, plan: JobPlan, *, videos: dict[str, str] | None = None,
                 farm: EncodingFarmClient | None, spool_dir: Path,
                 spool_max_bytes: int) -> None:
        """
        Args:
            plan: how episodes become jobs (its raw storage is where they are committed).
            farm: the farm that encodes; None: inline, in the caller's thread.
            spool_dir: where upload spools live (remote raw storage only).
        """
        self.plan = plan
        self.raw: Storage = plan.raw
        self.farm = farm
        self.results: list[EncodeResult] = []  # the inline encodes'
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="commit")
        self._commits: deque[Future[None]] = deque()  # a farm's: raised in order
        self._ready: deque[Delivery] = deque()  # uploaded, not yet delivered
        self._undelivered: set[int] = set()  # recordings saved, their jobs not sent yet
        self._discarded: set[int] = set()  # cleared or interrupted: no more windows sent
        self._said_backlog = False
        self._lock = threading.Lock()
        self._finished = False
        self.spool: UploadSpool | None = None
        self.spooled_keys: list[str] = []  # an earlier run's files: their numbers are taken
        if self.raw.local_path(RAW_ROOT) is None:
            self._open_spool(spool_folder(spool_dir, self.raw.url), spool_max_bytes)

    @property
    def inline(self) -> bool:
        return self.farm is None

    def _open_spool(self, folder: Path, max_bytes: int) -> None:
        """Lock the spool folder and queue what earlier runs left in it, in the background:
        waiting for it would hold the robot as long as a long outage's backlog takes."""
        self.spool = UploadSpool(self.raw, folder, max_bytes=max_bytes)
        try:
            leftovers = self.spool.resume()
        except BaseException:
            self.spool.close(timeout_s=0)
            raise
        self.spooled_keys = leftovers.keys
        # Episodes an earlier run committed but had not uploaded when it stopped: their
        # jobs were never sent.
        for key, upload in leftovers.uploads.items():
            if (recording := recording_of_record(key)) is not None:
                self._undelivered.add(recording)
                self._deliver_when_stored(upload, Delivery(recording))

    def sink(self, prefix: str, *, recording: int, video_key: str) -> RawSink:
        """Where a camera writer of a new episode writes its raw frames (and hands its
        windows over, with JobPlan.window_frames)."""
        on_window = None
        if self.farm is not None and self.plan.window_frames:
            def on_window(window: Manifest) -> None:
                self._thread.submit(self._send_window, recording, video_key, window)
        if self.spool is None:
            return DirectSink(self.raw, prefix, on_window=on_window)
        # Inline encoding reads the episode back at once: its manifest must be stored
        # before the writer's close() returns.
        return SpoolSink(self.spool, prefix, durable_manifest=self.inline, on_window=on_window)

    # -- windows -----------------------------------------------------------------------

    def _send_window(self, recording: int, video_key: str, window: Manifest) -> None:
        with self._lock:
            if recording in self._discarded:
                return
        assert self.farm is not None
        self.farm.submit(self.plan.window_job(recording, video_key, window))
        # Results taken a few at a time: left to the next save, a session's 40 finished
        # windows were read at once, beside the next episode's first slot (measured: late).
        self.farm.poll()

    def discard_windows(self, episode: CapturedEpisode) -> None:
        """The episode was cleared or interrupted (its writers finished, interrupted): no
        more of its windows are sent, the farm forgets them, and their parts are removed
        once its interrupted manifests are stored."""
        if self.farm is None or not self.plan.window_frames:
            return
        recording = episode.recording
        with self._lock:
            self._discarded.add(recording)
        manifests = [s.manifest_upload for s in episode.sinks
                     if isinstance(s, SpoolSink) and s.manifest_upload is not None]

        def remove_parts() -> None:
            with contextlib.suppress(RuntimeError):  # finish() stopped the thread: left
                self._thread.submit(self._remove_windows, recording)
        when_all_done(manifests, remove_parts)

    def _remove_windows(self, recording: int) -> None:
        assert self.farm is not None
        self.farm.discard(recording)
        for output_key in self.plan.videos_of(recording).values():
            folder = parts_folder(output_key)
            try:
                self.plan.dataset.delete_prefix(folder)
            except StorageError as exc:  # the dataset is whole without them
                logger.warning("recording %d was cleared, but its encoded windows at %s/%s "
                               "could not be removed (%s): delete that folder by hand",
                               recording, self.plan.dataset.url, folder, exc)

    # -- committing --------------------------------------------------------------------

    def commit(self, episode: CapturedEpisode, report: EpisodeReport) -> None:
        """Commit a saved episode and deliver its jobs.

        With a farm it returns at once (the commit runs behind the next capture); inline,
        once the episode is encoded.

        Raises:
            WriterFailed, StorageError: inline, the commit failed: what was stored is kept
                under manifests marked interrupted, and the episode is not staged.
        """
        if self.inline:
            self._commit(episode, report)
        else:
            with self._lock:
                self._undelivered.add(episode.recording)
            self._commits.append(self._thread.submit(self._commit, episode, report))

    def raise_failed(self) -> None:
        """Raise the error of the oldest finished commit that failed (once); the commits
        after it go on.

        Raises:
            WriterFailed, StorageError: a commit failed.
        """
        while self._commits and self._commits[0].done():
            self._commits.popleft().result()

    def _commit(self, episode: CapturedEpisode, report: EpisodeReport) -> None:
        """Writers finished, then rows and record; then deliver."""
        started = time.perf_counter()
        manifests = finish_writers(episode.writers.values(), interrupted=False)
        report.frames_recorded = {m.camera: m.frame_count for m in manifests}
        report.raw_bytes = sum(m.stored_bytes for m in manifests)
        videos = self.plan.videos_of(episode.recording)
        rows, record = episode.rows_and_record(videos)
        jobs = self.plan.jobs(episode.recording, videos, frames=episode.frames)
        report.job_ids = video_job_ids(jobs)
        delivery = Delivery(episode.recording, jobs, report)
        if self.spool is None:
            self.raw.put_bytes(rows_key(episode.recording), rows)
            self.raw.put_bytes(record_key(episode.recording), record.model_dump_json().encode())
            report.commit_s = time.perf_counter() - started
            logger.info("recording %d: %d frames saved", episode.recording, report.frames)
            self._deliver(delivery)
            return
        earlier = [s.manifest_upload for s in episode.sinks
                   if isinstance(s, SpoolSink) and s.manifest_upload is not None]
        earlier.append(self.spool.put_bytes(rows_key(episode.recording), rows))
        last = self.spool.put_bytes(record_key(episode.recording),
                                    record.model_dump_json().encode(), after=earlier)
        report.commit_s = time.perf_counter() - started
        logger.info("recording %d: %d frames saved", episode.recording, report.frames)
        if self.inline:
            self.spool.wait_for_upload(last)
            self._deliver(delivery)
            self._deliver_ready()  # an earlier run's episodes uploaded meanwhile
        else:
            self._deliver_when_stored(last, delivery)

    # -- delivering --------------------------------------------------------------------

    def _deliver_when_stored(self, record: Upload, delivery: Delivery) -> None:
        """Deliver once the episode's record (its last file) is uploaded: with a farm at
        once, on the commit thread; inline, at the next commit or at finish(), where the
        caller waits for encodes anyway."""
        def stored() -> None:
            with self._lock:
                self._ready.append(delivery)
                if self.inline or self._finished:
                    return  # finish() delivers it; after finish, the next run does
                self._thread.submit(self._deliver_ready)
        record.when_done(stored)

    def _deliver_ready(self) -> None:
        while True:
            with self._lock:
                if not self._ready:
                    return
                delivery = self._ready.popleft()
            self._deliver(delivery)

    def _deliver(self, delivery: Delivery) -> None:
        """Send the episode's jobs to the farm, or encode them here: the one place jobs
        leave the recorder."""
        jobs = delivery.jobs if delivery.report is not None else self._missing_jobs(delivery)
        started = time.perf_counter()
        if self.farm is not None:
            for job in jobs:
                self.farm.submit(job)
        else:
            results = [encode_inline(job) for job in jobs]
            for result in results:
                if not result.ok:
                    logger.error("recording %d camera %s: %s", result.recording,
                                 result.camera, result.error)
            self.results += results
        if delivery.report is not None:
            spent = time.perf_counter() - started
            if self.farm is not None:
                delivery.report.submission_s += spent
            else:
                delivery.report.inline_encode_s += spent
        if self.farm is not None:
            with self._lock:
                self._undelivered.discard(delivery.recording)
            self._check_backlog(delivery)

    def _check_backlog(self, delivery: Delivery) -> None:
        """Count the episodes recorded and not encoded yet, say so once past the limit."""
        assert self.farm is not None
        self.farm.poll()  # the results that came in since
        with self._lock:
            undelivered = set(self._undelivered)
        backlog = self.farm.backlog_episodes(also=undelivered)
        if delivery.report is not None:
            delivery.report.backlog = backlog
        logger.info("recording %d is with the farm; %d recorded episodes are not encoded yet",
                    delivery.recording, backlog)
        limit = self.plan.farm.backlog_limit
        if backlog > limit and not self._said_backlog:
            self._said_backlog = True
            logger.warning(
                "%d recorded episodes are not encoded yet (more than --backlog-limit %d): the "
                "farm encodes slower than the robot records, and the backlog grows while "
                "recording goes on. Add workers (--video-encoding-workers, or `encoder-worker "
                "run` on another machine), or encode faster (--codec libx264, or a faster "
                "--preset)", backlog, limit)

    def _missing_jobs(self, delivery: Delivery) -> list[EncodeJob]:
        """The jobs of an earlier run's episode whose videos are not published."""
        record = load_staged(self.raw, delivery.recording)
        missing = {key: video for key, video in record.videos.items()
                   if not self.plan.dataset.exists(video)}
        # Its windows, if any, were sent by a run that is gone: its videos are sent whole.
        jobs = self.plan.jobs(delivery.recording, missing, frames=record.length, windows=False)
        logger.warning("recording %d, committed by an earlier run that stopped before it was "
                       "uploaded, is uploaded now: %s its %d missing videos",
                       delivery.recording, "encoding" if self.inline else "sending the farm",
                       len(missing))
        return jobs

    # -- finishing ---------------------------------------------------------------------

    def finish(self, *, timeout_s: float | None = None, deliver: bool = True) -> bool:
        """Wait until every saved episode is committed, uploaded and delivered (uploads
        at most timeout_s). Returns False when raw files were left in the upload spool.

        Args:
            deliver: False (stopping after an error or Ctrl-C): inline, an earlier run's
                episodes uploaded meanwhile are left to `recorder encode-pending`.

        Commit errors stay for raise_failed().

        Raises:
            StorageError: an upload failed permanently; the files stay in the spool.
        """
        if self._finished:
            return self.spool is None
        wait(self._commits)
        uploaded = True
        try:
            if self.spool is not None:
                # Every upload confirmed (and its delivery handed to the commit thread),
                # the threads stopped; this also unlocks the spool folder.
                uploaded = self.spool.close(timeout_s)
                if uploaded:
                    self.spool = None
        finally:
            with self._lock:
                self._finished = True
            if self.inline:
                if deliver:
                    self._deliver_ready()
            else:
                self._thread.submit(self._deliver_ready)
            self._thread.shutdown(wait=True)
        return uploaded
