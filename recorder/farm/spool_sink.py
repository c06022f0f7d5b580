"""SpoolSink: a camera writer's raw segments and manifest, written into the upload spool."""

from __future__ import annotations

import os
from typing import BinaryIO

from encoder_worker.raw_episode import Manifest
from encoder_worker.raw_layout import MANIFEST_NAME, manifest_key, partial_name
from encoder_worker.raw_sinks import WindowCallback
from recorder.farm.upload_spool import Upload, UploadSpool, when_all_done


class SpoolSink:
    """SegmentSink of one raw episode: segments into the spool, then uploaded in order."""

    def __init__(self, spool: UploadSpool, prefix: str, *, durable_manifest: bool,
                 on_window: WindowCallback | None = None) -> None:
        self.spool = spool
        self.prefix = prefix
        self.on_window = on_window
        # True: commit_manifest returns only once the manifest is stored (inline encoding
        # reads the episode back right away).
        self.durable_manifest = durable_manifest
        self._dir = spool.keys_dir / prefix
        self._dir.mkdir(parents=True, exist_ok=True)
        self._segments: list[Upload] = []
        self.manifest_upload: Upload | None = None

    def open_segment(self, name: str) -> BinaryIO:
        return open(self._dir / partial_name(name), "wb")

    def commit_segment(self, name: str, file: BinaryIO) -> None:
        # No fsync here: it stalls capture on a busy host, and most segments leave the
        # spool within seconds. The uploader syncs a file once it has to wait.
        file.close()
        path = self._dir / name
        os.replace(file.name, path)
        self._segments.append(self.spool.enqueue(f"{self.prefix}/{name}", path))

    def commit_window(self, window: Manifest) -> None:
        """Hand the window on once its segments are uploaded (from the upload thread)."""
        on_window = self.on_window
        if on_window is None:
            return
        keys = {f"{self.prefix}/{s.name}" for s in window.segments}
        when_all_done([u for u in self._segments if u.key in keys], lambda: on_window(window))

    def commit_manifest(self, manifest: Manifest) -> None:
        path = self._dir / MANIFEST_NAME
        tmp = path.with_name(partial_name(MANIFEST_NAME))
        tmp.write_bytes(manifest.model_dump_json().encode())
        os.replace(tmp, path)
        upload = self.spool.enqueue(manifest_key(self.prefix), path, after=self._segments)
        self.manifest_upload = upload
        if self.durable_manifest:
            self.spool.wait_for_upload(upload)
