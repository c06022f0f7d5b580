"""`recorder lerobot-record`: LeRobot's lerobot-record, with the farm as its encoder.

    recorder lerobot-record --robot.type=so101_follower --robot.port=/dev/ttyACM0 ...
    recorder lerobot-record --broker redis://farm-host:6379/0 --storage s3://bucket/raw ...

Every flag of lerobot-record is passed to it unchanged (its robots, teleoperators,
cameras, keyboard controls, --resume, --dataset.push_to_hub, plugins). The farm's own
flags (--broker, --storage, --video-encoding-workers, ...; FARM_* in the environment) are
taken out first: LeRobot never sees them. Before the robot connects, the farm is checked
(or the zero-config one started); then LeRobot's script runs with FarmDatasets where it
looks for LeRobotDataset, so every save_episode() returns as soon as the episode is handed
to the farm.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from encoder_worker.cli_settings import add_settings_arguments, settings_from_args
from encoder_worker.jobs import EncoderOptions
from encoder_worker.storage import StorageError, open_storage
from recorder.capture.priority import PriorityRefused, raised_priority
from recorder.capture.raw_writer import WriterFailed
from recorder.dataset.metadata import DatasetError
from recorder.dataset.options import DatasetOptions
from recorder.farm.setup import RecorderError, farm_for
from recorder.interrupts import interrupt_on_sigterm
from recorder.lerobot.compat import LeRobotUnsupported, check_lerobot
from recorder.lerobot.dataset import FarmDatasets, FarmRecording, PushRefused
from recorder.settings import RecorderSettings

logger = logging.getLogger(__name__)

PROG = "recorder lerobot-record"
# The farm's own flags: where it stores and encodes, and how the capture runs. The
# recording itself (episodes, fps, task, cameras) is lerobot-record's.
FARM_FIELDS = ["broker", "storage", "output_storage", "video_encoding_workers",
               "video_encoding_queue_size", "wait", "shared_folder", "spool_dir",
               "spool_max_mb", "codec", "crf", "gop", "preset", "pix_fmt", "raw_format",
               "raw_compression", "segment_frames", "writer_queue_frames", "split_after_s",
               "split_part_s", "encode_window_s", "capture_nice", "keep_raw",
               "backlog_limit", "share_capture_host", "capture_cpus"]
# lerobot-record flags for how LeRobot encodes or writes images: the farm has neither.
UNUSED_FLAGS = {
    "--dataset.streaming_encoding": "the farm's workers encode every episode",
    "--dataset.encoder_threads": "the farm's workers choose their threads",
    "--dataset.encoder_queue_maxsize": "no frame waits in an encoder queue on the robot",
    "--dataset.video_encoding_batch_size": "every episode is sent to the farm when saved",
    "--dataset.num_image_writer_processes": "camera frames go to the farm's raw writers",
    "--dataset.num_image_writer_threads_per_camera": "each camera has one raw writer",
    "--dataset.depth_encoder": "the farm records RGB cameras",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, add_help=False,
        description="lerobot-record, with the encoding farm as its encoder: every "
                    "lerobot-record flag (--robot.*, --teleop.*, --dataset.*, --resume, "
                    "--display_data, --play_sounds, --x.discover_packages_path) is passed to "
                    "it unchanged; these are the farm's own (FARM_* in the environment too).",
        epilog="Without --broker, a private farm (redis-server and --video-encoding-workers "
               "local workers) runs for the recording. `lerobot-record --help` lists "
               "lerobot-record's own flags.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    add_settings_arguments(parser, RecorderSettings, fields=FARM_FIELDS)
    return parser


def main(argv: list[str]) -> int:
    parser = build_parser()
    args, lerobot_argv = parser.parse_known_args(argv)
    wants_help = bool({"-h", "--help"} & set(lerobot_argv))
    if wants_help:
        parser.print_help()
        print(f"\nlerobot-record's own flags ({PROG} passes them on):\n")
    settings = settings_from_args(parser, RecorderSettings, args, async_encoding=True)
    try:
        lerobot_record = check_lerobot()
    except LeRobotUnsupported as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    import recorder.lerobot.synthetic  # noqa: F401  - registers --robot.type=farm_synthetic

    lerobot_record.register_third_party_plugins()
    import draccus

    try:
        cfg = parse_record_config(lerobot_record, lerobot_argv)  # --help: LeRobot's, exits
    except (draccus.utils.DraccusException, ValueError) as exc:  # a bad value or camera
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if args.verbose:
        logging.getLogger("recorder").setLevel(logging.DEBUG)
    if not settings.wait and settings.broker is None:
        parser.error("--no-wait needs a lasting farm (--broker URL): the private farm of the "
                     "zero-config default stops when the recording ends")
    try:
        storage = plan_storage(settings, cfg)
    except ValueError as exc:
        parser.error(str(exc))
    for flag, why in UNUSED_FLAGS.items():
        if any(a == flag or a.startswith((flag + "=", flag + ".")) for a in lerobot_argv):
            logger.warning("%s is not used on the farm: %s", flag, why)
    interrupt_on_sigterm()
    return run(parser, lerobot_record, cfg, settings, storage)


def parse_record_config(lerobot_record: ModuleType, argv: list[str]) -> Any:
    """lerobot-record's RecordConfig from its flags, parsed by LeRobot's own parser
    (plugins loaded, --config_path read) exactly as its main() would.

    Exits as lerobot-record does on a bad flag (2) or value (1).
    """
    from lerobot.configs import parser

    def parsed(cfg: Any) -> Any:
        return cfg

    parsed.__annotations__ = {"cfg": lerobot_record.RecordConfig}  # what wrap() parses into
    saved = sys.argv
    sys.argv = [PROG, *argv]
    try:
        return parser.wrap()(parsed)()
    finally:
        sys.argv = saved


def plan_storage(settings: RecorderSettings, cfg: Any) -> dict[str, str]:
    """Where the dataset and its raw frames go, checked before anything starts.

    Raises:
        ValueError: a combination that cannot work; the message names the flags.
    """
    from lerobot.utils.constants import HF_LEROBOT_HOME

    if not cfg.resume and not cfg.dataset.no_stamp:
        # Stamped here (LeRobot would in record()) so that the folder is known now.
        cfg.dataset.stamp_repo_id()
        cfg.dataset.no_stamp = True
    root = Path(cfg.dataset.root) if cfg.dataset.root else HF_LEROBOT_HOME / cfg.dataset.repo_id
    cfg.dataset.root = str(root)
    output = settings.output_storage or str(root)
    if cfg.dataset.push_to_hub:
        if open_storage(output).local_path("") is None:
            raise ValueError(f"--dataset.push_to_hub=true pushes a dataset in a local folder; "
                             f"--output-storage puts it at {output}: pass "
                             "--dataset.push_to_hub=false, or leave out --output-storage")
        from huggingface_hub import get_token

        if get_token() is None:
            raise ValueError("--dataset.push_to_hub=true needs a Hugging Face token (`hf auth "
                             "login`, or HF_TOKEN in the environment); or pass "
                             "--dataset.push_to_hub=false")
    return {"output_storage": output, "storage": settings.storage or output}


def run(parser: argparse.ArgumentParser, lerobot_record: ModuleType, cfg: Any,
        settings: RecorderSettings, storage: dict[str, str]) -> int:
    """Start the farm, run LeRobot's record() on it, and say how it ended."""
    dataset_options = settings.dataset_options().model_copy(update=storage)
    overrides = {name: getattr(settings, name) for name in EncoderOptions.model_fields
                 if name in settings.model_fields_set}
    recording: FarmRecording | None = None
    try:
        with farm_for(settings, raw_url=dataset_options.raw_storage_url,
                      output_url=dataset_options.output_storage_url) as farm:
            assert farm is not None  # async_encoding
            recording = FarmRecording(farm=farm, dataset=dataset_options,
                                      farm_options=settings.farm_options(),
                                      encoder_overrides=overrides)
            with raised_priority(settings.capture_nice), \
                    farm_datasets_in(lerobot_record, FarmDatasets(recording)):
                lerobot_record.record(cfg)
    except PriorityRefused as exc:
        parser.error(str(exc))  # before anything was recorded
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the frames recorded so far are kept as raw data in "
              f"{dataset_options.raw_storage_url}, and `{pending_command(dataset_options)}` "
              "completes the dataset", file=sys.stderr)
        return 130
    except (RecorderError, StorageError, WriterFailed, DatasetError, PushRefused) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # the robot, a camera, LeRobot's --resume check...
        logger.debug("the recording stopped", exc_info=True)
        print(f"{PROG}: the recording stopped: {type(exc).__name__}: {exc}", file=sys.stderr)
        if recording is not None:
            print(summary(recording), file=sys.stderr)
        return 1
    assert recording is not None
    print(summary(recording))
    complete = all(d.completion is not None and d.completion.complete
                   for d in recording.datasets)
    return 0 if complete else 1


