"""Recording to S3 with workers that share no files with the recorder; S3 outages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO, wait_for
from dataset_checks import check_v3_dataset, mirror
from episodes import video_key
from rich.console import Console
from s3_fixtures import MotoServer
from video_checks import check_video_against_raw

from encoder_worker.jobs import EncodeJob
from encoder_worker.raw_episode import Manifest, RawEpisodeReader
from encoder_worker.raw_layout import raw_prefix
from encoder_worker.settings import WorkerSettings
from encoder_worker.storage import Storage, StorageError, open_storage
from encoder_worker.storage.local import LocalStorage
from encoder_worker.storage.s3 import parse_s3_url
from encoder_worker.tasks import manifest_pending
from recorder import session
from recorder.capture.cameras.synthetic import synthetic_cameras
from recorder.dataset import writer
from recorder.farm import setup as farm_setup
from recorder.farm.spool_folder import spool_folder
from recorder.farm.storage_check import broker_is_local, check_farm_storage
from recorder.settings import RecorderSettings

# --keep-raw: the videos are checked against their raw episodes.
SMALL = ["--width", "160", "--height", "120", "--fps", "15", "--codec", "libx264",
         "--segment-frames", "5", "--keep-raw"]


def check_outputs(output_url: str, raw_url: str, *, episodes: int, cameras: int,
                  tmp_path: Path) -> dict[tuple[int, str], int]:
    """Download every expected video and check it against its raw episode."""
    output = open_storage(output_url)
    counts = {}
    for episode in range(episodes):
        for camera in (f"cam{i}" for i in range(cameras)):
            video = tmp_path / f"check-{episode}-{camera}.mp4"
            output.download_file(video_key(episode, camera), video)
            counts[episode, camera] = check_video_against_raw(
                video, raw_url, raw_prefix(recording=episode, camera=camera))
    return counts


def start_recorder(tmp_path: Path, *args: str,
                   name: str = "recorder") -> tuple[subprocess.Popen[bytes], Path, Path]:
    """`recorder record` in its own working and temp folders; returns (process, log, spool).

    spool is the default --spool-dir, which runs in the same tmp_path share.
    """
    workdir = tmp_path / "recorder-cwd"
    tmp = tmp_path / "recorder-tmp"
    workdir.mkdir(exist_ok=True)
    tmp.mkdir(exist_ok=True)
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "recorder.cli", "record", *args], cwd=workdir,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp)})
    return process, log, workdir / "recordings" / ".upload-spool"


def worker_args(tmp_path: Path, index: int, storage: str) -> dict[str, object]:
    """A worker's own working and temp folders: it shares no files with the recorder."""
    tmp = tmp_path / f"worker-{index}-tmp"
    tmp.mkdir()
    return {"cwd": tmp_path / f"worker-{index}-home", "env": {"TMPDIR": str(tmp)}}


# --- fast checks, no servers ---------------------------------------------------------

def test_broker_is_local() -> None:
    assert broker_is_local("redis://localhost:6379/0")
    assert broker_is_local("redis://127.0.0.1:6379/0")
    assert broker_is_local("redis+socket:///tmp/x/redis.sock")
    assert not broker_is_local("redis://farm-host:6379/0")
    assert not broker_is_local("redis://10.77.0.1:6379/0")


def check_storage_of(settings: RecorderSettings) -> None:
    check_farm_storage(settings, raw_url=settings.raw_storage_url,
                       output_url=settings.output_storage_url)


