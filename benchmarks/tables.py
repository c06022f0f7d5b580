"""benchmarks/README.md's tables, made from the results files in benchmarks/results/.

    python benchmarks/tables.py            # rewrite every table of the README
    python benchmarks/tables.py --check    # exit 1 with a diff if the README is not what
                                           # the files give (tests/test_benchmark_tables.py)

No number in a README table is typed by hand. A table is the region between
`<!-- table:NAME -->` and `<!-- /table:NAME -->`, and readme_tables() says what NAME is
made of. A table for a new scenario is one entry there: its results files and the
metrics to show (run_tables.py), e.g.

    "continuous": lambda: by_run(r, [A(1796000000), A(1796000400)], [FILE, LOAD, LATE]),

and, for a measure no metric shows yet, a Metric: a label and a function of a Run (one
results file). A new script's results get a model in result_files.py and a table function
in script_tables.py.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import lerobot_tables
import script_tables
from markdown_tables import Pending, Results, Table, TableError, rewrite
from result_files import (
    RESULTS_DIR,
    RawFormatsResult,
    RawTransportResult,
    SplitEpisodeResult,
    StatusLatencyResult,
    SvtThreadsResult,
    WorkerEfficiencyResult,
)
from run_tables import (
    BACKGROUND,
    BACKGROUND_LOAD,
    BACKLOG,
    BLOCKED,
    BUSY,
    COMMIT,
    COMMITTING,
    COMPLETE,
    COMPLETE_START,
    CPU,
    ENCODE_STAGE,
    ENCODING,
    FETCH_STAGE,
    FILE,
    FIRST_SLOT,
    FRAMES,
    INLINE_OR_SENT,
    LATE,
    LATE_WHICH,
    LOAD,
    NICE,
    OVERRUNS,
    RAW,
    RAW_LEFT,
    READY,
    RECORDING,
    REDUCTION,
    SHAPE,
    SPEEDUP,
    STAGES_SUMMED,
    TIME,
    TOTAL_CAPTURE,
    WAIT,
    WINDOWS,
    WORKERS,
    WORKERS_BESIDE,
    Goal,
    Metric,
    by_metric,
    by_run,
    goal_late,
    goal_late_loaded,
    goal_raw,
    goal_split,
    goal_total,
    goal_wait,
    goal_worker,
    goals_table,
    late_summary,
)

README = Path(__file__).resolve().parent / "README.md"


# -- the README's tables ----------------------------------------------------------------------

def S(started: int) -> str:
    """A sync run's results file, by the unix time it started."""
    return f"sync_benchmark_{started}"


def A(started: int) -> str:
    """An async run's results file, by the unix time it started."""
    return f"async_benchmark_{started}"


# The runs the goals table reads (sections "second night" and "night").
SYNTHETIC_QUIET = [A(1795814507)]
REPLAYED_QUIET = [A(1795812004), A(1795812181), A(1795812393), A(1795812768)]
REPLAYED_LOADED = [A(1795816993), A(1795817134), A(1795817282), A(1795817453)]
SYNTHETIC_LOADED = [A(1795804819), A(1795804994), A(1795805146), A(1795805356),  # alternated
                    A(1795808226), A(1795808501), A(1795808788)]  # three more at -10
RAW_FORMATS = "raw_formats_1796582187"
RAW_TRANSPORT = "raw_transport_1796582110"
WORKER_EFFICIENCY = "worker_efficiency_1796630300"
SPLIT_EPISODE = "split_episode_1796583173"
STATUS_LATENCY = "status_latency_1796570795"
# svt_threads.py, 2 encodes on 1 CPU in SCHED_IDLE; since 2026-12-07 09:00 its encodes
# demote SVT's real-time threads as workers do (svt_threads_1796601440 did not, as root).
SVT_THREADS = "svt_threads_1796634858"
# SVT-AV1 levels, each encode verifying, threads demoted: two workers on 2 CPUs, one
# encode on 2 CPUs, one at 1080p, one on 1 CPU (taskset).
SVT_LEVELS = "svt_threads_1796634642"
SVT_LEVEL_ONE = "svt_threads_1796635020"
SVT_LEVEL_1080P = "svt_threads_1796635123"
SVT_LEVEL_ONE_CPU = "svt_threads_1796635190"

