"""The comparison report and its verdicts, from hand-made results: no encodes needed."""

from __future__ import annotations

import pytest
from benchmark_results import (
    T0,
    make_config,
    make_encode_result,
    make_result,
    make_session_report,
)
from test_benchmark_results import ENV

from recorder.benchmark.report import format_report, verdicts
from recorder.benchmark.results import BenchmarkResult, from_session

EXPECTED_LAYOUT = """\
================================================================================
PERFORMANCE COMPARISON RESULTS
================================================================================

SYNCHRONOUS ENCODING:
  Total recording time: 39.13s
  Video encoding time: 23.77s
  Encoding percentage: 60.7%

ASYNCHRONOUS ENCODING:
  Total recording time: 15.64s
  Video encoding time (background): 19.68s
  Task submission time: 0.00s
  Submission percentage: 0.0%

PERFORMANCE IMPROVEMENTS:
  Time saved: 23.49s
  Speedup: 2.50x
  Improvement: 60.0%

ENCODING EFFICIENCY:
  Sync encoding blocks recording for: 23.77s
  Async encoding blocks recording for: 0.00s
  Blocking time reduction: 100.0%
"""


def test_comparison_layout_matches_the_known_layout() -> None:
    sync = make_result("sync", total_s=39.13, encoding_s=23.77, blocking_s=23.77)
    async_ = make_result("async", total_s=15.64, encoding_s=19.68, blocking_s=0.001)
    text = format_report(sync, async_)
    assert text.startswith(EXPECTED_LAYOUT)


def test_report_shows_what_the_layout_hides() -> None:
    sync = make_result("sync", total_s=39.13, encoding_s=23.77, blocking_s=23.77,
                       late_frames=4)
    async_ = make_result("async", total_s=15.64, encoding_s=19.68, blocking_s=0.001)
    text = format_report(sync, async_)
    # Drain time: ready 5 s after the recorder was free.
    last = async_.totals.drain_from_last_frame_s
    assert f"All videos verified and ready: 20.64s after the first frame, {last:.2f}s after " \
           "the last frame" in text
    assert "queue wait     0.50s /    0.60s" in text
    assert "Frames that missed their capture deadline: 4 of 600" in text
    assert "Frames recorded: 600, in verified videos: 600 (2 videos, 0 failed)" in text
    assert "Workers: 2 used of 2 answering" in text and "farm:200, farm:201" in text
    assert "Encoded inline by the recorder: robot:100" in text


def test_good_verdicts() -> None:
    sync = make_result("sync", total_s=39.13, encoding_s=23.77, blocking_s=23.77)
    async_ = make_result("async", total_s=15.64, encoding_s=19.68, blocking_s=0.001)
    found = {v.code: v for v in verdicts(sync, async_)}
    for code in ("submission_fast", "blocking_reduced", "speedup_high", "background_close"):
        assert found[code].level == "good", found
    assert not [v for v in found.values() if v.level == "warning"]
    text = format_report(sync, async_)
    assert "[OK]   recording is 2.50x faster with the farm (> 2x)" in text


def test_slow_submission_warns_and_suggests_a_bigger_queue() -> None:
    sync = make_result("sync", total_s=30, encoding_s=10, blocking_s=10)
    async_ = make_result("async", total_s=25, encoding_s=10, blocking_s=2.5, queue_size=4)
    (warning,) = [v for v in verdicts(sync, async_) if v.code == "submission_slow"]
    assert warning.level == "warning"
    assert "10.0%" in warning.message
    assert warning.fix is not None and "--video-encoding-queue-size (now 4)" in warning.fix


def test_slow_background_encoding_warns_about_workers() -> None:
    sync = make_result("sync", total_s=40, encoding_s=20, blocking_s=20)
    async_ = make_result("async", total_s=20.1, encoding_s=40, blocking_s=0.01, workers=4)
    (warning,) = [v for v in verdicts(sync, async_) if v.code == "background_slow"]
    assert "2.00x" in warning.message
    assert warning.fix is not None and "fewer workers" in warning.fix


@pytest.mark.parametrize(("sync_total", "code", "level"), [
    (22.0, "speedup_low", "warning"),  # 1.1x: encoding is not the bottleneck
    (35.0, "speedup_moderate", "info"),  # 1.75x
    (50.0, "speedup_high", "good"),  # 2.5x
])
def test_speedup_verdicts(sync_total: float, code: str, level: str) -> None:
    sync = make_result("sync", total_s=sync_total, encoding_s=2, blocking_s=2)
    async_ = make_result("async", total_s=20, encoding_s=2, blocking_s=0.01)
    found = {v.code: v for v in verdicts(sync, async_)}
    assert found[code].level == level
    if level == "warning":
        assert "not the bottleneck" in found[code].message
        assert found[code].fix