@contextlib.contextmanager
def farm_datasets_in(lerobot_record: ModuleType, datasets: FarmDatasets) -> Iterator[None]:
    """LeRobot's record script, with the farm's datasets where it looks for its own."""
    original = lerobot_record.LeRobotDataset  # type: ignore[attr-defined]
    lerobot_record.LeRobotDataset = datasets  # type: ignore[attr-defined]
    try:
        yield
    finally:
        lerobot_record.LeRobotDataset = original  # type: ignore[attr-defined]


def pending_command(options: DatasetOptions) -> str:
    return (f"recorder encode-pending --storage {options.raw_storage_url} --output-storage "
            f"{options.output_storage_url}")


def summary(recording: FarmRecording) -> str:
    """Where the dataset is and what it holds, or what is missing and how to finish it."""
    lines = []
    finish = pending_command(recording.dataset)
    for dataset in recording.datasets:
        where = dataset.dataset.storage.url
        completion = dataset.completion
        if completion is None:
            if dataset.dataset.episodes:
                lines.append(f"LeRobot dataset {where}: the {len(dataset.dataset.episodes)} "
                             f"episodes saved in this run are not in it yet; `{finish}` "
                             "completes it")
            continue
        lines.append(f"LeRobot dataset {where}: {completion.total_episodes} episodes, "
                     f"{completion.total_frames} frames")
        if not completion.complete:
            lines.append(f"{completion.staged_left} recorded episodes are not in it yet "
                         f"({dataset.dataset.waiting_note()}); `{finish}` completes it")
    return "\n".join(lines)