GOALS = [
    Goal("0 late capture slots, async, 4 cameras, 2 local workers (2 x 10 s at 30 fps)",
         "second night", partial(goal_late, synthetic=SYNTHETIC_QUIET, replayed=REPLAYED_QUIET)),
    Goal("the same beside other programs' CPU work and writes (`--background-load 2`)",
         "night, second night",
         partial(goal_late_loaded, synthetic=SYNTHETIC_LOADED, replayed=REPLAYED_LOADED)),
    Goal("async total recording time / capture time <= 1.02", "second night",
         partial(goal_total, synthetic=SYNTHETIC_QUIET, replayed=REPLAYED_QUIET, most=1.02)),
    Goal("robot wait at an episode end <= 20 ms", "second night",
         partial(goal_wait, synthetic=SYNTHETIC_QUIET, replayed=REPLAYED_QUIET, most_s=0.020)),
    Goal("raw bytes <= 0.50x rgb24 at <= 1 ms more robot CPU per frame; a lossless option "
         "<= 0.25x", "raw frame formats", partial(goal_raw, name=RAW_FORMATS)),
    Goal("worker fps / bare PyAV fps >= 0.95", "worker fps",
         partial(goal_worker, name=WORKER_EFFICIENCY, least=0.95)),
    Goal("episode end -> video ready <= 1.2 x T1 / K", "split episodes",
         partial(goal_split, name=SPLIT_EPISODE, most=1.2)),
]

# Issue 21's continuous recording: 4 cameras, 6 episodes of 20 s back to back.
CONTINUOUS: list[str] = [A(1796581799)]
CONTINUOUS_COMMAND = ("recorder benchmark --async-encoding --episodes 6 --episode-time 20 "
                      "--reset-time 0 --fps 30 --mode real --camera real_clip.mp4 (x4)")
# Issue 21's scenarios, workers pausing for the capture or sharing its host, one run each.
CAPTURE_SHARING = [A(1796581128), A(1796581250), A(1796583299), A(1796583442), A(1796580980),
                   A(1796581361), A(1796581524), A(1796581660)]
SHARING = [FILE, LOAD, SHAPE, WORKERS_BESIDE, BACKGROUND_LOAD, LATE, COMPLETE_START, COMPLETE,
           BACKLOG, RAW_LEFT, CPU, STAGES_SUMMED, FRAMES]
# Issue 21's scenarios again, each camera's frames encoded while recorded (windows of
# --encode-window-s), one run each, in the order the code changed:
# f377975, the first windows: 2 cameras with windows of 5 and 2 s, 4 cameras likewise,
#   --capture-cpus 0, 6 x 20 s, --background-load 2 with windows and without, 1080p;
# f56857f, the queue limit counting videos and SVT-AV1's fewest threads beside a capture
#   (the default windows of 2 s from here on);
# f2d66d5, finished results found with one MGET;
# the committer reading results at each window sent.
ENCODING_WINDOWS = [
    A(1796589436), A(1796589463), A(1796590623), A(1796589581), A(1796589690), A(1796590471),
    A(1796590696), A(1796589861), A(1796590977), A(1796590147), A(1796590829), A(1796590306),
    A(1796591873), A(1796591368), A(1796591750), A(1796591457), A(1796592214), A(1796591930),
    A(1796592084),
    A(1796593136), A(1796592677), A(1796593259), A(1796592978), A(1796593558),
    A(1796593721), A(1796594013),
    # 38bf194, on a day when this VM ran encodes about 10 % slower (worker_efficiency).
    A(1796603530), A(1796603663), A(1796603719), A(1796603832),
    # the same day, --capture-cpus 0
    A(1796604158), A(1796604297), A(1796604414), A(1796604542), A(1796604630)]