def test_frames_lost_and_late_frames_are_warnings() -> None:
    async_ = make_result("async", total_s=20, encoding_s=5, blocking_s=0.01,
                         frames_in_videos=590, late_frames=60)
    codes = {v.code for v in verdicts(None, async_) if v.level == "warning"}
    assert codes == {"async_frames_missing", "async_late_frames"}


def test_late_frames_beside_a_background_load_point_to_capture_nice() -> None:
    loaded = make_result("async", total_s=20, encoding_s=5, blocking_s=0.01, late_frames=60)
    loaded.config.background_load = 2
    [late] = [v for v in verdicts(None, loaded) if v.code == "async_late_frames"]
    assert late.fix and "--capture-nice -10" in late.fix
    loaded.config.capture_nice = -10  # already ahead: the hint would not help
    [late] = [v for v in verdicts(None, loaded) if v.code == "async_late_frames"]
    assert late.fix and "--capture-nice" not in late.fix
    assert "2 background load processes, recorder at nice -10" in format_report(None, loaded)


def test_single_mode_report() -> None:
    sync = make_result("sync", total_s=30, encoding_s=10, blocking_s=10)
    text = format_report(sync, None)
    assert "SYNCHRONOUS ENCODING BENCHMARK RESULTS" in text
    assert "Encoding percentage: 33.3%" in text
    assert "PERFORMANCE IMPROVEMENTS" not in text


def test_report_of_a_recorded_session_with_a_failed_video() -> None:
    results = [make_encode_result(ep, cam, started_at=T0 + 3.5, worker_s=1.0, frames=frames,
                                  failed=(ep, cam) == (1, "cam1"))
               for ep, frames in ((0, 30), (1, 29)) for cam in ("cam0", "cam1")]
    report = make_session_report("async", results, all_ready_at=T0 + 6.0)
    text = format_report(None, from_session(report, config=make_config("async"),
                                            environment=ENV))
    assert "Total recording time: 3.20s" in text
    assert "Video encoding time (background): 3.00s" in text
    # Late frames count loop iterations (all cameras at once), not frames of each camera.
    assert "Frames that missed their capture deadline: 3 of 59" in text
    assert "Frames recorded: 117, in verified videos: 89 (4 videos, 1 failed)" in text
    assert "5.90s after the first frame, 3.00s after the last frame" in text


def test_the_report_says_when_the_dataset_was_complete_the_backlog_and_raw_left() -> None:
    report = make_session_report("async", [], all_ready_at=T0 + 6.0)
    report.dataset_complete_at = T0 + 6.0
    report.episodes[0].backlog, report.episodes[1].backlog = 0, 2
    text = format_report(None, from_session(report, config=make_config("async"),
                                            environment=ENV, raw_left_bytes=5_000_000))
    assert ("Dataset complete 3.00s after the last frame (1.53x the capture time of 2.0s); "
            "from the capture's start 3.00x the capture time") in text
    assert "Backlog: at most 2 episodes recorded and not encoded yet (per episode, once it " \
           "reached the farm: 0, 2)" in text
    assert "Raw frames left on disk: 5.0 MB" in text


def test_an_incomplete_dataset_is_said() -> None:
    report = make_session_report("async", [], all_ready_at=None)
    text = format_report(None, from_session(report, config=make_config("async"),
                                            environment=ENV))
    assert "Dataset complete: not in this run" in text


def overrun_result(camera_mode: str) -> BenchmarkResult:
    result = make_result("async", total_s=20, encoding_s=5, blocking_s=0.01, late_frames=6)
    result.config.camera_mode = camera_mode  # type: ignore[assignment]
    for episode in result.episodes:
        episode.overrun_slots = [4, 5]
        episode.busy_ms_median, episode.read_ms_median = 36.0, 22.0
    return result


def test_slots_late_by_synthetic_frame_making_are_the_harness_cost() -> None:
    result = overrun_result("synthetic")
    [harness] = [v for v in verdicts(None, result) if v.code == "async_harness_cost"]
    assert harness.level == "warning"
    assert "4 of the 6 late slots took longer than a period (33.3 ms) of the loop's own " \
           "work, not of waiting" in harness.message
    assert "of which the cameras' and robot's reads 22.0 ms" in harness.message
    assert "the benchmark harness's cost, not the farm's" in harness.message
    assert harness.fix and "--mode real" in harness.fix
    assert "Slots whose own work took longer than a period: 4" in format_report(None, result)


def test_overruns_with_real_cameras_are_not_blamed_on_the_harness() -> None:
    codes = {v.code for v in verdicts(None, overrun_result("real"))}
    assert "async_loop_overrun" in codes and "async_harness_cost" not in codes


def test_no_overrun_no_harness_verdict() -> None:
    result = make_result("async", total_s=20, encoding_s=5, blocking_s=0.01, late_frames=60)
    codes = {v.code for v in verdicts(None, result)}
    assert not {"async_harness_cost", "async_loop_overrun"} & codes
