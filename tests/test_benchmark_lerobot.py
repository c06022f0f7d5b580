"""The LeRobot comparisons' parts that need no LeRobot and no server: their results files,
reports and tables, the frames counted in a dataset's videos, the record-loop watch, the
lerobot-record flags, and the command's refusals."""

from __future__ import annotations

import importlib.util
import json
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO
from test_benchmark_results import ENV

sys.path.insert(0, str(REPO / "benchmarks"))

import lerobot_tables
from markdown_tables import Results, render

from recorder.benchmark import lerobot_results
from recorder.benchmark.dataset_frames import video_frames
from recorder.benchmark.lerobot_record import LoopWatch, record_flags, replaced, timed
from recorder.benchmark.lerobot_report import format_comparison, format_record_comparison
from recorder.benchmark.lerobot_results import (
    ComparedEpisode,
    ComparedRun,
    ComparisonConfig,
    LeRobotComparison,
    LeRobotRecordComparison,
    RecordConfig,
    RecordEpisode,
    RecordRun,
    goal_misses,
    load,
    result_path,
)
from recorder.benchmark.results_file import ResultsFileError, save
from recorder.benchmark.settings import BenchmarkSettings
from recorder.cli import main

T0 = 1_800_000_000.0
CAMERAS = ["cam0", "cam1"]


def episode(number: int, *, late: int = 0, save_s: float = 0.001,
            found: tuple[int, int] = (300, 300)) -> ComparedEpisode:
    return ComparedEpisode(
        episode=number, frames=300, rows=300, late_slots=list(range(late)), overrun_slots=[],
        busy_ms_median=2.0, busy_ms_p99=5.0, read_ms_median=1.0, capture_s=10.0,
        save_s=save_s, frames_in_videos=dict(zip(CAMERAS, found, strict=True)))


def run(variant: lerobot_results.Variant, episodes: list[ComparedEpisode], *,
        complete_after_s: float | None = 5.0) -> ComparedRun:
    return ComparedRun(
        variant=variant, dataset=f"runs/lerobot-1-{variant}/dataset", started_at=T0,
        last_frame_at=T0 + 20.0 + sum(ep.save_s for ep in episodes[:-1]),
        complete_at=None if complete_after_s is None else
        T0 + 20.0 + sum(ep.save_s for ep in episodes[:-1]) + complete_after_s,
        process_cpu_s=6.0, children_cpu_s=12.0, cameras=CAMERAS,
        capture_time_s=10.0 * len(episodes), episodes=episodes)


def comparison() -> LeRobotComparison:
    config = ComparisonConfig(
        camera_mode="synthetic", cameras=2, width=640, height=480, fps=30, episodes=2,
        episode_time_s=10, reset_time_s=0, codec="libsvtav1", crf=30, gop=2, preset="12",
        pix_fmt="yuv420p", image_writer_threads=8, encoder_queue_maxsize=30,
        video_encoding_workers=2)
    return LeRobotComparison(
        command="recorder benchmark lerobot --cameras 2", started_at=T0, lerobot="0.6.1",
        environment=ENV, config=config, runs=[
            run("lerobot_inline", [episode(0, late=20, save_s=27.6),
                                   episode(1, late=27, save_s=28.1)], complete_after_s=28.5),
            run("lerobot_streaming", [episode(0, late=290, save_s=0.4, found=(298, 300)),
                                      episode(1, late=267, save_s=0.8)], complete_after_s=1.2),
            run("farm", [episode(0), episode(1, save_s=0.004)], complete_after_s=17.6)])


def record_comparison() -> LeRobotRecordComparison:
    def record_run(command: lerobot_results.RecordCommand, save_s: list[float],
                   late: int) -> RecordRun:
        return RecordRun(
            command=command, argv=["--robot.type=farm_synthetic"], exit_code=0,
            dataset="runs/x/dataset", save_s=save_s, last_frame_at=T0 + 21.0,
            complete_at=T0 + 50.0 if command == "lerobot-record" else T0 + 38.0,
            episodes=[RecordEpisode(episode=n, cycles=300 - late, late_cycles=list(range(late)),
                                    work_ms=[1.0, 2.0, 40.0], loop_s=10.0) for n in range(2)])

    return LeRobotRecordComparison(
        command="recorder benchmark lerobot-record --cameras 4", started_at=T0,
        lerobot="0.6.1", environment=ENV,
        config=RecordConfig(camera_mode="synthetic", cameras=4, width=640, height=480, fps=30,
                            episodes=2, episode_time_s=10, reset_time_s=0,
                            video_encoding_workers=2),
        runs=[record_run("lerobot-record", [27.0, 28.0], 3),
              record_run("recorder lerobot-record", [0.002, 0.001], 0)])


