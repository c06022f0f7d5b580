"""Hand-made BenchmarkResults for tests of the report, the JSON files and the charts."""

from __future__ import annotations

from encoder_worker.jobs import EncodeResult, Status, Timings
from recorder.benchmark.results import (
    BenchmarkConfig,
    BenchmarkResult,
    EnvironmentInfo,
    EpisodeTiming,
    Mode,
    StageStats,
    TaskTiming,
    Totals,
)
from recorder.capture.record_loop import CaptureStats
from recorder.session import EpisodeReport, SessionReport

T0 = 1_700_000_000.0


def make_result(mode: Mode, *, total_s: float, encoding_s: float, blocking_s: float,
                workers: int = 2, queue_size: int = 100, late_frames: int = 0,
                frames_in_videos: int = 600, started_at: float = T0) -> BenchmarkResult:
    """A two-episode, one-camera result whose totals are the numbers given."""
    env = EnvironmentInfo(
        hostname="robot", platform="Linux", cpu_model="Test CPU", cpu_count=2,
        python="3.11", pyav="18", ffmpeg="8", ffmpeg_libraries={"libavcodec": "62.1.1"},
        codec="libx264", codec_description="H.264", broker_kind="test", recorder_pid=100,
        workers_answering=workers if mode == "async" else 0,
    )
    config = BenchmarkConfig(
        mode=mode, episodes=2, episode_time_s=10, fps=30, cameras=1, width=640, height=480,
        codec="libx264", crf=30, gop=2, preset="12", pix_fmt="yuv420p", segment_frames=30,
        video_encoding_workers=workers, video_encoding_queue_size=queue_size,
        storage="/tmp/x",
    )
    episodes, tasks = [], []
    for ep in range(2):
        start = started_at + ep * total_s / 2
        episodes.append(EpisodeTiming(
            episode=ep, started_at=start, capture_s=10.0, frames=300,
            late_frames=late_frames // 2, writer_waits=0, frames_recorded={"cam0": 300},
            save_s=0.01, submission_s=blocking_s / 2 if mode == "async" else 0.0,
            inline_encode_s=blocking_s / 2 if mode == "sync" else 0.0,
            job_ids=[f"j{ep}"]))
        worker = "robot:100" if mode == "sync" else f"farm:{200 + ep}"
        began = start + 10.5
        tasks.append(TaskTiming(
            job_id=f"j{ep}", episode=ep, camera="cam0", status="succeeded", frames=300,
            bytes=1000, worker=worker, submitted_at=start + 10.0, started_at=began,
            finished_at=began + encoding_s / 2, queue_wait_s=0.5, fetch_s=0.1,
            encode_s=encoding_s / 2 - 0.3, verify_s=0.1, publish_s=0.05,
            total_s=encoding_s / 2))
    ready = started_at + total_s + (5.0 if mode == "async" else 0.0)
    totals = Totals(
        total_recording_s=total_s, capture_s=20.0, encoding_s=encoding_s,
        blocking_s=blocking_s, submission_s=blocking_s if mode == "async" else 0.0,
        blocking_pct=100 * blocking_s / total_s, drain_from_first_frame_s=ready - started_at,
        drain_from_last_frame_s=ready - episodes[-1].capture_end, frames_captured=600,
        frames_recorded=600, frames_in_videos=frames_in_videos, late_frames=late_frames,
        tasks=2, tasks_failed=0,
        stages={"queue_wait": StageStats(mean_s=0.5, max_s=0.6),
                "encode": StageStats(mean_s=encoding_s / 2 - 0.3, max_s=encoding_s / 2)},
        workers_used=sorted({t.worker for t in tasks}),
    )
    return BenchmarkResult(
        mode=mode, config=config, environment=env, started_at=started_at,
        recording_done_at=started_at + total_s, all_ready_at=ready, episodes=episodes,
        tasks=tasks, totals=totals, raw_storage="/tmp/x", output_storage="/tmp/x",
    )


def make_config(mode: Mode, *, cameras: int = 2) -> BenchmarkConfig:
    return BenchmarkConfig(
        mode=mode, episodes=2, episode_time_s=1, fps=30, cameras=cameras, width=64, height=48,
        codec="libx264", crf=30, gop=2, preset="12", pix_fmt="yuv420p", segment_frames=10,
        video_encoding_workers=2, video_encoding_queue_size=10, storage="/tmp/x")


def make_encode_result(episode: int, camera: str, *, started_at: float, worker_s: float,
                       frames: int, queue_wait_s: float = 0.0, encode_s: float = 0.0,
                       worker: str = "farm:1", failed: bool = False) -> EncodeResult:
    host, pid = worker.split(":")
    return EncodeResult(
        job_id=f"j{episode}-{camera}", recording=episode, camera=camera,
        status=Status.FAILED if failed else Status.SUCCEEDED,
        error="test failure" if failed else None, output_storage="/tmp/x",
        output_key=f"{episode}-{camera}.mp4", frames=0 if failed else frames, bytes=1000,
        codec="libx264", worker_host=host, worker_pid=int(pid), started_at=started_at,
        finished_at=started_at + worker_s,
        timings=Timings(queue_wait_s=queue_wait_s, encode_s=encode_s, total_s=worker_s))


def make_session_report(mode: Mode, results: list[EncodeResult], *,
                        all_ready_at: float | None) -> SessionReport:
    """Two episodes of two cameras, with round numbers (see test_benchmark_results)."""
    episodes = [
        EpisodeReport(
            recording=0, capture=CaptureStats(frames=30, late_slots=[7], writer_waits=2,
                                            started_at=T0 + 0.1, capture_s=1.0),
            frames_recorded={"cam0": 30, "cam1": 30}, save_s=0.02,
            submission_s=0.03 if mode == "async" else 0.0,
            inline_encode_s=1.2 if mode == "sync" else 0.0, job_ids=["j0-cam0", "j0-cam1"]),
        EpisodeReport(
            recording=1, capture=CaptureStats(frames=29, late_slots=[3, 4], started_at=T0 + 2.0,
                                            capture_s=1.0),
            frames_recorded={"cam0": 29, "cam1": 28}, save_s=0.04,
            submission_s=0.05 if mode == "async" else 0.0,
            inline_encode_s=1.3 if mode == "sync" else 0.0, job_ids=["j1-cam0", "j1-cam1"]),
    ]
    return SessionReport(
        mode=mode, episodes=episodes, results=results, started_at=T0, recording_done_at=T0 + 3.2,
        all_ready_at=all_ready_at, raw_storage="/tmp/x/raw", output_storage="/tmp/x")
