"""The results files: schema, round trip, refusal of what is not one; the charts from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_results import (
    T0,
    make_config,
    make_encode_result,
    make_result,
    make_session_report,
)

from recorder.benchmark.analyze import write_charts
from recorder.benchmark.results import (
    SCHEMA_VERSION,
    BenchmarkResult,
    EnvironmentInfo,
    from_session,
    load,
    result_path,
)
from recorder.benchmark.results_file import ResultsFileError, save

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_file_name_and_round_trip(tmp_path: Path) -> None:
    result = make_result("async", total_s=20, encoding_s=10, blocking_s=0.01)
    path = save(result, result_path(tmp_path, result))
    assert path.name == f"async_benchmark_{int(T0)}.json"
    assert load(path) == result


def test_json_has_the_documented_sections(tmp_path: Path) -> None:
    result = make_result("sync", total_s=20, encoding_s=10, blocking_s=10)
    data = json.loads(save(result, tmp_path / "r.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert {"config", "environment", "episodes", "tasks", "totals", "verdicts"} <= set(data)
    assert {"cpu_model", "cpu_count", "python", "pyav", "ffmpeg", "ffmpeg_libraries", "codec",
            "broker_kind"} <= set(data["environment"])
    assert {"started_at", "capture_s", "submission_s", "inline_encode_s", "late_frames"} \
        <= set(data["episodes"][0])
    assert {"worker", "queue_wait_s", "fetch_s", "encode_s", "verify_s", "publish_s",
            "total_s"} <= set(data["tasks"][0])
    # The schema itself is available to other tools.
    schema = BenchmarkResult.model_json_schema()
    assert "schema_version" in schema["properties"]


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    result = make_result("sync", total_s=20, encoding_s=10, blocking_s=10)
    result.schema_version = SCHEMA_VERSION + 1
    path = save(result, tmp_path / "new.json")
    with pytest.raises(ResultsFileError, match="upgrade"):
        load(path)


@pytest.mark.parametrize("content", ["not json", '{"mode": "sync"}', "[]"])
def test_other_files_are_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(ResultsFileError, match="not a benchmark results file"):
        load(path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ResultsFileError, match="cannot read"):
        load(tmp_path / "absent.json")


def test_charts_are_pngs_and_worker_chart_only_when_workers_differ(tmp_path: Path) -> None:
    sync = make_result("sync", total_s=30, encoding_s=10, blocking_s=10)
    two = make_result("async", total_s=20, encoding_s=10, blocking_s=0.01, workers=2)
    (timeline,) = write_charts([sync, two], tmp_path / "a")
    assert timeline.read_bytes().startswith(PNG_MAGIC)
    four = make_result("async", total_s=20, encoding_s=12, blocking_s=0.01, workers=4)
    paths = write_charts([sync, two, four], tmp_path / "b")
    assert [p.name.split("_")[0] for p in paths] == ["timeline", "workers"]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in paths)


ENV = EnvironmentInfo(
    hostname="robot", platform="Linux", cpu_model="Test CPU", cpu_count=2, python="3.11",
    pyav="18", ffmpeg="8", ffmpeg_libraries={}, codec="libx264", codec_description="H.264",
    broker_kind="test", recorder_pid=100)


def test_totals_of_an_async_session() -> None:
    # Episode 0 captures T0+0.1..1.1, episode 1 T0+2.0..3.0; the recorder is free at T0+3.2
    # and the last video is published at T0+6.0. One of four encodes fails.
    results = [
        make_encode_result(0, "cam0", started_at=T0 + 1.5, worker_s=1.0, frames=30,
                           queue_wait_s=0.2, encode_s=0.8, worker="farm:1"),
        make_encode_result(0, "cam1", started_at=T0 + 1.6, worker_s=1.5, frames=30,
                           queue_wait_s=0.4, encode_s=1.2, worker="farm:2"),
        make_encode_result(1, "cam0", started_at=T0 + 3.5, worker_s=0.75, frames=29,
                           queue_wait_s=0.3, encode_s=0.6, worker="farm:1"),
        make_encode_result(1, "cam1", started_at=T0 + 3.6, worker_s=0.5, frames=28,
                           queue_wait_s=0.5, encode_s=0.4, worker="farm:2", failed=True),
    ]
    report = make_session_report("async", results, all_ready_at=T0 + 6.0)
    result = from_session(report, config=make_config("async"), environment=ENV)
    t = result.totals
    assert t.total_recording_s == pytest.approx(3.2)
    assert t.capture_s == pytest.approx(2.0)
    # Worker time of the verified videos only; the failed job's 0.5 s is not encoding.
    assert t.encoding_s == pytest.approx(1.0 + 1.5 + 0.75)
    # Blocking: committing each episode (0.02 + 0.04 s) and sending its jobs.
    assert t.submission_s == pytest.approx(0.08) and t.blocking_s == pytest.approx(0.14)
    assert t.blocking_pct == pytest.approx(100 * 0.14 / 3.2)
    assert t.drain_from_first_frame_s == pytest.approx(5.9)
    assert t.drain_from_last_frame_s == pytest.approx(3.0)
    assert t.frames_captured == (30 + 29) * 2
    assert t.frames_recorded == 30 + 30 + 29 + 28
    assert t.frames_in_videos == 30 + 30 + 29
    assert t.late_frames == 3
    assert (t.tasks, t.tasks_failed) == (4, 1)
    assert t.stages["queue_wait"].mean_s == pytest.approx(0.35)
    assert t.stages["queue_wait"].max_s == pytest.approx(0.5)
    assert t.stages["encode"].mean_s == pytest.approx(0.75)
    assert t.workers_used == ["farm:1", "farm:2"]
    # Per-task timings: submitted = started - queue wait, in order of start.
    assert [task.job_id for task in result.tasks] == ["j0-cam0", "j0-cam1", "j1-cam0",
                                                      "j1-cam1"]
    assert result.tasks[0].submitted_at == pytest.approx(T0 + 1.3)
    assert result.episodes[1].capture_end == pytest.approx(T0 + 3.0)


def test_totals_of_a_sync_session() -> None:
    results = [
        make_encode_result(ep, cam, started_at=T0 + 1.1 + ep * 2 + i * 0.6, worker_s=0.6,
                           frames=frames, worker="robot:100")
        for ep, frames in ((0, 30), (1, 29)) for i, cam in enumerate(("cam0", "cam1"))
    ]
    report = make_session_report("sync", results, all_ready_at=T0 + 3.2)
    t = from_session(report, config=make_config("sync"), environment=ENV).totals
    # Sync: encoding is the time the recorder blocked encoding inline.
    assert t.encoding_s == pytest.approx(2.5) and t.blocking_s == pytest.approx(2.56)
    assert t.submission_s == 0.0
    assert t.blocking_pct == pytest.approx(100 * 2.56 / 3.2)
    assert t.drain_from_first_frame_s == pytest.approx(3.1)
    assert t.drain_from_last_frame_s == pytest.approx(0.2)
    assert t.frames_in_videos == 30 + 30 + 29 + 29
    assert t.workers_used == ["robot:100"]


def test_totals_without_waiting_for_the_farm() -> None:
    report = make_session_report("async", [], all_ready_at=None)
    t = from_session(report, config=make_config("async"), environment=ENV).totals
    assert t.drain_from_first_frame_s is None and t.drain_from_last_frame_s is None
    assert t.encoding_s == 0.0 and t.tasks == 0 and t.stages == {}


def test_what_the_user_waits_for_completion_backlog_and_raw_left() -> None:
    # Captures of 30 and 29 slots at 30 fps (asked: 59/30 s) at T0+0.1 and T0+2.0, 1 s each;
    # the dataset is complete at T0+6.0.
    report = make_session_report("async", [], all_ready_at=T0 + 6.0)
    report.dataset_complete_at = T0 + 6.0
    report.episodes[0].backlog, report.episodes[1].backlog = 1, 2
    result = from_session(report, config=make_config("async"), environment=ENV,
                          raw_left_bytes=1234)
    t = result.totals
    assert t.capture_s == pytest.approx(2.0)  # as measured
    assert t.complete_after_last_frame_s == pytest.approx(3.0)
    assert t.complete_after_last_frame_ratio == pytest.approx(3.0 / (59 / 30))
    assert t.complete_after_start_ratio == pytest.approx(5.9 / (59 / 30))
    assert [ep.backlog for ep in result.episodes] == [1, 2] and t.backlog_max == 2
    assert t.raw_left_bytes == 1234
    assert result.dataset_complete_at == T0 + 6.0


def test_a_dataset_left_incomplete_has_no_completion_time() -> None:
    report = make_session_report("async", [], all_ready_at=T0 + 6.0)  # not complete
    t = from_session(report, config=make_config("async"), environment=ENV).totals
    assert t.complete_after_last_frame_s is None and t.complete_after_start_ratio is None


def test_a_file_made_before_these_fields_still_loads_without_them(tmp_path: Path) -> None:
    data = json.loads(make_result("async", total_s=20, encoding_s=10, blocking_s=0.01)
                      .model_dump_json())
    for key in ("complete_after_last_frame_s", "backlog_max",
                "raw_left_bytes", "complete_after_last_frame_ratio",
                "complete_after_start_ratio"):
        del data["totals"][key]
    for episode in data["episodes"]:
        for key in ("backlog", "read_ms_median", "read_ms_p99", "overrun_slots"):
            del episode[key]
    del data["dataset_complete_at"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    old = load(path)
    assert old.schema_version == SCHEMA_VERSION
    assert "raw_left_bytes" not in old.totals.model_fields_set  # tables show '-', not 0
    assert old.totals.complete_after_last_frame_s is None