# -- the results ------------------------------------------------------------------------------

def test_a_run_says_what_the_robot_and_the_user_waited_for() -> None:
    streaming = comparison().runs[1]
    assert streaming.slots == 600 and streaming.late == 557
    assert streaming.lost == {"cam0": 2, "cam1": 0}
    assert streaming.capture_time_s == 20.0
    assert streaming.complete_after_last_frame_s == pytest.approx(1.2)
    assert streaming.complete_ratio == pytest.approx(0.06)
    # The first frame to complete: 20 s of capture, 0.4 s blocked between, then 1.2 s.
    assert streaming.complete_from_start_ratio == pytest.approx(21.6 / 20)
    assert streaming.cpu_ms_per_frame(streaming.children_cpu_s) == pytest.approx(10.0)


def test_an_episode_missing_from_the_dataset_lost_all_its_frames() -> None:
    missing = episode(1)
    missing.frames_in_videos = {}
    assert run("farm", [episode(0), missing]).lost == {"cam0": 300, "cam1": 300}


def test_the_goal_holds_for_a_farm_run_without_late_cycles_waits_or_losses() -> None:
    assert goal_misses(comparison().runs[2]) == []
    late = run("farm", [episode(0, late=1, save_s=0.021, found=(299, 300))],
               complete_after_s=None)
    assert goal_misses(late) == ["1 late cycles", "blocked 21 ms at an episode end",
                                 "1 frames lost", "the dataset was not complete"]


def test_results_files_round_trip_and_refuse_other_kinds(tmp_path: Path) -> None:
    result = comparison()
    path = save(result, result_path(tmp_path, result))
    assert path.name == f"lerobot_compare_{int(T0)}.json"
    assert load(path, LeRobotComparison) == result
    with pytest.raises(ResultsFileError, match="holds lerobot_compare results, not "
                                               "lerobot_record"):
        load(path, LeRobotRecordComparison)
    data = json.loads(path.read_text())
    data["schema_version"] = lerobot_results.SCHEMA_VERSION + 1
    path.write_text(json.dumps(data))
    with pytest.raises(ResultsFileError, match="upgrade the recorder"):
        load(path, LeRobotComparison)
    path.write_text("{}")
    with pytest.raises(ResultsFileError, match="not a LeRobot comparison's results file"):
        load(path, LeRobotComparison)


# -- reports and tables ---------------------------------------------------------------------

def test_the_comparison_report() -> None:
    text = format_comparison(comparison())
    assert "LEROBOT 0.6.1'S OWN DATASET AGAINST THE FARM" in text
    assert "2 synthetic cameras, 640x480 at 30 fps, 2 x 10 s (reset 0 s)" in text
    assert "Late loop cycles per episode: 290, 267 of 600 (over a period of the loop's own " \
           "work: 0); the loop's work per slot, median 2.0 ms, of which the cameras' and " \
           "robot's reads 1.0 ms" in text
    assert "Blocked at each episode end (save_episode): 27600, 28100 ms" in text
    assert "Frames lost per camera (added, not in its video): cam0 2, cam1 0" in text
    assert "Dataset complete 17.6 s after the last frame (0.88x the capture time of 20.0 s); " \
           "from the first frame 1.88x the capture time" in text
    assert "Recorder CPU per camera frame: 5.0 ms (the process, all threads); its child " \
           "processes: 10.0 ms (LeRobot's encoder pool)" in text
    assert "GOAL (issue 18), the farm: 0 late loop cycles, <= 20 ms blocked at each episode " \
           "end, 0 frames lost: met" in text


def test_slots_over_a_period_with_synthetic_cameras_are_said_to_be_partly_the_harness() -> None:
    result = comparison()
    assert "the harness's cost" not in format_comparison(result)
    result.runs[1].episodes[0].overrun_slots = [3, 4]
    text = format_comparison(result)
    assert "2 slots took over a period of the loop's own work, and the synthetic cameras make " \
           "their frames inside the loop: partly the harness's cost" in text
    result.config.camera_mode = "real"
    assert "the harness's cost" not in format_comparison(result)