def test_local_folder_with_remote_farm_is_refused(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    remote = "redis://farm-host:6379/0"
    ok = [
        RecorderSettings(storage="s3://b/p", async_encoding=True, broker=remote),
        RecorderSettings(storage=str(tmp_path), async_encoding=True),  # private local farm
        RecorderSettings(storage=str(tmp_path), async_encoding=True,
                         broker="redis://localhost:6379/0"),
        RecorderSettings(storage=str(tmp_path), output_storage="s3://b/p"),  # inline
    ]
    for settings in ok:
        check_storage_of(settings)
    with pytest.raises(ValueError, match=r"--storage .* folder on this machine"):
        check_storage_of(RecorderSettings(storage=str(tmp_path), async_encoding=True,
                                            broker=remote))
    with pytest.raises(ValueError, match="--output-storage"):
        check_storage_of(RecorderSettings(storage="s3://b/p", output_storage=str(tmp_path),
                                            async_encoding=True, broker=remote))

    # A folder every worker mounts is the user's call to make.
    check_storage_of(RecorderSettings(storage=str(tmp_path), async_encoding=True,
                                        broker=remote, shared_folder=True))

    # The recorder refuses before it contacts the broker.
    def no_broker(*_: object, **__: object) -> None:
        raise AssertionError("the broker must not be contacted")

    monkeypatch.setattr(farm_setup, "check_broker", no_broker)
    settings = RecorderSettings(storage=str(tmp_path), async_encoding=True, broker=remote)
    with pytest.raises(farm_setup.RecorderError, match="s3://bucket/prefix"), \
            farm_setup.farm_for(settings, raw_url=settings.raw_storage_url,
                                output_url=settings.output_storage_url):
        pass


def test_manifest_pending_until_uploaded(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    job = EncodeJob(job_id="j", recording=0, camera="cam0", raw_storage=storage.url,
                    raw_prefix="raw/episode_000000/cam0", output_storage=storage.url,
                    output_key="v.mp4")
    settings = WorkerSettings(manifest_wait_s=3600)
    assert manifest_pending(job, settings)
    storage.put_bytes("raw/episode_000000/cam0/manifest.json", b"{}")
    assert not manifest_pending(job, settings)
    old = job.model_copy(update={"submitted_at": time.time() - 7200})
    assert not manifest_pending(old, WorkerSettings(manifest_wait_s=3600)), "gives up"


def test_exit_message_names_the_pending_files(tmp_path: Path) -> None:
    settings = RecorderSettings(storage="s3://bucket/datasets/x", spool_dir=tmp_path)
    assert session.pending_uploads_note(settings) is None
    folder = spool_folder(settings.spool_root, "s3://bucket/datasets/x")
    segment = folder / "keys/raw/episode_000000/cam0/segment_00000.raw"
    segment.parent.mkdir(parents=True)
    segment.write_bytes(b"x" * 10)
    note = session.pending_uploads_note(settings)
    assert note is not None and "1 raw files (0 MB)" in note and f"{folder}/keys" in note
    assert session.pending_uploads_note(RecorderSettings(storage=str(tmp_path))) is None


# --- with moto and Redis --------------------------------------------------------------

@pytest.mark.integration
def test_inline_encoding_with_s3_storage(s3_url: str, tmp_path: Path) -> None:
    settings = RecorderSettings(storage=s3_url, keep_raw=True, episodes=1, episode_time=1,
                                cameras=1, width=160, height=120, fps=15, codec="libx264",
                                segment_frames=5)
    report = session.record(settings, console=Console(file=open(os.devnull, "w")))  # noqa: SIM115
    assert not report.failed and len(report.results) == 1
    counts = check_outputs(s3_url, s3_url, episodes=1, cameras=1, tmp_path=tmp_path)
    assert counts == {(0, "cam0"): report.episodes[0].frames_recorded["cam0"]}


@pytest.mark.integration
def test_recording_into_a_missing_bucket_fails_instead_of_hanging(
        s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As if the bucket went away after the start-up checks (or puts are forbidden): the
    # spool's uploads fail permanently, and recording stops with what to fix.
    monkeypatch.setattr(writer, "next_recording", lambda *_, **__: 0)
    missing = s3_url.replace("s3://", "s3://missing-", 1)
    # The dataset's metadata goes to a bucket that exists; the raw uploads fail.
    settings = RecorderSettings(storage=missing, output_storage=s3_url, episodes=2,
                                episode_time=1, cameras=2,
                                width=64, height=48, fps=15, codec="libx264",
                                segment_frames=5, spool_dir=tmp_path / "spool")
    recording = session.RecordingSession(settings, synthetic_cameras(
        2, width=64, height=48, fps=15))
    with pytest.raises(StorageError, match=r"NoSuchBucket.*create the bucket"):
        recording.run()
    kept = list(tmp_path.glob("spool/*/keys/raw/episode_000000/cam*/segment_*.raw"))
    assert kept, "what was recorded stays in the spool"


@pytest.mark.integration
def test_raw_local_videos_to_s3_with_local_farm(s3_url: str, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    settings = RecorderSettings(storage=str(raw), output_storage=s3_url, keep_raw=True,
                                async_encoding=True,
                                video_encoding_workers=1, episodes=1, episode_time=1,
                                cameras=1, width=160, height=120, fps=15, codec="libx264")
    report = session.record(settings, console=Console(file=open(os.devnull, "w")))  # noqa: SIM115
    assert not report.failed and len(report.results) == 1
    check_outputs(s3_url, str(raw), episodes=1, cameras=1, tmp_path=tmp_path)


@pytest.mark.integration
def test_recorder_and_workers_share_only_s3_and_redis(
        s3_url: str, broker_url: str, start_worker: Callable[..., object],
        tmp_path: Path) -> None:
    workers = [start_worker(broker_url, "--storage", s3_url, "--concurrency", "1",
                            **worker_args(tmp_path, index, s3_url)) for index in range(2)]
    # Windows of 10 frames (2 segments) of the 15 per episode: each sent once its segments
    # are uploaded from the spool, joined with the rest when the episode is saved.
    process, log, spool = start_recorder(
        tmp_path, "--storage", s3_url, "--async-encoding", "--broker", broker_url,
        "--episodes", "2", "--episode-time", "1", "--cameras", "2", *SMALL,
        "--encode-window-s", "0.4")
    assert process.wait(timeout=240) == 0, log.read_text()
    assert sum(w.output().count("joined 2 parts") for w in workers) == 4  # 2 x 2 videos
    counts = check_outputs(s3_url, s3_url, episodes=2, cameras=2, tmp_path=tmp_path)
    assert len(counts) == 4 and all(counts.values())
    # Nothing was left in the recorder's spool; the raw data lives in S3 only.
    assert spool.is_dir() and not [p for p in spool.rglob("*.raw")]


@pytest.mark.integration
def test_s3_outage_during_recording(moto_server: MotoServer, s3_url: str, broker_url: str,
                                    start_worker: Callable[..., object],
                                    tmp_path: Path) -> None:
    # moto runs in this process, so its objects outlive the stop: what was uploaded before
    # the outage stays, and what was recorded during it must come from the recorder's spool.
    for index in range(2):
        start_worker(broker_url, "--storage", s3_url, "--concurrency", "1",
                     **worker_args(tmp_path, index, s3_url))
    episodes, cameras = 3, 2
    bucket, _ = parse_s3_url(s3_url)
    process, log, spool = start_recorder(
        tmp_path, "--storage", s3_url, "--async-encoding", "--broker", broker_url,
        "--episodes", str(episodes), "--episode-time", "1.5", "--cameras", str(cameras),
        *SMALL)

    def manifests() -> tuple[int, int]:
        """(in the recorder's spool, in the bucket): moto's state is readable while down."""
        spooled = len(list(spool.rglob("manifest.json")))
        stored = sum(key.endswith("/manifest.json") for key in moto_server.stored_keys(bucket))
        return spooled, stored

    try:
        # Episode 0's spool folder appears once the recorder is past its start-up listing
        # of the bucket, a whole segment before the first upload: the outage starts now.
        wait_for(lambda: any(spool.glob("*/keys/raw/episode_*"))
                 or process.poll() is not None, timeout_s=60, what="the recorder's spool")
        assert process.poll() is None, log.read_text()
        moto_server.stop()
        # Recording goes on into the local spool. Under load some of episode 0 may have
        # been uploaded before the server stopped, so count the manifests in both places.
        wait_for(lambda: process.poll() is not None
                 or sum(manifests()) == episodes * cameras,
                 timeout_s=60, what="every manifest in the recorder's spool or the bucket")
        assert process.poll() is None, f"recorder ended during the outage:\n{log.read_text()}"
        spooled, stored = manifests()
        assert spooled >= cameras, f"the last episode waits in the spool ({spooled=}, {stored=})"
        moto_server.start()
        assert process.wait(timeout=240) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    assert "failed (attempt 1" in log.read_text(), "uploads failed during the outage"
    counts = check_outputs(s3_url, s3_url, episodes=episodes, cameras=cameras,
                           tmp_path=tmp_path)
    assert len(counts) == episodes * cameras and all(counts.values())
    assert not [p for p in spool.rglob("*.raw")], "spool drained"


def raw_episodes(storage: Storage) -> dict[tuple[int, str], Manifest]:
    """Every raw episode in storage with a manifest, read back in full (CRC-32 checked)."""
    found = {}
    for key in storage.list_keys("raw"):
        if key.endswith("/manifest.json"):
            reader = RawEpisodeReader(storage, key.removesuffix("/manifest.json"))
            manifest = reader.manifest
            assert sum(1 for _ in reader.frames()) == manifest.frame_count
            found[manifest.episode, manifest.camera] = manifest
    return found


@pytest.mark.integration
def test_killed_recorder_leaves_its_spool_to_the_next_run(
        moto_server: MotoServer, s3_url: str, broker_url: str, tmp_path: Path) -> None:
    # No workers: this is about raw data. The jobs wait in Redis.
    cameras = 2
    bucket, _ = parse_s3_url(s3_url)
    common = ["--storage", s3_url, "--async-encoding", "--broker", broker_url, "--no-wait",
              "--episode-time", "1", "--cameras", str(cameras), *SMALL]
    process, log, spool = start_recorder(tmp_path, *common, "--episodes", "2", name="first")

    def manifests() -> set[str]:
        """Prefixes with a manifest in the recorder's spool or in the bucket (moto down)."""
        spooled = {p.parent.relative_to(p.parents[3]).as_posix()
                   for p in spool.glob("*/keys/raw/*/*/manifest.json")}
        stored = {k.split("/", 2)[2].removesuffix("/manifest.json")
                  for k in moto_server.stored_keys(bucket) if k.endswith("/manifest.json")}
        return spooled | stored

    try:
        wait_for(lambda: any(spool.glob("*/keys/raw/episode_*")) or process.poll() is not None,
                 timeout_s=60, what="the recorder's spool")
        assert process.poll() is None, log.read_text()
        moto_server.stop()
        wait_for(lambda: process.poll() is not None or len(manifests()) == 2 * cameras,
                 timeout_s=60, what="every manifest committed to the spool or the bucket")
        assert process.poll() is None, f"recorder ended during the outage:\n{log.read_text()}"
        stranded = len(list(spool.glob("*/keys/raw/*/*/manifest.json")))
        assert stranded >= cameras, "the last episode waits in the spool"
        # A power cut, or the process killed while it waits for the network.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert list(spool.glob("*/keys/raw/*/*/segment_*.raw")), "stranded segments on disk"

    moto_server.start()
    second, second_log, _ = start_recorder(tmp_path, *common, "--episodes", "1", name="second")
    assert second.wait(timeout=240) == 0, second_log.read_text()
    assert "of an earlier run" in second_log.read_text()
    episodes = raw_episodes(open_storage(s3_url))
    # The stranded episodes kept their numbers; the new one came after them.
    assert sorted(episodes) == [(e, f"cam{c}") for e in range(3) for c in range(cameras)]
    assert all(m.frame_count == 15 and not m.interrupted for m in episodes.values())
    assert min(episodes[2, c].recorded_at for c in ("cam0", "cam1")) > max(
        episodes[e, c].recorded_at for e in (0, 1) for c in ("cam0", "cam1"))
    assert not [p for p in spool.rglob("*") if p.is_file() and "keys" in p.parts]


@pytest.mark.integration
def test_a_full_spool_disk_is_recovered_by_the_next_run(
        s3_url: str, moto_server: MotoServer, small_disk: Path, tmp_path: Path) -> None:
    # S3 goes away, the spool's disk (8 MB) fills up: the recording stops. With S3 back,
    # the next run uploads the committed episodes and has them encoded, removes the files
    # left unfinished, and says so; the dataset gets every committed episode.
    spool = small_disk / "spool"
    flags = ["--storage", s3_url, "--async-encoding", "--spool-dir", str(spool), "--cameras",
             "2", "--width", "160", "--height", "120", "--fps", "15", "--codec", "libx264",
             "--segment-frames", "10", "--episode-time", "2", "--keep-raw"]
    first, log, _ = start_recorder(tmp_path, *flags, "--episodes", "5", name="first")
    # Its first frames are in the spool: the recording runs (S3 checks are behind it).
    wait_for(lambda: first.poll() is not None or any(spool.glob("*/keys/raw/*/*/*")),
             timeout_s=60, what="the recorder to start writing frames")
    moto_server.stop()
    assert first.wait(timeout=240) == 1, log.read_text()
    assert "No space left on device" in log.read_text()
    committed = sorted(p.parent.name for p in spool.glob("*/keys/raw/*/episode.json"))
    unfinished = list(spool.glob("*/keys/raw/*/*/.*.partial"))
    assert committed and unfinished, "the disk filled up after an episode was committed"

    moto_server.start()
    second = subprocess.run(
        [sys.executable, "-m", "recorder.cli", "record", *flags, "--episodes", "1"],
        cwd=tmp_path / "recorder-cwd", capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path / "recorder-tmp")})
    output = second.stdout + second.stderr
    assert second.returncode == 0, output
    assert f"removed {len(unfinished)} unfinished files" in output
    assert "committed by an earlier run that stopped before it was uploaded" in output
    assert not list(spool.glob("*/keys/raw/**/*.*")), "the spool is empty"
    check_v3_dataset(mirror(s3_url, tmp_path / "mirror"), raw_url=s3_url,
                     episodes=len(committed) + 1, cameras=["cam0", "cam1"],
                     frames_per_episode=30, min_psnr_db=25)


@pytest.mark.integration
def test_a_second_recorder_on_the_same_spool_is_refused(s3_url: str, tmp_path: Path) -> None:
    process, log, spool = start_recorder(tmp_path, "--storage", s3_url, "--episodes", "1",
                                         "--episode-time", "120", "--cameras", "1", *SMALL)
    try:
        # The holder writes its pid into the lock file once it has the lock.
        wait_for(lambda: process.poll() is not None or any(
            p.read_text().strip() == str(process.pid) for p in spool.glob("*/lock")),
            timeout_s=60, what="the first recorder to lock its spool")
        assert process.poll() is None, log.read_text()
        second = subprocess.run(
            [sys.executable, "-m", "recorder.cli", "record", "--storage", s3_url,
             "--episodes", "1", "--episode-time", "1", "--cameras", "1", *SMALL],
            cwd=tmp_path / "recorder-cwd", capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        assert second.returncode == 1, second.stderr
        assert (f"another recorder (pid {process.pid}) is using the upload spool {spool}/"
                in second.stderr), second.stderr
        assert "--spool-dir" in second.stderr
        assert process.poll() is None, "the first recorder goes on"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
