"""`recorder benchmark lerobot` and `recorder benchmark lerobot-record` end to end, tiny: real
LeRobot 0.6 (its own LeRobotDataset, inline and streaming; its own lerobot-record), the
zero-config farm, every frame of the videos decoded and counted. Runs in the LeRobot
environment (make test-lerobot)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from lerobot_runs import lerobot_environment

from recorder.benchmark.lerobot_results import (
    ORDER,
    LeRobotComparison,
    LeRobotRecordComparison,
    load,
)

pytest.importorskip("lerobot.scripts.lerobot_record", reason="LeRobot runs in its own "
                    "environment: make test-lerobot")

pytestmark = [pytest.mark.lerobot, pytest.mark.integration]

# Small and short: 2-core machines. Frames per episode: 15.
TINY = ["--cameras", "2", "--episodes", "2", "--episode-time", "1", "--fps", "15",
        "--width", "160", "--height", "120"]


def benchmark(action: str, tmp_path: Path) -> tuple[str, Path]:
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, "-m", "recorder.cli", "benchmark", action, *TINY,
                           "--output-dir", str(out)], env=lerobot_environment(tmp_path,
                                                                               keep_raw=False),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, out


def machine_paths(path: Path, tmp_path: Path) -> list[str]:
    """Strings of a results file that name a folder of this machine."""
    def strings(value: object) -> list[str]:
        if isinstance(value, str):
            return [value]
        if isinstance(value, dict):
            return [s for item in value.values() for s in strings(item)]
        if isinstance(value, list):
            return [s for item in value for s in strings(item)]
        return []

    return [s for s in strings(json.loads(path.read_text()))
            if s.startswith("/") or str(tmp_path) in s]


def total_episodes(root: Path) -> int:
    return json.loads((root / "meta/info.json").read_text())["total_episodes"]


def test_lerobot_inline_streaming_and_the_farm_on_the_same_loop_and_frames(tmp_path):
    printed, out = benchmark("lerobot", tmp_path)
    assert "LEROBOT 0.6.1'S OWN DATASET AGAINST THE FARM" in printed
    assert "GOAL (issue 18)" in printed
    (path,) = out.glob("lerobot_compare_*.json")
    result = load(path, LeRobotComparison)
    assert machine_paths(path, tmp_path) == []
    assert result.command and result.command.startswith("recorder benchmark lerobot --cameras 2")
    assert [run.variant for run in result.runs] == list(ORDER)
    assert result.config.image_writer_threads == 8 and result.config.encoder_queue_maxsize == 30
    for run in result.runs:
        assert run.cameras == ["cam0", "cam1"]
        assert [(ep.frames, ep.rows) for ep in run.episodes] == [(15, 15), (15, 15)]
        assert run.complete_at is not None and run.complete_at >= run.last_frame_at
        assert all(ep.save_s >= 0 for ep in run.episodes) and run.process_cpu_s > 0
        assert total_episodes(out / run.dataset) == 2
        for ep in run.episodes:
            assert set(ep.frames_in_videos) == {"cam0", "cam1"}
            if run.variant == "lerobot_streaming":  # its encoder may drop frames under load
                assert all(0 <= n <= 15 for n in ep.frames_in_videos.values())
            else:  # inline encodes every frame written; the farm never drops one
                assert ep.frames_in_videos == {"cam0": 15, "cam1": 15}
    inline, _, farm = result.runs
    # Child processes: LeRobot's encoder pool; the farm's workers and redis-server.
    assert inline.children_cpu_s > 0 and farm.children_cpu_s > 0
    assert not list((out / farm.dataset / "raw").glob("**/manifest.json"))  # retention


def test_plain_lerobot_record_against_recorder_lerobot_record(tmp_path):
    printed, out = benchmark("lerobot-record", tmp_path)
    assert "LEROBOT-RECORD 0.6.1 AGAINST RECORDER LEROBOT-RECORD" in printed
    (path,) = out.glob("lerobot_record_*.json")
    result = load(path, LeRobotRecordComparison)
    assert machine_paths(path, tmp_path) == []
    plain, farm = result.runs
    assert (plain.command, farm.command) == ("lerobot-record", "recorder lerobot-record")
    assert plain.argv == farm.argv and "--robot.type=farm_synthetic" in plain.argv
    for run in result.runs:
        assert run.exit_code == 0
        assert [ep.episode for ep in run.episodes] == [0, 1]
        assert all(ep.cycles > 0 and len(ep.work_ms) == ep.cycles and ep.loop_s > 0
                   for ep in run.episodes)
        assert len(run.save_s) == 2 and run.last_frame_at is not None
        assert total_episodes(out / run.dataset) == 2
