"""Results files keep no path of the machine that made them (recorder/benchmark/portable.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_results import make_config, make_session_report
from conftest import REPO

from recorder.benchmark.portable import portable_command, portable_location
from recorder.benchmark.results import EnvironmentInfo, from_session

ENV = EnvironmentInfo(
    hostname="h", platform="Linux", cpu_model="cpu", cpu_count=2, python="3.11", pyav="18",
    ffmpeg="8", ffmpeg_libraries={}, codec="libx264", codec_description="H.264",
    broker_kind="test", recorder_pid=1)


@pytest.mark.parametrize(("location", "base", "kept"), [
    ("file:///work/repo/out/runs/async-1-2w/dataset", "/work/repo/out", "runs/async-1-2w/dataset"),
    ("/work/repo/out/runs/sync-1/dataset", "/work/repo/out", "runs/sync-1/dataset"),
    ("file:///mnt/farm/benchmark/async-1-2w", "/work/repo/out", "async-1-2w"),
    ("/tmp/real_clip.mp4", None, "real_clip.mp4"),
    ("file:///tmp/x", None, "x"),
    ("/dev/video0", None, "/dev/video0"),
    ("clips/a.mp4", None, "clips/a.mp4"),
    ("s3://bucket/prefix/benchmark/async-1-2w", "/work/repo/out",
     "s3://bucket/prefix/benchmark/async-1-2w"),
    ("rtsp://admin:secret@camera.local/stream", None, "rtsp://admin:***@camera.local/stream"),
    ("redis+socket:///run/farm/redis.sock", None, "redis+socket://.../redis.sock"),
])
def test_portable_location(location: str, base: str | None, kept: str) -> None:
    assert portable_location(location, base=base) == kept


def test_a_location_under_a_relative_output_dir(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = (tmp_path / "out" / "runs" / "sync-1" / "dataset").resolve()
    assert portable_location(f"file://{run}", base=Path("out")) == "runs/sync-1/dataset"


def test_portable_command() -> None:
    assert portable_command(["benchmark", "--camera", "/tmp/clip.mp4", "--output-dir=/tmp/o",
                             "--frames", "300", "--camera", "/dev/video0", "benchmarks/x.py"]) \
        == ["benchmark", "--camera", "clip.mp4", "--output-dir=o", "--frames", "300",
            "--camera", "/dev/video0", "benchmarks/x.py"]


def test_a_result_from_a_session_keeps_its_storage_relative(tmp_path: Path) -> None:
    report = make_session_report("sync", [], all_ready_at=None)
    report.raw_storage = report.output_storage = f"file://{tmp_path}/out/runs/sync-1/dataset"
    result = from_session(report, config=make_config("sync"), environment=ENV,
                          output_dir=tmp_path / "out")
    assert result.raw_storage == result.output_storage == "runs/sync-1/dataset"
    outside = from_session(report, config=make_config("sync"), environment=ENV)
    assert outside.raw_storage == "dataset"


def strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return []


def test_committed_results_files_hold_no_path_of_the_machine_that_made_them() -> None:
    files = sorted((REPO / "benchmarks" / "results").glob("*.json"))
    assert files
    for path in files:
        for text in strings(json.loads(path.read_text())):
            assert not text.startswith("file://"), (path.name, text)
            assert not text.startswith("/") or text.startswith("/dev/"), (path.name, text)
            assert str(REPO) not in text and "/tmp/" not in text, (path.name, text)