def test_the_record_comparison_report() -> None:
    text = format_record_comparison(record_comparison())
    assert "lerobot-record (exit code 0):\n  Late loop cycles per episode (its sleep asked " \
           "for 0 s): 3, 3 of 594; the loop's work per cycle, median 2.0 ms" in text
    assert "Cycles per episode: 297, 297 of 300 asked (fps x episode time); the loop ran at " \
           "29.7, 29.7 fps" in text
    assert "Blocked at each episode end (save_episode): 2, 1 ms" in text
    assert "Dataset complete 17.0 s after the last frame" in text


def write(tmp_path: Path, *results: lerobot_results.LeRobotBenchmark) -> Results:
    for result in results:
        save(result, result_path(tmp_path, result))
    return Results(tmp_path)


def test_the_comparison_and_goal_tables(tmp_path: Path) -> None:
    results = write(tmp_path, comparison())
    name = f"lerobot_compare_{int(T0)}"
    table = lerobot_tables.compare_table(results, [name])
    assert [row[2:] for row in table.rows] == [
        ["LeRobot inline (4 image-writer threads per camera)", "20, 27 of 600",
         "27600, 28100 ms", "0, 0", "28.5 s (1.43x)", "3.80", "5.0 ms (10.0 ms)"],
        ["LeRobot streaming", "290, 267 of 600", "400, 800 ms", "2, 0", "1.2 s (0.06x)",
         "1.08", "5.0 ms (10.0 ms)"],
        ["FarmDataset, zero-config farm", "0, 0 of 600", "1, 4 ms", "0, 0", "17.6 s (0.88x)",
         "1.88", "5.0 ms (10.0 ms)"]]
    note = render(table).split("\n\n")[1]
    assert note == ("`recorder benchmark lerobot --cameras 2` (LeRobot 0.6.1). Measured on "
                    "Test CPU, 2 CPUs, Python 3.11, PyAV 18, FFmpeg 8.")
    goal = lerobot_tables.goal_table(results, [name])
    assert goal.rows[0][1:] == ["1", "0 of 600", "4 ms", "0", "yes"]


def test_the_record_table(tmp_path: Path) -> None:
    results = write(tmp_path, record_comparison())
    table = lerobot_tables.record_table(results, [f"lerobot_record_{int(T0)}"])
    assert [row[2:] for row in table.rows] == [
        ["`lerobot-record`", "3, 3 of 594", "297, 297 of 300", "27000, 28000 ms", "2.0 ms",
         "29.0 s", "0"],
        ["`recorder lerobot-record`", "0, 0 of 600", "300, 300 of 300", "2, 1 ms", "2.0 ms",
         "17.0 s", "0"]]


# -- frames in a dataset's videos -----------------------------------------------------------

def video(path: Path, frames: int, fps: int = 10) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        stream.time_base = Fraction(1, fps)
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((24, 32, 3), index, np.uint8), "rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def test_frames_are_counted_in_each_episodes_span_of_its_video(tmp_path: Path) -> None:
    # LeRobot's layout: both episodes in one file; the second's video lost 2 of its 5 frames
    # (its span, from its duration, is 3 frames long), as a streaming encoder drops them.
    key = "observation.images.cam0"
    video(tmp_path / f"videos/{key}/chunk-000/file-000.mp4", frames=8)
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta/info.json").write_text(json.dumps({
        "fps": 10, "features": {key: {"dtype": "video"}, "action": {"dtype": "float32"}},
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"}))
    rows = {"episode_index": [0, 1], "length": [5, 5],
            f"videos/{key}/chunk_index": [0, 0], f"videos/{key}/file_index": [0, 0],
            f"videos/{key}/from_timestamp": [0.0, 0.5], f"videos/{key}/to_timestamp": [0.5, 0.8]}
    (tmp_path / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.table(rows), tmp_path / "meta/episodes/chunk-000/file-000.parquet")
    found = video_frames(tmp_path)
    assert [(f.episode, f.rows, f.videos) for f in found] == [(0, 5, {key: 5}), (1, 5, {key: 3})]


# -- the lerobot-record harness's parts ------------------------------------------------------