# Tried, not kept: an encode's side work on the capture's CPU (issue 21), the code before
# it (cc9aee3) and with it, runs alternated on one day; each file -> the commit it ran.
SIDE_WORK = {
    # 4 cameras, 2 x 10 s. d65af34: the reader and the verifier's decode on every CPU.
    A(1796608155): "d65af34", A(1796608277): "cc9aee3", A(1796608443): "d65af34",
    A(1796608577): "cc9aee3", A(1796608720): "d65af34",
    A(1796608875): "cc9aee3", A(1796609008): "d65af34", A(1796609132): "cc9aee3",
    # 81b78ec: the verifier's decode on the capture's CPU alone until the last frame.
    A(1796609301): "81b78ec", A(1796609415): "cc9aee3", A(1796609562): "81b78ec",
    A(1796609705): "cc9aee3", A(1796609809): "81b78ec", A(1796609963): "cc9aee3",
    A(1796611649): "81b78ec", A(1796611770): "cc9aee3", A(1796611902): "81b78ec",
    A(1796612023): "cc9aee3",
    # 4 cameras, 6 x 20 s; 2 x 1080p mjpeg, 2 x 5 s; 81b78ec alone: 2 cameras, and
    # --background-load 2.
    A(1796610237): "81b78ec", A(1796610877): "cc9aee3",
    A(1796610741): "81b78ec", A(1796611235): "cc9aee3",
    A(1796610136): "81b78ec", A(1796610584): "81b78ec",
}
# An episode's writers on threads started with the dataset (447921f) against the code
# before (cc9aee3), runs alternated: 4 replayed cameras, 6 x 5 s (benchmarks/first_slot.py).
FIRST_SLOT_RUNS = {A(1796612790): "cc9aee3", A(1796612963): "447921f",
                   A(1796613131): "cc9aee3", A(1796613299): "447921f",
                   # d09b976: the same with daemon threads (WriterThreads), once.
                   A(1796613554): "d09b976"}
# A cap on the workers' CPU time beside a capture (issue 21), 2026-12-07 on another VM
# (Intel Xeon, 2 CPUs): probes first on 7fbcbf9 (the code before), then the code before
# and the cap's commits alternated.
BEFORE = "7fbcbf9"
SIDE_RETRIED = "7fbcbf9 + 81b78ec's side work"
CPU_CAP_PROBES = {
    # --capture-cpus 0, no cap; the second with Python's switch interval at 0.5 ms.
    A(1796619002): BEFORE, A(1796619100): BEFORE + ", switch interval 0.5 ms",
    # --capture-cpus 0, the workers moved by hand into a v1 cgroup capped at 1.3 CPUs.
    A(1796620069): BEFORE + ", cap of 1.3 CPUs by hand", A(1796620198):
        BEFORE + ", cap of 1.3 CPUs by hand",
    # The side work (verifier's decode) on the capture's CPU, retried on the first-slot fix.
    A(1796619241): BEFORE, A(1796619364): SIDE_RETRIED, A(1796619455): BEFORE,
    A(1796619547): SIDE_RETRIED, A(1796619668): BEFORE, A(1796619780): SIDE_RETRIED,
    A(1796619871): BEFORE, A(1796619983): SIDE_RETRIED,
}
CPU_CAP_RUNS = {
    # d24f537: the cap, from each capture's first word.
    A(1796620616): BEFORE, A(1796620726): "d24f537", A(1796620853): BEFORE,
    A(1796620943): "d24f537", A(1796621010): BEFORE, A(1796621140): "d24f537",
    A(1796621207): BEFORE, A(1796621263): "d24f537",
    A(1796621290): BEFORE, A(1796621590): "d24f537",
    A(1796621850): BEFORE, A(1796622008): "d24f537",
    A(1796622119): BEFORE, A(1796622237): "d24f537",
    # bbc4f97: the cap only once the recorder was measured to fit in what it keeps (the
    # 1080p capture does not: the workers keep off its CPU); the group of normal weight.
    A(1796622500): BEFORE, A(1796622609): "bbc4f97", A(1796622716): BEFORE,
    A(1796622814): "bbc4f97", A(1796622902): BEFORE, A(1796623032): "bbc4f97",
    # 8de49b5: the group idle to the scheduler (cpu.idle), the code kept.
    A(1796623176): BEFORE, A(1796623284): "8de49b5", A(1796623405): BEFORE,
    A(1796623504): "8de49b5", A(1796623624): BEFORE, A(1796623733): "8de49b5",
    A(1796623780): BEFORE, A(1796623880): "8de49b5", A(1796623937): BEFORE,
    A(1796624215): "8de49b5", A(1796624477): BEFORE, A(1796624594): "8de49b5",
    A(1796624743): BEFORE, A(1796624799): "8de49b5",
}
# Workers at SVT-AV1 level 3 on 2 CPUs (747ec2d) against the code before (1a8ce9d),
# alternated, 2026-12-07 (AMD EPYC, 2 CPUs): 4 cameras 2 x 10 s, then 6 x 20 s.
SVT_LEVEL_RUNS = {
    A(1796631245): "1a8ce9d", A(1796631316): "747ec2d",
    A(1796631454): "1a8ce9d", A(1796631521): "747ec2d",
    A(1796631637): "747ec2d", A(1796631971): "1a8ce9d",
}
# The CPU time a recorder keeps: at least --capture-cpus, more where it was measured to
# need more (319a0b1), against only where it fit in --capture-cpus (747ec2d), alternated,
# with --capture-cpus 0.5 so that 4 cameras do not fit; then 319a0b1's 6 x 20 s.
CAP_GRADED_RUNS = {
    A(1796632309): "747ec2d", A(1796632411): "319a0b1",
    A(1796632458): "747ec2d", A(1796632537): "319a0b1",
    A(1796632664): "319a0b1",
}
# The commit each run of an old-and-new comparison ran (results files do not record it).
CODE_OF_RUN = {**SIDE_WORK, **FIRST_SLOT_RUNS, **CPU_CAP_PROBES, **CPU_CAP_RUNS,
               **SVT_LEVEL_RUNS, **CAP_GRADED_RUNS}
