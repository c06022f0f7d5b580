"""Episodes whose videos are still missing: the dataset itself is the journal.

A committed manifest means "recorded", a video means "encoded"; whatever has the first and
not the second (a farm whose Redis was lost, a `--no-wait` run, failed jobs) is found here
and encoded again with the same job contract.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from encoder_worker.jobs import EncoderOptions
from encoder_worker.raw_episode import Manifest, manifest_key, raw_prefix
from encoder_worker.storage import Storage

_MANIFEST = re.compile(r"^raw/episode_(\d{6})/([^/]+)/manifest\.json$")


@dataclass
class PendingScan:
    pending: list[tuple[int, str]]  # (episode, camera) with raw frames and no video
    interrupted: list[tuple[int, str]]  # kept raw, never encoded as whole episodes
    done: int  # episodes x cameras that have their video


def scan_pending(raw: Storage, output: Storage, options: EncoderOptions) -> PendingScan:
    """Compare committed raw episodes with published videos."""
    scan = PendingScan(pending=[], interrupted=[], done=0)
    for key in raw.list_keys("raw"):
        match = _MANIFEST.match(key)
        if match is None:
            continue
        episode, camera = int(match.group(1)), match.group(2)
        if output.exists(options.output_key(episode=episode, camera=camera)):
            scan.done += 1
            continue
        manifest = Manifest.model_validate_json(
            raw.get_bytes(manifest_key(raw_prefix(episode=episode, camera=camera))))
        target = scan.interrupted if manifest.interrupted else scan.pending
        target.append((episode, camera))
    return scan
