"""`recorder benchmark` and `recorder analyze` end to end: real captures, real encodes."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from test_video_camera import LEVEL_STEP, make_video
from video_checks import decode_rgb

from recorder.benchmark.results import load
from recorder.cli import main

# Small and short: this runs on 2-core machines. libx264 where the codec does not matter.
SMALL = ["--episodes", "1", "--episode-time", "1", "--fps", "15", "--width", "160",
         "--height", "120", "--codec", "libx264"]


def videos(result_dir: Path) -> list[Path]:
    return sorted(result_dir.glob("runs/*/dataset/videos/**/*.mp4"))


@pytest.mark.parametrize(("argv", "message"), [
    (["--mode", "real"], "--mode real needs at least one --camera"),
    (["--camera", "x.mp4"], "--camera is for --mode real"),
    (["--mode", "fake"], "--mode: Input should be 'synthetic' or 'real'"),
    (["--episodes", "0"], "--episodes: Input should be greater than or equal to 1"),
    (["--fps", "fast"], "--fps: Input should be a valid integer"),
    (["--video-encoding-queue-size", "0"], "--video-encoding-queue-size"),
    (["--width", "161"], "even width and height"),
    (["demo", "--broker", "redis://farm:6379/0"], "leave out --broker"),
    (["sweep"], "invalid choice: 'sweep'"),
])
def test_bad_flags_exit_2_with_the_reason(argv: list[str], message: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["benchmark", *argv, "--output-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json"))


def test_missing_camera_source_fails_before_recording(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["benchmark", "--mode", "real", "--camera", str(tmp_path / "absent.mp4"),
                 "--output-dir", str(tmp_path)])
    assert code == 1
    assert "absent.mp4 does not exist" in capsys.readouterr().out
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("manifest.json"))


def test_analyze_refuses_other_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.json"
    other.write_text("{}")
    assert main(["analyze", str(other)]) == 1
    assert "not a benchmark results file" in capsys.readouterr().out


@pytest.mark.integration
def test_compare_prints_the_report_writes_both_files_and_analyze_charts_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    code = main(["benchmark", "--compare", *SMALL, "--video-encoding-workers", "1",
                 "--output-dir", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    for heading in ("PERFORMANCE COMPARISON RESULTS", "SYNCHRONOUS ENCODING:",
                    "ASYNCHRONOUS ENCODING:", "PERFORMANCE IMPROVEMENTS:",
                    "ENCODING EFFICIENCY:", "All videos verified and ready", "VERDICT:"):
        assert heading in printed
    (sync_file,) = out.glob("sync_benchmark_*.json")
    (async_file,) = out.glob("async_benchmark_*.json")
    sync, async_ = load(sync_file), load(async_file)
    assert (sync.mode, async_.mode) == ("sync", "async")
    assert sync.compared_with == async_file.name and async_.compared_with == sync_file.name
    assert sync.verdicts == async_.verdicts and sync.verdicts
    for result in (sync, async_):
        t = result.totals
        assert t.tasks == 1 and t.tasks_failed == 0
        assert t.frames_recorded == t.frames_in_videos == 15
        assert t.encoding_s > 0 and t.total_recording_s > 0
        assert result.all_ready_at is not None
        # Where the run went, relative to the results file: no path of this machine.
        assert result.raw_storage == result.output_storage == result.config.storage
        assert (out / result.raw_storage).is_dir() and result.raw_storage.startswith("runs/")
        assert result.command == ("recorder benchmark --compare " + " ".join(SMALL)
                                  + " --video-encoding-workers 1 --output-dir results")
        # What the user waits for: the dataset complete after the capture, no raw left.
        assert t.complete_after_last_frame_s is not None
        asked = sum(ep.frames for ep in result.episodes) / result.config.fps
        assert t.complete_after_last_frame_ratio == pytest.approx(
            t.complete_after_last_frame_s / asked)
        assert result.dataset_complete_at is not None
        assert t.complete_after_start_ratio == pytest.approx(
            (result.dataset_complete_at - result.episodes[0].started_at) / asked)
        assert t.raw_left_bytes == 0 and not result.raw_kept
    # Sync blocking: committing each episode, then encoding it inline.
    committing = sum(ep.save_s for ep in sync.episodes)
    assert sync.totals.blocking_s == pytest.approx(sync.totals.encoding_s + committing)
    assert async_.totals.workers_used and async_.environment.workers_answering == 1
    assert f"Speedup: {sync.totals.total_recording_s / async_.totals.total_recording_s:.2f}x" \
        in printed
    # Real videos, one per run; the raw frames are gone once they are encoded.
    found = videos(out)
    assert len(found) == 2
    assert all(len(decode_rgb(video)[0]) == 15 for video in found)
    assert not list(out.glob("runs/*/dataset/raw/**/manifest.json"))

    assert main(["analyze", str(sync_file), str(async_file)]) == 0
    printed = capsys.readouterr().out
    assert "Summary across files" in printed and "sync mean" in printed
    (chart,) = out.glob("timeline_*.png")
    assert chart.stat().st_size > 10_000


@pytest.mark.integration
def test_real_mode_records_a_video_file_as_a_camera(tmp_path: Path) -> None:
    source = make_video(tmp_path / "source.mp4", frames=20, fps=10, width=176, height=144)
    out = tmp_path / "results"
    code = main(["benchmark", "--mode", "real", "--camera", str(source), "--episodes", "1",
                 "--episode-time", "1", "--fps", "10", "--codec", "libx264", "--keep-raw",
                 "--output-dir", str(out)])
    assert code == 0
    (result_file,) = out.glob("sync_benchmark_*.json")
    result = load(result_file)
    assert result.config.camera_mode == "real"
    assert result.config.camera_sources == ["source.mp4"]  # no path of this machine
    assert "--camera source.mp4 " in (result.command or "")
    assert (result.config.width, result.config.height) == (176, 144)  # the file's own size
    assert result.totals.frames_in_videos == result.totals.frames_recorded == 10
    assert result.raw_kept and list(out.glob("runs/*/dataset/raw/**/manifest.json"))
    assert result.totals.raw_left_bytes >= 10 * 176 * 144 * 3 // 2  # yuv420p frames, kept
    (video,) = videos(out)
    frames, _ = decode_rgb(video)
    # The file replays in order, at its own rate: 1 s of a 2 s file never loops.
    levels = [round(float(f.mean()) / LEVEL_STEP) for f in frames]
    assert levels == sorted(levels) and levels[0] == 0 and len(levels) == 10


@pytest.mark.integration
def test_async_against_an_existing_farm(broker_url: str, start_worker: Callable[..., object],
                                        tmp_path: Path) -> None:
    start_worker(broker_url)
    out = tmp_path / "results"
    storage = tmp_path / "farm-storage"
    code = main(["benchmark", "--async-encoding", *SMALL, "--broker", broker_url,
                 "--storage", str(storage), "--video-encoding-workers", "7",
                 "--output-dir", str(out)])
    assert code == 0
    (result_file,) = out.glob("async_benchmark_*.json")
    result = load(result_file)
    assert not list(out.glob("sync_benchmark_*.json"))
    assert result.environment.broker_kind.startswith("external redis farm")
    assert result.environment.workers_answering == 1  # the farm's, not the 7 recorded
    assert result.config.video_encoding_workers == 7
    assert len(result.totals.workers_used) == 1
    assert result.totals.frames_in_videos == 15
    # The run went to its own prefix of the farm's storage, named without the folder's path.
    assert result.raw_storage.startswith("async-") and result.raw_storage.endswith("-7w")
    assert result.config.storage == result.raw_storage
    assert result.config.broker == broker_url  # a host's URL, kept (without a password)
    assert len(list(storage.glob("benchmark/async-*/videos/**/*.mp4"))) == 1


@pytest.mark.integration
def test_demo_compares_then_sweeps_workers(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    code = main(["benchmark", "demo", *SMALL, "--output-dir", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "PERFORMANCE COMPARISON RESULTS" in printed
    assert "Async encoding by number of workers" in printed
    results = [load(path) for path in sorted(out.glob("*_benchmark_*.json"))]
    assert sorted(r.config.video_encoding_workers for r in results if r.mode == "async") \
        == [1, 2, 4]
    assert [r.mode for r in results].count("sync") == 1
    assert len(list(out.glob("timeline_*.png"))) == 1
    assert len(list(out.glob("workers_*.png"))) == 1


@pytest.mark.integration
def test_background_load_runs_beside_the_recording_and_is_reported(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    code = main(["benchmark", *SMALL, "--background-load", "1", "--output-dir", str(out)])
    assert code == 0
    (result_file,) = out.glob("sync_benchmark_*.json")
    result = load(result_file)
    assert result.config.background_load == 1
    for episode in result.episodes:
        assert 0 < episode.busy_ms_median <= episode.busy_ms_p99
        assert episode.first_slot_busy_ms > 0
    printed = capsys.readouterr().out
    assert "1 background load processes" in printed
    assert "Late slots per episode: " in printed and "the loop's work per slot" in printed
    # The load's files are removed as it goes, and its processes with the run.
    assert not list(out.glob(".background-load-*"))
    left = subprocess.run(["pgrep", "-f", f"recorder.benchmark.background .* {out.absolute()}"],
                          capture_output=True, text=True)
    assert left.returncode == 1, f"load processes still running: {left.stdout}"


@pytest.mark.integration
def test_continuous_recording_reports_the_backlog_of_every_episode(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    code = main(["benchmark", "--async-encoding", *SMALL[2:], "--episodes", "3",
                 "--reset-time", "0", "--video-encoding-workers", "1", "--output-dir", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    (result_file,) = out.glob("async_benchmark_*.json")
    result = load(result_file)
    assert len(result.episodes) == 3 and result.config.reset_time_s == 0
    backlogs = [ep.backlog for ep in result.episodes]
    assert all(b >= 0 for b in backlogs) and result.totals.backlog_max == max(backlogs)
    assert "Backlog: at most " in printed and \
        f"reached the farm: {', '.join(map(str, backlogs))})" in printed
    assert "Dataset complete " in printed and "Raw frames left on disk: 0.0 MB" in printed
    assert result.totals.frames_in_videos == result.totals.frames_recorded == 3 * 15