CODE = Metric("code", lambda run: f"`{CODE_OF_RUN[run.name]}`", right=False)
SIDE_WORK_TABLE = [FILE, TIME, LOAD, CODE, SHAPE, BACKGROUND_LOAD, LATE, COMPLETE_START,
                   COMPLETE, BACKLOG, RAW_LEFT, CPU, FETCH_STAGE, FRAMES]
CPU_CAP_TABLE = [FILE, TIME, LOAD, CODE, SHAPE, WORKERS_BESIDE, BACKGROUND_LOAD, LATE, OVERRUNS,
                 COMPLETE_START, COMPLETE, BACKLOG, RAW_LEFT, CPU, FRAMES]
FIRST_SLOT_TABLE = [FILE, TIME, LOAD, CODE, LATE, OVERRUNS, FIRST_SLOT,
                    COMPLETE_START, BACKLOG, CPU, FRAMES]
WINDOWS_TABLE = [FILE, TIME, LOAD, SHAPE, WINDOWS, WORKERS_BESIDE, BACKGROUND_LOAD, LATE,
                 COMPLETE_START, COMPLETE, BACKLOG, RAW_LEFT, CPU, STAGES_SUMMED, FRAMES]
# What the user waits for (issue 21), one row per run.
WAITS = [FILE, TIME, LOAD, LATE, OVERRUNS, WAIT, COMPLETE, COMPLETE_START, BACKLOG, RAW_LEFT,
         CPU, FRAMES]

# Issue 18: the same loop and frames through LeRobot's own dataset and through the farm
# (lerobot_compare_<time>.json), and plain lerobot-record against recorder lerobot-record
# (lerobot_record_<time>.json); 4 cameras 640x480 at 30 fps, 2 x 10 s, each at a load
# average below 1.0: replayed real-content cameras, then synthetic ones.
LEROBOT_COMPARE: list[str] = ["lerobot_compare_1796582209", "lerobot_compare_1796583594",
                              "lerobot_compare_1796583903", "lerobot_compare_1796582515"]
LEROBOT_RECORD: list[str] = ["lerobot_record_1796582866"]
LEROBOT_ARGS = "--episodes 2 --episode-time 10 --fps 30 --width 640 --height 480"
LEROBOT_COMPARE_COMMANDS = (
    f"recorder benchmark lerobot --mode real {'--camera real_clip.mp4 ' * 4}{LEROBOT_ARGS}",
    f"recorder benchmark lerobot --cameras 4 {LEROBOT_ARGS}")
