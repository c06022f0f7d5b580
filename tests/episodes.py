"""Small raw episodes for tests, written with the recorder's own writer."""

from __future__ import annotations

from encoder_worker.jobs import EncodeJob, EncoderOptions
from encoder_worker.raw_episode import Manifest, RawEpisodeWriter
from encoder_worker.raw_frames import Compression
from encoder_worker.raw_layout import raw_prefix
from encoder_worker.raw_sinks import DirectSink
from encoder_worker.storage import Storage
from recorder.capture.cameras.synthetic import SyntheticCamera
from recorder.dataset.layout import Layout, camera_key


def write_episode(storage: Storage, *, episode: int = 0, camera: str = "cam0", frames: int = 30,
                  width: int = 320, height: int = 240, fps: int = 30,
                  segment_frames: int = 10, interrupted: bool = False,
                  pix_fmt: str = "rgb24", compression: Compression = "none") -> Manifest:
    """Synthetic rgb24 frames, stored as pix_fmt with compression."""
    source = SyntheticCamera(camera, width=width, height=height, fps=fps, seed=episode)
    prefix = raw_prefix(recording=episode, camera=camera)
    writer = RawEpisodeWriter(DirectSink(storage, prefix), episode=episode, camera=camera,
                              width=width, height=height, fps=fps, pix_fmt=pix_fmt,
                              input_pix_fmt="rgb24", compression=compression,
                              segment_frames=segment_frames)
    for index in range(frames):
        writer.write(source.read(), index / fps)
    return writer.close(interrupted=interrupted)


def job_for(storage: Storage, manifest: Manifest, *, job_id: str | None = None,
            options: EncoderOptions | None = None) -> EncodeJob:
    options = options or EncoderOptions()
    return EncodeJob(
        job_id=job_id or f"test-ep{manifest.episode}-{manifest.camera}",
        recording=manifest.episode, camera=manifest.camera, raw_storage=storage.url,
        raw_prefix=raw_prefix(recording=manifest.episode, camera=manifest.camera),
        output_storage=storage.url,
        output_key=video_key(manifest.episode, manifest.camera),
        options=options,
    )


def video_key(recording: int, camera: str) -> str:
    """Where the farm publishes the v3.0 video of one recording and camera."""
    return Layout().video_key_of(recording=recording, video_key=camera_key(camera))


def slow_job(storage: Storage, *, frames: int, job_id: str) -> EncodeJob:
    """A 640x480 job slow enough (x264 veryslow) to be caught mid-encode: frames=240 is
    about 8 s on one core here."""
    manifest = write_episode(storage, frames=frames, width=640, height=480, segment_frames=30)
    return job_for(storage, manifest, job_id=job_id,
                   options=EncoderOptions(codec="libx264", preset="veryslow", gop=30))
