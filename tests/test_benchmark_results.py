"""The results files: schema, round trip, refusal of what is not one; the charts from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from benchmark_results import T0, make_result

from recorder.benchmark.analyze import write_charts
from recorder.benchmark.results import (
    SCHEMA_VERSION,
    BenchmarkResult,
    ResultsFileError,
    load,
    result_path,
    save,
)

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
