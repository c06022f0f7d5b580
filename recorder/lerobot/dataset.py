"""The dataset object `lerobot-record` creates, backed by a FarmDataset.

`recorder lerobot-record` puts a FarmDatasets in place of LeRobotDataset in LeRobot's
record script (compat.py). The script then records as always; what it does with its
dataset (research: shared/research/lerobot-record.md) lands here:

    LeRobotDataset.create(...) / .resume(...)   -> FarmDatasets.create / .resume
    add_frame, clear_episode_buffer             -> FarmDataset's, unchanged
    save_episode()                              -> returns once the episode is handed to
                                                   the commit thread (the farm encodes)
    finalize() (VideoEncodingManager, record's finally; called twice, also while an
        exception is raised)                    -> waits for the videos, completes the
                                                   dataset; after a failure, see finalize()
    push_to_hub(tags=, private=)                -> LeRobot's own, once every video is in
    fps, features, meta.robot_type, num_episodes, root, writer, len()
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from encoder_worker.jobs import EncoderOptions
from encoder_worker.storage import StorageError, open_storage
from recorder.capture.raw_writer import WriterFailed
from recorder.dataset import metadata
from recorder.dataset.complete import Completion
from recorder.dataset.layout import DEFAULT_FEATURES
from recorder.dataset.options import DatasetOptions
from recorder.dataset.report import EpisodeReport
from recorder.dataset.writer import FarmDataset
from recorder.farm.client import EncodingFarmClient
from recorder.farm.options import FarmOptions
from recorder.farm.setup import RecorderError

logger = logging.getLogger(__name__)

# LeRobot's names for PyAV's encoders (lerobot/configs/video.py's VALID_VIDEO_CODECS).
LEROBOT_CODECS = {"h264": "libx264", "hevc": "libx265"}
# Files of a dataset folder that belong to the dataset (not raw frames, not the farm's).
PUSHED_PATTERNS = ["meta/*", "data/*", "videos/*"]
# Errors of the farm itself: after them nothing more is waited for.
FARM_ERRORS = (RecorderError, StorageError, WriterFailed, metadata.DatasetError)


class PushRefused(Exception):
    """push_to_hub cannot push this dataset now; the message says why and what to do."""


def encoder_from_lerobot(rgb_encoder: Any) -> EncoderOptions:
    """LeRobot's RGBEncoderConfig (--dataset.rgb_encoder.*) as the farm's EncoderOptions."""
    codec = LEROBOT_CODECS.get(rgb_encoder.vcodec, rgb_encoder.vcodec)
    extra = {str(k): str(v) for k, v in (rgb_encoder.extra_options or {}).items()}
    if rgb_encoder.fast_decode:  # LeRobot passes it to the codec as these options
        if codec == "libsvtav1":
            extra.setdefault("svtav1-params", f"fast-decode={rgb_encoder.fast_decode}")
        elif codec in ("libx264", "libx265"):
            extra.setdefault("tune", "fastdecode")
    return EncoderOptions(codec=codec, crf=rgb_encoder.crf, gop=rgb_encoder.g,
                          preset=None if rgb_encoder.preset is None else str(rgb_encoder.preset),
                          pix_fmt=rgb_encoder.pix_fmt, extra=extra)


@dataclass
class FarmRecording:
    """What `recorder lerobot-record` decided before LeRobot's script runs."""

    farm: EncodingFarmClient
    dataset: DatasetOptions  # storage URLs already resolved: raw and output
    farm_options: FarmOptions
    encoder_overrides: dict[str, Any]  # EncoderOptions fields the farm's flags set
    datasets: list[FarmLeRobotDataset] = field(default_factory=list)
    failure: BaseException | None = None  # what stopped the recording, if anything

    def encoder(self, rgb_encoder: Any | None) -> EncoderOptions:
        base = EncoderOptions() if rgb_encoder is None else encoder_from_lerobot(rgb_encoder)
        return base.model_copy(update=self.encoder_overrides)


class FarmDatasets:
    """Stands where lerobot-record looks up LeRobotDataset: create() and resume()."""

    def __init__(self, recording: FarmRecording) -> None:
        self.recording = recording

    def create(self, repo_id: str, fps: int, features: dict[str, dict], root: str | Path,
               robot_type: str | None = None, use_videos: bool = True,
               rgb_encoder: Any = None, **_unused: Any) -> FarmLeRobotDataset:
        """LeRobotDataset.create's arguments; the encoder and image-writer ones that mean
        nothing on the farm were said by the command."""
        if not use_videos:
            raise ValueError("--dataset.video=false stores camera frames as images; the farm "
                             "records videos: leave --dataset.video at true")
        return self._open(repo_id, Path(root), fps=fps, features=features,
                          robot_type=robot_type, rgb_encoder=rgb_encoder, resumed=False)

    def resume(self, repo_id: str, root: str | Path | None = None, rgb_encoder: Any = None,
               **_unused: Any) -> FarmLeRobotDataset:
        """LeRobotDataset.resume's arguments: the dataset's own fps and features."""
        if root is None:
            raise ValueError("--resume=true needs --dataset.root: the folder of the dataset")
        info = metadata.read_info(open_storage(self.recording.dataset.output_storage_url))
        if info is None:
            raise ValueError(f"--resume=true: {self.recording.dataset.output_storage_url} "
                             "holds no dataset (no meta/info.json); leave out --resume to "
                             "create one")
        return self._open(repo_id, Path(root), fps=info["fps"], features=info["features"],
                          robot_type=info.get("robot_type"), rgb_encoder=rgb_encoder,
                          resumed=True)

    def _open(self, repo_id: str, root: Path, *, fps: int, features: dict[str, dict],
              robot_type: str | None, rgb_encoder: Any, resumed: bool) -> FarmLeRobotDataset:
        recording = self.recording
        dataset = FarmDataset(fps=fps, features=features, robot_type=robot_type,
                              options=recording.dataset, encoder=recording.encoder(rgb_encoder),
                              farm_options=recording.farm_options, farm=recording.farm)
        opened = FarmLeRobotDataset(dataset, recording, repo_id=repo_id, root=root,
                                    resumed=resumed)
        recording.datasets.append(opened)
        return opened


