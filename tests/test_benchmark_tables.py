"""benchmarks/tables.py: the README's tables are what the committed results files give,
and the generator's parts (regions, rendering, the scripts' results files) on their own."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import result_files
import run_tables
import script_tables
import tables
from markdown_tables import Results, Table, TableError, render, rewrite
from result_files import (
    SCHEMA_VERSION,
    Load,
    Machine,
    RawFormatRounds,
    RawFormatSample,
    RawFormatsResult,
    RawTransportResult,
    SplitEpisodeResult,
    SplitRun,
    StatusCase,
    StatusLatencyResult,
    SvtThreadsResult,
    WorkerEfficiencyResult,
)

from recorder.benchmark import lerobot_results, results_file
from recorder.benchmark import results as benchmark_results
from recorder.benchmark.results_file import ResultsFileError

RESULTS = REPO / "benchmarks" / "results"
MODELS: dict[str, type[result_files.ScriptResult]] = {
    "worker_efficiency": WorkerEfficiencyResult, "raw_formats": RawFormatsResult,
    "raw_transport": RawTransportResult, "split_episode": SplitEpisodeResult,
    "status_latency": StatusLatencyResult, "svt_threads": SvtThreadsResult}
LEROBOT_MODELS: dict[str, type[lerobot_results.LeRobotBenchmark]] = {
    "lerobot_compare": lerobot_results.LeRobotComparison,
    "lerobot_record": lerobot_results.LeRobotRecordComparison}


def test_the_readme_tables_are_what_the_committed_results_files_give(
        capsys: pytest.CaptureFixture[str]) -> None:
    # A table edited by hand, or left behind by a changed results file, fails here:
    # `python benchmarks/tables.py` writes them again.
    assert tables.main(["--check"]) == 0, capsys.readouterr().out


def test_every_committed_results_file_is_read_by_its_schema() -> None:
    files = sorted(RESULTS.glob("*.json"))
    assert files
    for path in files:
        kind = path.stem.rpartition("_")[0]
        if kind in ("sync_benchmark", "async_benchmark"):
            benchmark_results.load(path)
        elif kind in LEROBOT_MODELS:
            lerobot_results.load(path, LEROBOT_MODELS[kind])
        else:
            assert kind in MODELS, f"{path.name}: no schema reads it"
            result = result_files.load(path, MODELS[kind])
            assert result.command.startswith("python benchmarks/")


def test_a_hand_edited_table_fails_the_check(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    text = tables.README.read_text()
    edited = text.replace("| 0, 0 of 600 |", "| 0, 1 of 600 |", 1)
    assert edited != text
    readme.write_text(edited)
    assert tables.main(["--check", "--readme", str(readme)]) == 1
    assert "python benchmarks/tables.py" in capsys.readouterr().out
    assert readme.read_text() == edited  # --check changes nothing
    assert tables.main(["--readme", str(readme)]) == 0
    assert readme.read_text() == text


# -- regions ------------------------------------------------------------------------------

def one_table() -> Table:
    return Table(["a", "b"], [["x", "1"]])


def test_rewrite_replaces_only_what_is_between_the_markers() -> None:
    text = ("# Title\nprose 1.5 s\n<!-- table:one -->\nstale | 9 |\n<!-- /table:one -->\n"
            "after\n")
    made = rewrite(text, {"one": one_table})
    assert made == ("# Title\nprose 1.5 s\n<!-- table:one -->\n| a | b |\n|---|---:|\n"
                    "| x | 1 |\n<!-- /table:one -->\nafter\n")
    assert rewrite(made, {"one": one_table}) == made


@pytest.mark.parametrize(("text", "error"), [
    ("<!-- table:one -->\n", "unpaired"),
    ("<!-- table:one -->\n<!-- table:two -->\n<!-- /table:two -->\n<!-- /table:one -->\n",
     "out of order"),
    ("<!-- table:one -->\n<!-- /table:two -->\n", "out of order"),
    ("<!-- table:one -->\n<!-- /table:one -->\n<!-- table:one -->\n<!-- /table:one -->\n",
     "twice"),
    ("<!-- table:one -->\n<!-- /table:one -->\n<!-- table:gone -->\n<!-- /table:gone -->\n",
     "no table is defined for the region 'gone'"),
    ("no markers\n", "without a region in the README: one"),
])
def test_wrong_markers_are_refused_with_the_reason(text: str, error: str) -> None:
    with pytest.raises(TableError, match=error):
        rewrite(text, {"one": one_table})


def test_a_missing_results_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TableError, match=r"async_benchmark_1\.json is not in"):
        Results(tmp_path).run("async_benchmark_1")


def test_a_row_of_the_wrong_width_is_refused() -> None:
    with pytest.raises(TableError, match="1 cells for 2 columns"):
        Table(["a", "b"], [["x"]])


# -- the scripts' results files -----------------------------------------------------------

def header(benchmark: str) -> dict[str, object]:
    return dict(benchmark=benchmark, command="python benchmarks/x.py --frames 3",
                code="abc1234", started_at=datetime(2026, 12, 6, 15, 0, tzinfo=UTC),
                machine=Machine(cpu_model="Test CPU", cores=2, python="3.11.7", pyav="18.1.0",
                                ffmpeg="8.1.2", platform="Linux"),
                load=Load(at_start=0.5, at_end=1.5, quiet_below=1.0, waited_s=30.0))


def worker_result() -> WorkerEfficiencyResult:
    seconds = {"bare yuv420p": [1.0, 1.0], "bare yuv420p, threads demoted": [1.0, 2.0],
               "bare + verify, threads demoted": [1.25, 2.0], "bare rgb24": [1.0, 1.0],
               "worker": [2.0, 2.5]}
    return WorkerEfficiencyResult(
        **header("worker_efficiency"), frames=100, width=64, height=48, rounds=2,
        codec="libsvtav1", codec_options={"crf": "30"}, seconds=seconds,
        worker_stages=[{k: 0.5 for k in script_tables.STAGES}] * 2)


def test_a_results_file_round_trip_and_its_note(tmp_path: Path) -> None:
    result = worker_result()
    path = result_files.save(result, tmp_path)
    assert path.name == f"worker_efficiency_{int(result.started_at.timestamp())}.json"
    data = json.loads(path.read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert {"cpu_model", "cores", "python", "pyav", "ffmpeg"} <= set(data["machine"])
    assert result_files.load(path, WorkerEfficiencyResult) == result
    note = render(script_tables.worker_efficiency(result, path)).split("\n\n")[1]
    assert note == (f"From `{path.name}`. `python benchmarks/x.py --frames 3` (code `abc1234`, "
                    "2026-12-06 15:00 UTC, load average 0.50 at the start). Measured on "
                    "Test CPU, 2 CPUs, Python 3.11.7, PyAV 18.1.0, FFmpeg 8.1.2.")


def test_a_results_file_of_another_kind_or_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = result_files.save(worker_result(), tmp_path)
    with pytest.raises(ResultsFileError, match="holds worker_efficiency results, not raw"):
        result_files.load(path, RawFormatsResult)
    data = json.loads(path.read_text())
    data["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(data))
    with pytest.raises(ResultsFileError, match="schema_version"):
        result_files.load(path, WorkerEfficiencyResult)
    path.write_text("not json")
    with pytest.raises(ResultsFileError, match="not a benchmarks/ results file"):
        result_files.load(path, WorkerEfficiencyResult)


def test_the_command_line_holds_no_path_of_this_machine(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    monkeypatch.setattr(sys, "argv", [str(REPO / "benchmarks" / "raw_formats.py"),
                                      "--output-dir", "/tmp/somewhere/out", "--frames", "5"])
    assert result_files.command_line() == \
        "python benchmarks/raw_formats.py --output-dir out --frames 5"


def test_worker_ratios_are_per_round_then_the_median() -> None:
    table = script_tables.worker_ratios(worker_result())
    rows = {row[0]: row for row in table.rows}
    # worker fps / bare (demoted) fps = bare seconds / worker seconds: 0.5 and 0.8.
    assert rows["worker / bare yuv420p, threads demoted"][1:] == ["0.500, 0.800", "**0.650**"]
    assert rows["bare + verify, threads demoted / bare yuv420p, threads demoted"][2] == \
        "**0.900**"


def test_the_cpu_per_frame_column_comes_with_files_that_measured_it() -> None:
    old = script_tables.worker_efficiency(worker_result())
    assert len(old.header) == 3  # files from before cpu_seconds: no column
    result = worker_result()
    result.cpu_seconds = {"worker": [2.6, 2.4, 3.0], "bare yuv420p": [2.0]}
    table = script_tables.worker_efficiency(result)
    rows = {row[0]: row for row in table.rows}
    assert table.header[-1] == "median CPU ms per frame (all threads)"
    # median 2.6 s over 100 frames; a path without CPU times says so
    assert rows[script_tables.WORKER_PATHS["worker"]][-1] == "26.00"
    assert rows[script_tables.WORKER_PATHS["bare rgb24"]][-1] == "-"


def test_split_latency_against_the_goal() -> None:
    result = SplitEpisodeResult(
        **header("split_episode"), seconds=30, fps=30, width=640, height=480, frames=900,
        codec="libsvtav1", runs=[SplitRun(workers=1, parts=1, latency_s=30, worker_s=30, join_s=0),
                                 SplitRun(workers=2, parts=4, latency_s=16.5, worker_s=31,
                                          join_s=0.2)])
    assert [row[1:5] for row in script_tables.split_episode(result).rows] == [
        ["unsplit", "30.0", "36.0", "1.00"], ["4", "16.5", "18.0", "1.10"]]


def test_raw_formats_are_medians_over_rounds() -> None:
    def sample(bytes_: float, write: float) -> RawFormatSample:
        return RawFormatSample(bytes_per_frame=bytes_, write_cpu_ms=write, write_wall_ms=1,
                               read_cpu_ms=0.5)

    result = RawFormatsResult(
        **header("raw_formats"), frames=10, width=640, height=480, rounds=3,
        rgb24_bytes_per_frame=921600, formats=[
            RawFormatRounds(pix_fmt="rgb24", compression="none",
                            rounds=[sample(921600, w) for w in (0.6, 0.7, 9.0)]),
            RawFormatRounds(pix_fmt="yuv420p", compression="none",
                            rounds=[sample(460800, w) for w in (1.0, 1.2, 1.1)])])
    rows = script_tables.raw_formats(result).rows
    assert rows[1] == ["yuv420p", "none", "450", "0.50", "1.10", "+0.40", "0.50", "55"]


def test_status_latency_table() -> None:
    result = StatusLatencyResult(
        **header("status_latency"), queued_jobs=1000, repeats=3,
        cases=[StatusCase(workers=1, cli_s=[0.4, 0.5, 0.9], api_s=[0.01, 0.02, 0.03],
                          answered_in_s=[0.005, 0.006, 0.007], queue_depth=1000)])
    assert script_tables.status_latency(result).rows == [
        ["1", "1,000", "0.50 (0.40-0.90)", "0.02 (0.01-0.03)", "0.006"]]


def test_a_run_that_waited_for_quiet_in_vain_says_so_and_decides_no_goal(tmp_path: Path
                                                                         ) -> None:
    result = SplitEpisodeResult(
        **{**header("split_episode"),
           "load": Load(at_start=3.5, at_end=8.0, quiet_below=1.0, waited_s=1200.0)},
        seconds=30, fps=30, width=640, height=480, frames=900, codec="libsvtav1",
        runs=[SplitRun(workers=1, parts=1, latency_s=30, worker_s=30, join_s=0),
              SplitRun(workers=2, parts=4, latency_s=16, worker_s=31, join_s=0.2)])
    path = result_files.save(result, tmp_path)
    note = render(script_tables.split_episode(result, path))
    assert "**The machine did not get quiet**: after 1200 s of waiting for a load average " \
           "below 1, it measured at 3.50" in note
    _, met, _ = run_tables.goal_split(Results(tmp_path), path.stem, most=1.2)
    assert met == "not shown: measured at load 3.50, rerun"


# -- what the user waits for (issue 21), and tables still to be measured -------------------

def test_a_table_without_committed_files_says_so_instead_of_numbers() -> None:
    made = tables.measured([], lambda: one_table(), "recorder benchmark --episodes 6")()
    text = render(made)
    assert text.startswith("**No results file is committed for this table yet**")
    assert "`recorder benchmark --episodes 6`" in text and "|" not in text
    assert tables.measured(["x"], one_table, "cmd")() == one_table()


def test_the_waits_of_a_run_and_of_a_file_made_before_them(tmp_path: Path) -> None:
    from benchmark_results import make_result

    new = make_result("async", total_s=20, encoding_s=10, blocking_s=0.01, started_at=1.0)
    t = new.totals
    t.complete_after_last_frame_s = 5.0
    t.complete_after_last_frame_ratio, t.complete_after_start_ratio = 0.25, 1.25
    t.backlog_max, t.raw_left_bytes = 2, 0
    for episode, backlog in zip(new.episodes, (1, 2), strict=True):
        episode.backlog, episode.overrun_slots = backlog, [3] * backlog
    results_file.save(new, tmp_path / "async_benchmark_1.json")
    old = make_result("async", total_s=20, encoding_s=10, blocking_s=0.01, started_at=2.0)
    data = json.loads(old.model_dump_json(exclude={"totals": {"complete_after_start_ratio",
                                                              "raw_left_bytes"}}))
    for episode in data["episodes"]:
        del episode["backlog"], episode["overrun_slots"]
    (tmp_path / "async_benchmark_2.json").write_text(json.dumps(data))
    metrics = [run_tables.COMPLETE, run_tables.COMPLETE_START, run_tables.BACKLOG,
               run_tables.RAW_LEFT, run_tables.OVERRUNS]
    table = run_tables.by_run(Results(tmp_path), ["async_benchmark_1", "async_benchmark_2"],
                              metrics)
    assert table.rows == [["5.0 s (0.25x)", "1.25", "2 (1, 2)", "0", "1, 2"],
                          ["-", "-", "-", "-", "-"]]