def test_the_loop_watch_counts_episode_cycles_and_those_that_asked_for_no_sleep() -> None:
    watch = LoopWatch()
    sleeps: list[float] = []
    sleep = watch.precise_sleep(sleeps.append)

    def record_loop(*, dataset: object = None, requests: tuple[float, ...] = ()) -> str:
        for seconds in requests:
            sleep(seconds)
        return "done"

    loop = watch.record_loop(record_loop)
    assert loop(dataset="episode", requests=(0.03, 0.0, 0.01)) == "done"
    assert loop(requests=(0.0, 0.0)) == "done"  # the reset period: not an episode
    loop(dataset="episode", requests=(0.0,))
    assert [(e.episode, e.cycles, e.late_cycles) for e in watch.episodes] == [
        (0, 3, [1]), (1, 1, [0])]
    assert all(len(e.work_ms) == e.cycles and min(e.work_ms) >= 0 for e in watch.episodes)
    assert all(e.loop_s >= sum(e.work_ms) / 1000 for e in watch.episodes)
    assert sleeps == [0.03, 0.0, 0.01, 0.0, 0.0, 0.0]  # every sleep still happens
    assert watch.last_frame_at is not None


def test_timed_methods_are_put_back() -> None:
    class Dataset:
        def save_episode(self) -> str:
            return "saved"

    spent: list[float] = []
    with replaced(Dataset, "save_episode", timed(spent)):
        assert Dataset().save_episode() == "saved"
    assert len(spent) == 1 and spent[0] >= 0
    Dataset().save_episode()
    assert len(spent) == 1


def test_both_commands_get_a_lerobot_users_flags(tmp_path: Path) -> None:
    settings = BenchmarkSettings(cameras=2, episodes=3, episode_time=10, width=320, height=240)
    flags = record_flags(settings, tmp_path / "dataset")
    assert "--robot.type=farm_synthetic" in flags and "--teleop.type=farm_synthetic" in flags
    assert ("--robot.cameras={cam0: {type: farm_synthetic, seed: 0, width: 320, height: 240, "
            "fps: 30}, cam1: {type: farm_synthetic, seed: 1, width: 320, height: 240, "
            "fps: 30}}") in flags
    assert {"--dataset.num_episodes=3", "--dataset.episode_time_s=10",
            "--dataset.reset_time_s=0", f"--dataset.root={tmp_path / 'dataset'}"} <= set(flags)
    replay = BenchmarkSettings(mode="real", camera=["/videos/clip.mp4"])
    [cameras] = [f for f in record_flags(replay, tmp_path, portable=True)
                 if f.startswith("--robot.cameras")]
    assert "{type: farm_replay, path: clip.mp4, width: 640" in cameras


# -- the command ------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--compare", "--async-encoding", "--background-load=1",
                                  "--storage=s3://bucket/raw"])
def test_flags_the_comparisons_do_not_take_are_refused(
        flag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["benchmark", "lerobot", flag, "--output-dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert f"leave out {flag.split('=')[0]}" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("lerobot") is not None,
                    reason="LeRobot is installed here")
@pytest.mark.parametrize("action", ["lerobot", "lerobot-record"])
def test_without_lerobot_the_comparisons_exit_2_with_the_install_line(
        action: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["benchmark", action, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"recorder benchmark {action}: LeRobot is not installed here" in err
    assert "pip install 'robot-encoding-farm[lerobot]'" in err
    assert not list(tmp_path.iterdir())


def test_a_run_that_fails_names_itself_and_keeps_the_runs_before_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from recorder.benchmark import lerobot_compare

    def run_variant(variant: str, settings: BenchmarkSettings, *, name: str
                    ) -> tuple[ComparedRun, Path]:
        if variant == "lerobot_streaming":
            raise RuntimeError("the encoder thread died")
        return run("lerobot_inline", [episode(0)]), tmp_path

    monkeypatch.setattr(lerobot_compare, "run_variant", run_variant)
    settings = BenchmarkSettings(cameras=1, width=64, height=48, output_dir=tmp_path)
    with pytest.raises(lerobot_results.ComparisonFailed,
                       match=r"LeRobot streaming \(streaming_encoding, encoder queue of 30\) "
                             r"failed: RuntimeError: the encoder thread died; the runs before "
                             r"it are in .*lerobot_compare_\d+\.json"):
        lerobot_compare.compare(settings, lerobot_version="0.6.1")
    (saved,) = tmp_path.glob("lerobot_compare_*.json")
    assert [r.variant for r in load(saved, LeRobotComparison).runs] == ["lerobot_inline"]