LEROBOT_RECORD_COMMAND = f"recorder benchmark lerobot-record --cameras 4 {LEROBOT_ARGS}"

# Compare tables: rows of metrics, a column per run.
COMPARE = [FILE, LOAD, RECORDING, ENCODING, BLOCKED, READY, LATE, FRAMES, ENCODE_STAGE,
           WORKERS, SPEEDUP, REDUCTION, BACKGROUND]
SESSION = [FILE, LOAD, LATE, LATE_WHICH, WAIT, TOTAL_CAPTURE, READY, RAW, CPU, BUSY, FRAMES]
OLD_NEW = [FILE, LOAD, WAIT, COMMIT, TOTAL_CAPTURE, LATE, BUSY, FRAMES]


def measured(names: list[str], make: Callable[[], Table], *commands: str
             ) -> Callable[[], Table | Pending]:
    """The table of these results files, or, while none is committed, a note saying so."""
    return make if names else lambda: Pending(commands)


def readme_tables(r: Results) -> dict[str, Callable[[], Table | Pending]]:
    """Region name -> how its table is made."""
    def script(name: str, model: type, make: Callable[..., Table]) -> Callable[[], Table]:
        return lambda: make(r.script(name, model), r.path(name))

    return {
        "goals": lambda: goals_table(r, GOALS),
        "compare-1-2-cameras": lambda: by_metric(r, [
            ("1 cam sync", S(1795482875)), ("1 cam async", A(1795482905)),
            ("2 cams sync", S(1795482935)), ("2 cams async", A(1795482971)),
        ], COMPARE),
        "compare-v3-output": lambda: by_metric(r, [
            ("2 cams sync", S(1795771696)), ("2 cams async", A(1795771748)),
        ], [FILE, LOAD, RECORDING, BLOCKED, COMMITTING, INLINE_OR_SENT, LATE, FRAMES, SPEEDUP,
            REDUCTION]),
        "episode-end-3x10": lambda: by_metric(r, [
            ("old", A(1795782828)), ("new", A(1795782915)),
            ("old, background load", A(1795783109)), ("new, background load", A(1795783440)),
        ], OLD_NEW),
        "episode-end-2x10": lambda: by_metric(r, [
            ("old (`63c97d4`)", A(1795784398)),
            ("new", A(1795784475)),
            ("new, `--background-load 2`", A(1795784555)),
        ], OLD_NEW),
        "evening": lambda: by_metric(r, [
            ("1 cam sync", S(1795795520)), ("1 cam async", A(1795795557)),
            ("2 cams sync", S(1795795652)), ("2 cams async", A(1795795700)),
            ("4 cams sync", S(1795796191)), ("4 cams async", A(1795796260)),
            ("4 real cams sync", S(1795796374)),
            ("4 real cams async", A(1795796431)),
        ], SESSION),
        "night": lambda: by_metric(r, [
            ("1 cam sync", S(1795804126)), ("1 cam async", A(1795804156)),
            ("2 cams sync", S(1795804239)), ("2 cams async", A(1795804276)),
            ("4 cams sync", S(1795804409)), ("4 cams async", A(1795804460)),
            ("4 real cams sync", S(1795804640)),
            ("4 real cams async", A(1795804679)),
        ], SESSION),
        "night-background": lambda: by_run(r, SYNTHETIC_LOADED,
                                           [NICE, FILE, TIME, LOAD, LATE, TOTAL_CAPTURE, BUSY]),
        "night-background-summary": lambda: late_summary(r, SYNTHETIC_LOADED, "4 synthetic"),
        "second-night": lambda: by_run(r, [
            S(1795811957), A(1795812004), A(1795812181),
            S(1795812346), A(1795812393), S(1795812722),
            A(1795812768)], [FILE, TIME, LOAD, LATE, LATE_WHICH, TOTAL_CAPTURE, BUSY, CPU, FRAMES]),
        "second-night-synthetic": lambda: by_run(
            r, [S(1795814454), *SYNTHETIC_QUIET],
            [FILE, TIME, LOAD, LATE, WAIT, TOTAL_CAPTURE, RAW, FRAMES]),
        "replay-background": lambda: by_run(r, REPLAYED_LOADED,
                                            [NICE, FILE, TIME, LOAD, LATE, TOTAL_CAPTURE, BUSY]),
        "continuous": measured(CONTINUOUS, lambda: by_run(r, CONTINUOUS, WAITS),
                               CONTINUOUS_COMMAND),
        "lerobot-compare": measured(
            LEROBOT_COMPARE, lambda: lerobot_tables.compare_table(r, LEROBOT_COMPARE),
            *LEROBOT_COMPARE_COMMANDS),
        "lerobot-goal": measured(LEROBOT_COMPARE,
                                 lambda: lerobot_tables.goal_table(r, LEROBOT_COMPARE),
                                 *LEROBOT_COMPARE_COMMANDS),
        "lerobot-record": measured(LEROBOT_RECORD,
                                   lambda: lerobot_tables.record_table(r, LEROBOT_RECORD),
                                   LEROBOT_RECORD_COMMAND),
        "raw-formats": script(RAW_FORMATS, RawFormatsResult, script_tables.raw_formats),
        "raw-transport": script(RAW_TRANSPORT, RawTransportResult, script_tables.raw_transport),
        "capture-sharing": lambda: by_run(r, CAPTURE_SHARING, SHARING),
        "encoding-windows": lambda: by_run(r, ENCODING_WINDOWS, WINDOWS_TABLE),
        "side-work": lambda: by_run(r, list(SIDE_WORK), SIDE_WORK_TABLE),
        "first-slot": lambda: by_run(r, list(FIRST_SLOT_RUNS), FIRST_SLOT_TABLE),
        "cpu-cap-probes": lambda: by_run(r, list(CPU_CAP_PROBES), CPU_CAP_TABLE),
        "cpu-cap": lambda: by_run(r, list(CPU_CAP_RUNS), CPU_CAP_TABLE),
        "svt-level-runs": lambda: by_run(r, list(SVT_LEVEL_RUNS), CPU_CAP_TABLE),
        "cap-graded": lambda: by_run(r, list(CAP_GRADED_RUNS), CPU_CAP_TABLE),
        "worker-efficiency": script(WORKER_EFFICIENCY, WorkerEfficiencyResult,
                                    script_tables.worker_efficiency),
        "worker-ratios": script(WORKER_EFFICIENCY, WorkerEfficiencyResult,
                                script_tables.worker_ratios),
        "split-episode": script(SPLIT_EPISODE, SplitEpisodeResult, script_tables.split_episode),
        "status-latency": script(STATUS_LATENCY, StatusLatencyResult,
                                 script_tables.status_latency),
        "svt-threads": script(SVT_THREADS, SvtThreadsResult, script_tables.svt_threads),
        "svt-levels": script(SVT_LEVELS, SvtThreadsResult, script_tables.svt_threads),
        "svt-level-one": script(SVT_LEVEL_ONE, SvtThreadsResult, script_tables.svt_threads),
        "svt-level-1080p": script(SVT_LEVEL_1080P, SvtThreadsResult,
                                  script_tables.svt_threads),
        "svt-level-one-cpu": script(SVT_LEVEL_ONE_CPU, SvtThreadsResult,
                                    script_tables.svt_threads),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="change nothing; exit 1 if the README's tables are not what "
                             "the results files give")
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR,
                        help="the results files' folder (default: benchmarks/results)")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    try:
        made = rewrite(text, readme_tables(Results(args.results)))
    except TableError as exc:
        print(f"tables.py: {exc}", file=sys.stderr)
        return 2
    if made == text:
        print(f"{args.readme.name}: every table is what the results files give")
        return 0
    if args.check:
        diff = difflib.unified_diff(text.splitlines(keepends=True), made.splitlines(keepends=True),
                                    f"{args.readme.name} (committed)",
                                    f"{args.readme.name} (from the results files)", n=1)
        sys.stdout.writelines(diff)
        print(f"\n{args.readme.name}'s tables differ from what the results files give: run "
              "python benchmarks/tables.py (a table is never edited by hand)")
        return 1
    args.readme.write_text(made)
    print(f"{args.readme.name}: tables rewritten from {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