@dataclass
class FarmMeta:
    """The part of LeRobotDatasetMetadata that lerobot-record reads (its --resume check)."""

    robot_type: str | None
    fps: int
    features: dict[str, dict]
    total_episodes: int
    total_frames: int


def lerobot_features(features: Mapping[str, dict]) -> dict[str, dict]:
    """Features as LeRobotDataset.features has them: LeRobot's default ones added, shapes
    as tuples (its --resume check compares them with the robot's)."""
    return {key: {**feature, "shape": tuple(feature["shape"])}
            for key, feature in {**features, **DEFAULT_FEATURES}.items()}


class FarmLeRobotDataset:
    """A LeRobotDataset to lerobot-record's eyes, recorded through the farm."""

    def __init__(self, dataset: FarmDataset, recording: FarmRecording, *, repo_id: str,
                 root: Path, resumed: bool) -> None:
        self.dataset = dataset
        self.recording = recording
        self.repo_id = repo_id
        self.root = root
        self.writer = None  # no LeRobot writer: VideoEncodingManager has nothing to clean up
        info = metadata.read_info(dataset.storage) or {}
        self.meta = FarmMeta(robot_type=dataset.robot_type, fps=dataset.fps,
                             features=lerobot_features(info.get("features", dataset.features)),
                             total_episodes=int(info.get("total_episodes", 0)),
                             total_frames=int(info.get("total_frames", 0)))
        self.completion: Completion | None = None
        self._finalized = False
        if resumed:
            logger.info("appending to %s: %d episodes there", dataset.storage.url,
                        self.meta.total_episodes)

    @property
    def fps(self) -> int:
        return self.meta.fps

    @property
    def features(self) -> dict[str, dict]:
        return self.meta.features

    @property
    def num_episodes(self) -> int:
        """Episodes in the dataset before this run, and saved in it."""
        return self.meta.total_episodes + len(self.dataset.episodes)

    def __len__(self) -> int:
        """Frames of those episodes (lerobot-record's `if dataset:`)."""
        return self.meta.total_frames + sum(e.frames for e in self.dataset.episodes)

    def add_frame(self, frame: dict[str, Any]) -> None:
        self.dataset.add_frame(frame)

    def save_episode(self, episode_data: Any = None, parallel_encoding: bool = True
                     ) -> EpisodeReport:
        if episode_data is not None:
            raise ValueError("save_episode(episode_data=...) is not supported by the farm")
        return self.dataset.save_episode()

    def clear_episode_buffer(self, delete_images: bool = True) -> None:
        """Re-record: the episode's frames stay as raw data marked interrupted."""
        self.dataset.clear_episode_buffer()

    def finalize(self) -> None:
        """Wait for every video and complete the dataset (once; record calls it twice).

        Called while an exception is raised (LeRobot's script finalizes in `finally`):
        the episode in progress is kept as raw data marked interrupted and never joins.
        After Ctrl-C or an error of the farm itself, nothing more is waited for (as in
        `recorder record`; `recorder encode-pending` completes the dataset later). After a
        robot's or a camera's failure, the saved episodes are finished and join, as they
        do with LeRobot's own writer.
        """
        if self._finalized:
            return
        self._finalized = True
        failure = sys.exc_info()[1]
        if failure is not None:
            self.recording.failure = failure
            if isinstance(failure, (KeyboardInterrupt, *FARM_ERRORS)):
                self.dataset.abort()
                return
            logger.error("the recording stopped: %s: %s; the episode in progress is kept as "
                         "raw data marked interrupted, the %d saved episodes are finished",
                         type(failure).__name__, failure, len(self.dataset.episodes))
        self.completion = self.dataset.finalize()

    def push_to_hub(self, tags: list[str] | None = None, private: bool | None = None,
                    **options: Any) -> None:
        """Push the finished dataset with LeRobot's own push_to_hub (raw frames and the
        farm's files stay behind).

        Raises:
            PushRefused: videos are missing.
        """
        if self.recording.failure is not None:
            # Raised here, it would take the place of the failure the script is raising.
            logger.warning("not pushing to the Hugging Face Hub: the recording stopped "
                           "with an error")
            return
        if self.completion is None or not self.completion.complete:
            waiting = self.dataset.waiting_note()
            raise PushRefused(f"not pushing to the Hugging Face Hub: not every episode is in "
                              f"the dataset yet ({waiting}); run `recorder encode-pending` with "
                              "the same storage, then push the dataset")
        from lerobot.datasets.lerobot_dataset import LeRobotDataset  # the command checked it

        finished = LeRobotDataset(self.repo_id, root=self.root, video_backend="pyav")
        logger.info("pushing %s (%d episodes) to the Hugging Face Hub as %s", self.root,
                    finished.num_episodes, self.repo_id)
        finished.push_to_hub(tags=tags, private=private,
                             allow_patterns=options.pop("allow_patterns", PUSHED_PATTERNS),
                             **options)
