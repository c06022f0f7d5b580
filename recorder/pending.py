"""`recorder encode-pending`: finish a dataset. The storage itself is the journal.

A committed episode record means "recorded", a published video "encoded", an episode row
counted by info.json "in the dataset". Whatever has the first and not the others (a farm
whose Redis was lost, a `--no-wait` run, failed jobs, a recorder killed between episodes)
is found here, its missing videos encoded with the same job contract, and the dataset
completed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from rich.console import Console

from encoder_worker.jobs import EncodeResult
from encoder_worker.raw_episode import Manifest
from encoder_worker.raw_layout import RAW_ROOT, manifest_of
from encoder_worker.storage import Storage, open_storage
from recorder.dataset import metadata
from recorder.dataset.complete import Completion, complete_dataset, verified_videos
from recorder.dataset.jobs import JobPlan, encode_inline
from recorder.dataset.layout import Layout
from recorder.dataset.pack import video_file_key
from recorder.dataset.staging import load_staged, staged_recordings
from recorder.farm.setup import RecorderError, farm_for
from recorder.progress import progress_display
from recorder.settings import RecorderSettings


@dataclass
class PendingScan:
    pending: list[tuple[int, str, str]] = field(default_factory=list)  # (recording, video
    # feature key, video key) of a staged episode whose video is missing
    unstaged: list[tuple[int, str]] = field(default_factory=list)  # (recording, camera)
    # raw frames with no episode record: interrupted, or cleared by clear_episode_buffer()
    done: int = 0  # videos of staged episodes that are published
    lost: list[tuple[int, str, str]] = field(default_factory=list)  # (recording, feature,
    # packed file) of an episode in the dataset whose packed video file is missing
    lengths: dict[int, int] = field(default_factory=dict)  # recording -> frames, if pending


def scan_pending(raw: Storage, dataset: Storage, *,
                 in_dataset: dict[int, dict[str, str]] | None = None) -> PendingScan:
    """Compare staged episodes with published videos; list raw frames of no episode.

    Args:
        in_dataset: recording -> feature -> video file, of episodes in the dataset (their
            rows say where their videos are; `recorder pack` moves them).
    """
    scan = PendingScan()
    staged = set()
    for recording in staged_recordings(raw):
        staged.add(recording)
        episode = load_staged(raw, recording)
        where = (in_dataset or {}).get(recording, {})
        for key, video in sorted(episode.videos.items()):
            actual = where.get(key, video)
            if dataset.exists(actual):
                scan.done += 1
            elif actual == video:
                scan.pending.append((recording, key, video))
                scan.lengths[recording] = episode.length
            else:  # a packed file: re-encoding one episode cannot restore it
                scan.lost.append((recording, key, actual))
    for key in raw.list_keys(RAW_ROOT):
        found = manifest_of(key)
        if found is not None and found[0] not in staged:
            manifest = Manifest.model_validate_json(raw.get_bytes(key))
            scan.unstaged.append((manifest.episode, manifest.camera))
    return scan


def videos_in_dataset(dataset: Storage, info: dict) -> dict[int, dict[str, str]]:
    """recording -> video feature -> the video file its episode row names (v3.0)."""
    if info["codebase_version"] != "v3.0":
        return {}  # v2.1 is never packed: its episodes' videos are where they were made
    rows = metadata.read_episode_rows(dataset, "v3.0", info["total_episodes"])
    return {row[metadata.RECORDING_COLUMN]: {key: video_file_key(row, key)
                                             for key in metadata.video_keys(info["features"])}
            for row in rows if row.get(metadata.RECORDING_COLUMN) is not None}


def encode_pending(settings: RecorderSettings, *, console: Console,
                   dry_run: bool = False) -> tuple[list[EncodeResult], Completion | None]:
    """Encode every missing video of a recorded episode, then complete the dataset.

    Raises:
        RecorderError, StorageError: storage or farm cannot be reached.
        DatasetError: the dataset is of another version or damaged.
    """
    raw = open_storage(settings.raw_storage_url)
    dataset = open_storage(settings.output_storage_url)
    info = metadata.read_info(dataset)
    if info is None:
        raise RecorderError(f"{dataset.url} holds no dataset (no meta/info.json): check "
                            "--output-dir/--repo-id or --storage")
    scan = scan_pending(raw, dataset, in_dataset=videos_in_dataset(dataset, info))
    console.print(f"{len(scan.pending)} videos to encode, {scan.done} already there; "
                  f"raw episodes in {raw.url}")
    for recording, key, video in scan.lost:
        console.print(f"recording {recording} {key}: its packed video {video} is missing; "
                      "restore it from a backup (one episode cannot be re-encoded into a "
                      "packed file)")
    for recording, camera in scan.unstaged:
        console.print(f"recording {recording} camera {camera} was interrupted while "
                      "recording: its frames are kept but it is not encoded")
    if dry_run:
        return [], None
    results: list[EncodeResult] = []
    if scan.pending:
        sizes = {key: (info["features"][key]["shape"][1], info["features"][key]["shape"][0])
                 for key in metadata.video_keys(info["features"])}
        plan = JobPlan(run_id="pending-" + uuid.uuid4().hex[:8], raw=raw, dataset=dataset,
                       layout=Layout(info["codebase_version"]),
                       encoder=settings.encoder_options(), farm=settings.farm_options(),
                       fps=info["fps"], frame_sizes=sizes)
        missing: dict[int, dict[str, str]] = {}
        for recording, key, video in scan.pending:
            missing.setdefault(recording, {})[key] = video
        jobs = [job for recording, videos in missing.items()
                for job in plan.jobs(recording, videos, frames=scan.lengths[recording])]
        with farm_for(settings, raw_url=settings.raw_storage_url,
                      output_url=settings.output_storage_url) as farm, \
                progress_display(console) as progress:
            task = progress.add_task("encoding", total=len(scan.pending))
            if farm is None:
                for job in jobs:
                    results.append(encode_inline(job))
                    progress.advance(task)
            else:
                for job in jobs:  # a long episode's parts, encoded at once
                    farm.submit(job)
                results = farm.wait(on_result=lambda _: progress.advance(task))
    # The videos encoded now were verified by their encodes: not downloaded again.
    return results, complete_dataset(dataset, raw, verified=verified_videos(results))
