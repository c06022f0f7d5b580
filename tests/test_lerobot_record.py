"""`recorder lerobot-record`: LeRobot's own record loop, keyboard and --resume, on the farm.

Runs in the LeRobot environment (make test-lerobot): real LeRobot 0.6, the synthetic robot
and cameras registered through its plugin mechanism, keys typed on a pty, real farms (the
zero-config one, or a redis-server with `encoder-worker run` subprocesses), and every frame
of the result loaded and decoded by LeRobot.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import av
import pytest
from conftest import free_port, wait_for
from lerobot_runs import (
    CAMERAS,
    FARM_COMMAND,
    FPS,
    LEROBOT_COMMAND,
    has_segment,
    lerobot_environment,
    load_every_frame,
    record_flags,
    run,
)

from encoder_worker.raw_episode import Manifest
from encoder_worker.raw_layout import manifest_key, raw_prefix, record_key

pytest.importorskip("lerobot.scripts.lerobot_record", reason="LeRobot runs in its own "
                    "environment: make test-lerobot")

pytestmark = [pytest.mark.lerobot, pytest.mark.integration]

EPISODE_S = 2.0


def info(root: Path) -> dict:
    return json.loads((root / "meta/info.json").read_text())


def interrupted(root: Path, recording: int) -> bool:
    """The recording's frames are kept, every camera's manifest marked interrupted, and it
    was never staged (no episode record): it cannot join the dataset."""
    manifests = [Manifest.model_validate_json(
        (root / manifest_key(raw_prefix(recording=recording, camera=c))).read_bytes())
        for c in CAMERAS]
    return all(m.interrupted and m.frame_count > 0 for m in manifests) \
        and not (root / record_key(recording)).exists()


@pytest.fixture(params=["zero-config", "separate farm"])
def farm_flags(request, tmp_path: Path) -> list[str]:
    """The zero-config farm (no flag), or a redis-server with two worker subprocesses."""
    if request.param == "zero-config":
        return []
    server = request.getfixturevalue("redis_server")
    start_worker = request.getfixturevalue("start_worker")
    for _ in range(2):
        start_worker(server.url, "--concurrency", "1")
    return ["--broker", server.url]


def test_three_episodes_one_re_recorded_then_two_more_with_resume(tmp_path, farm_flags):
    root = tmp_path / "dataset"
    env = lerobot_environment(tmp_path)
    # The user presses r (re-record) once episode 0's frames are flowing.
    first = run([*FARM_COMMAND, *farm_flags, *record_flags(root, episodes=3,
                                                           episode_s=EPISODE_S)],
                env, tmp_path / "first.log",
                keys=[("episode 0's frames", lambda: has_segment(root, 0), b"r")])
    assert first.returncode == 0, first.output
    assert "Re-record episode" in first.output
    assert interrupted(root, 0), "the re-recorded attempt's frames are kept, never joined"
    assert info(root)["total_episodes"] == 3

    second = run([*FARM_COMMAND, *farm_flags, *record_flags(root, episodes=2,
                                                            episode_s=EPISODE_S),
                  "--resume=true"], env, tmp_path / "second.log")
    assert second.returncode == 0, second.output
    assert f"LeRobot dataset file://{root}: 5 episodes" in second.output

    # LeRobot's loop ends an episode by the clock: on a busy host it captures fewer
    # frames; each one captured is in the dataset (load_every_frame).
    frames = load_every_frame(root)
    assert sorted(frames) == [0, 1, 2, 3, 4]
    assert info(root)["total_frames"] == sum(frames.values())


def test_resume_appends_to_a_dataset_lerobot_itself_recorded(tmp_path):
    root = tmp_path / "dataset"
    env = lerobot_environment(tmp_path)
    plain = run([*LEROBOT_COMMAND, *record_flags(root, episodes=1, episode_s=EPISODE_S)],
                env, tmp_path / "lerobot.log")
    assert plain.returncode == 0, plain.output
    farm = run([*FARM_COMMAND, *record_flags(root, episodes=1, episode_s=EPISODE_S),
                "--resume=true"], env, tmp_path / "farm.log")
    assert farm.returncode == 0, farm.output
    frames = load_every_frame(root)
    assert sorted(frames) == [0, 1]


def test_resume_checks_the_robot_as_lerobot_does(tmp_path):
    root = tmp_path / "dataset"
    env = lerobot_environment(tmp_path)
    assert run([*FARM_COMMAND, *record_flags(root, episodes=1, episode_s=1.0)], env,
               tmp_path / "first.log").returncode == 0
    other = run([*FARM_COMMAND, *record_flags(root, episodes=1, episode_s=1.0),
                 "--robot.num_joints=5", "--resume=true"], env, tmp_path / "other.log")
    assert other.returncode == 1, other.output
    assert "compatibility check failed" in other.output and "Traceback" not in other.output
    assert info(root)["total_episodes"] == 1


def test_a_robot_that_fails_mid_episode_keeps_its_frames_and_the_saved_episodes(tmp_path):
    root = tmp_path / "dataset"
    env = lerobot_environment(tmp_path)
    # Episode 0 is saved; the robot stops answering 20 observations into episode 1.
    fail_at = round(EPISODE_S * FPS) + 30  # episode 0, its reset, then into episode 1
    result = run([*FARM_COMMAND, *record_flags(root, episodes=3, episode_s=EPISODE_S),
                  f"--robot.fail_after_observations={fail_at}"], env, tmp_path / "run.log")
    assert result.returncode == 1, result.output
    assert "the recording stopped: ConnectionError" in result.output
    assert "Traceback" not in result.output
    assert interrupted(root, 1)
    assert sorted(load_every_frame(root)) == [0]


def test_an_unreachable_broker_stops_before_the_robot_connects(tmp_path):
    root = tmp_path / "dataset"
    broker = f"redis://127.0.0.1:{free_port()}/0"
    result = run([*FARM_COMMAND, "--broker", broker,
                  *record_flags(root, episodes=1, episode_s=EPISODE_S)],
                 lerobot_environment(tmp_path), tmp_path / "run.log", timeout_s=60)
    assert result.returncode == 1, result.output
    assert "127.0.0.1" in result.output and "Traceback" not in result.output
    assert "Recording episode" not in result.output
    assert not (root / "meta").exists(), "no dataset was created"


@pytest.mark.parametrize(("flag", "named"), [
    (["--video-encoding-workers", "0"], "--video-encoding-workers"),
    (["--storage", "ftp://host/x"], "--storage"),
    (["--no-wait"], "--no-wait"),
])
def test_a_bad_farm_flag_exits_2_naming_it(tmp_path, flag, named):
    root = tmp_path / "dataset"
    result = run([*FARM_COMMAND, *flag, *record_flags(root, episodes=1, episode_s=EPISODE_S)],
                 lerobot_environment(tmp_path), tmp_path / "run.log", timeout_s=60)
    assert result.returncode == 2, result.output
    assert named in result.output and "Traceback" not in result.output
    assert not root.exists()


def test_lerobots_encoder_flags_set_the_farms_encoder_and_unused_flags_are_said_once(tmp_path):
    root = tmp_path / "dataset"
    result = run([*FARM_COMMAND, *record_flags(root, episodes=1, episode_s=1.0),
                  "--dataset.rgb_encoder.vcodec=h264", "--dataset.rgb_encoder.crf=23",
                  "--dataset.rgb_encoder.g=10", "--dataset.streaming_encoding=true",
                  "--dataset.num_image_writer_threads_per_camera=2"],
                 lerobot_environment(tmp_path), tmp_path / "run.log")
    assert result.returncode == 0, result.output
    for flag in ("--dataset.streaming_encoding", "--dataset.num_image_writer_threads_per_camera"):
        assert result.output.count(f"{flag} is not used on the farm") == 1
    video_info = info(root)["features"]["observation.images.front"]["info"]
    assert (video_info["video.codec"], video_info["video.crf"], video_info["video.g"]) == (
        "h264", 23, 10)
    [video] = (root / "videos/observation.images.front").rglob("*.mp4")
    with av.open(str(video)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
    assert sorted(load_every_frame(root)) == [0]


def test_ctrl_c_keeps_the_frames_and_says_how_to_finish(tmp_path):
    root = tmp_path / "dataset"
    env = lerobot_environment(tmp_path)
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [*FARM_COMMAND, *record_flags(root, episodes=2, episode_s=30.0)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: has_segment(root, 0), timeout_s=120, what="episode 0's frames")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 130
    finally:
        if process.poll() is None:
            process.kill()
    output = log.read_text()
    assert "interrupted; the frames recorded so far are kept" in output
    assert "recorder encode-pending" in output and "Traceback" not in output
    assert interrupted(root, 0)
    assert info(root)["total_episodes"] == 0


def test_push_to_hub_pushes_the_finished_dataset_with_lerobots_own_push(
        tmp_path, monkeypatch):
    # No network here: the Hub's API is replaced at the very calls LeRobot makes.
    from huggingface_hub import DatasetCard, HfApi

    from recorder.lerobot.command import main

    calls: list[tuple[str, dict]] = []
    for name in ("create_repo", "upload_folder", "delete_tag", "create_tag"):
        monkeypatch.setattr(HfApi, name, lambda self, *a, _n=name, **k: calls.append((_n, k)))
    monkeypatch.setattr(DatasetCard, "push_to_hub",
                        lambda self, *a, **k: calls.append(("card", k)))
    for key, value in lerobot_environment(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    root = tmp_path / "dataset"
    flags = [f for f in record_flags(root, episodes=1, episode_s=1.0)
             if not f.startswith("--dataset.push_to_hub")]
    assert main([*flags, "--dataset.push_to_hub=true", "--dataset.tags=[farm]"]) == 0
    names = [name for name, _ in calls]
    assert names[:2] == ["create_repo", "upload_folder"] and "card" in names
    upload = dict(calls)["upload_folder"]
    assert Path(upload["folder_path"]) == root
    assert upload["allow_patterns"] == ["meta/*", "data/*", "videos/*"]
    assert info(root)["total_episodes"] == 1
