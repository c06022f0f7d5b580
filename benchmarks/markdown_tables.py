"""Markdown tables made from results files, and the README regions they are written into.

A generated region is `<!-- table:NAME -->`, the table and a line naming the results files
it was made from (with their commands where the files hold them), `<!-- /table:NAME -->`.
rewrite() replaces every region's content; nothing outside the markers changes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import result_files
from result_files import ScriptResult

from recorder.benchmark import lerobot_results
from recorder.benchmark import results as benchmark_results
from recorder.benchmark.lerobot_results import LeRobotBenchmark
from recorder.benchmark.results import BenchmarkResult
from recorder.benchmark.results_file import ResultsFileError

MARKER = re.compile(r"<!-- (/?)table:([a-z0-9-]+) -->")


class TableError(Exception):
    """A table cannot be made: a file is missing or unreadable, or the README's markers are
    wrong."""


@dataclass(frozen=True)
class Table:
    """A markdown table, and the results files its numbers come from."""

    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    right: Sequence[bool] = ()  # per column: right-aligned (numbers); default all but the first
    sources: Sequence[Path] = ()
    files_shown: bool = False  # a column or row names the files: the note leaves them out

    def __post_init__(self) -> None:
        for row in self.rows:
            if len(row) != len(self.header):
                raise TableError(f"a row has {len(row)} cells for {len(self.header)} "
                                 f"columns: {list(row)}")


@dataclass(frozen=True)
class Pending:
    """A table whose results files are not committed yet: it says so, and how to make
    them, instead of showing numbers."""

    commands: Sequence[str]
    why: str = "not measured yet"


def render(table: Table | Pending) -> str:
    """The table in markdown, then its sources' note (when it has sources)."""
    if isinstance(table, Pending):
        made = " and of ".join(f"`{command}`" for command in table.commands)
        return (f"**No results file is committed for this table yet** ({table.why}). It is "
                f"made from the results files of {made}: commit them to results/, name them "
                f"in benchmarks/tables.py, and run `python benchmarks/tables.py`.")
    right = list(table.right) or [False] + [True] * (len(table.header) - 1)
    lines = ["| " + " | ".join(table.header) + " |",
             "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    note = sources_note(table)
    return "\n".join(lines) + (f"\n\n{note}" if note else "")


def sources_note(table: Table) -> str:
    """Where the numbers come from: the files (unless the table names them), each command
    the files hold, and the machines they were measured on."""
    parts = []
    if table.sources and not table.files_shown:
        parts.append("From " + ", ".join(f"`{path.name}`" for path in table.sources) + ".")
    commands, machines = [], []
    for path in table.sources:
        command, machine = describe(path)
        if command and command not in commands:
            commands.append(command)
        if machine not in machines:
            machines.append(machine)
    parts += commands
    if machines:
        parts.append(f"Measured on {'; '.join(machines)}.")
    return " ".join(parts)


def describe(path: Path) -> tuple[str, str]:
    """How a results file was made (a script's: its command, code, date and load;
    `recorder benchmark`'s: its command, where the file holds it), and on what machine."""
    text = path.read_text()
    if path.stem.rpartition("_")[0] in LEROBOT_KINDS:
        head = LeRobotBenchmark.model_validate_json(text)
        env = head.environment
        return (f"`{head.command}` (LeRobot {head.lerobot})." if head.command else "",
                f"{env.cpu_model}, {env.cpu_count} CPUs, Python {env.python}, "
                f"PyAV {env.pyav}, FFmpeg {env.ffmpeg}")
    try:
        script = result_files.ScriptResult.model_validate_json(text)
    except ValueError:
        run = BenchmarkResult.model_validate_json(text)
        env = run.environment
        return (f"`{run.command}`." if run.command else "",
                f"{env.cpu_model}, {env.cpu_count} CPUs, Python {env.python}, "
                f"PyAV {env.pyav}, FFmpeg {env.ffmpeg}")
    m = script.machine
    busy = ""
    if not quiet(script):
        busy = (f" **The machine did not get quiet**: after {script.load.waited_s:.0f} s of "
                f"waiting for a load average below {script.load.quiet_below:g}, it measured "
                f"at {script.load.at_start:.2f}; rerun it on a quiet machine.")
    return (f"`{script.command}` (code `{script.code or 'unknown'}`, "
            f"{script.started_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC, load average "
            f"{script.load.at_start:.2f} at the start).{busy}",
            f"{m.cpu_model}, {m.cores} CPUs, Python {m.python}, PyAV {m.pyav}, FFmpeg {m.ffmpeg}")


def quiet(result: ScriptResult) -> bool:
    """False when the run waited for a quiet machine in vain (it measured anyway)."""
    wanted = result.load.quiet_below
    return wanted is None or result.load.at_start < wanted


S = TypeVar("S", bound=ScriptResult)
L = TypeVar("L", bound=LeRobotBenchmark)
M = TypeVar("M")
# Results files of the LeRobot comparisons, by the name they start with.
LEROBOT_KINDS = ("lerobot_compare", "lerobot_record")


@dataclass
class Results:
    """Reads the results files of a folder by name (file name without .json), once each."""

    folder: Path
    _read: dict[str, object] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        path = self.folder / f"{name.removesuffix('.json')}.json"
        if not path.is_file():
            raise TableError(f"results file {path.name} is not in {self.folder}")
        return path

    def run(self, name: str) -> BenchmarkResult:
        """A `recorder benchmark` results file."""
        return self._once(name, BenchmarkResult, benchmark_results.load)

    def lerobot(self, name: str, model: type[L]) -> L:
        """A LeRobot comparison's results file (`recorder benchmark lerobot[-record]`)."""
        return self._once(name, model, lambda path: lerobot_results.load(path, model))

    def script(self, name: str, model: type[S]) -> S:
        """A results file of one of benchmarks/*.py."""
        return self._once(name, model, lambda path: result_files.load(path, model))

    def _once(self, name: str, model: type[M], load: Callable[[Path], M]) -> M:
        """The file read with load the first time it is asked for; a bad one: TableError."""
        if name not in self._read:
            try:
                self._read[name] = load(self.path(name))
            except ResultsFileError as exc:
                raise TableError(str(exc)) from exc
        result = self._read[name]
        assert isinstance(result, model)
        return result


def rewrite(text: str, tables: Mapping[str, Callable[[], Table | Pending]]) -> str:
    """text with every table region's content made anew.

    Raises:
        TableError: a marker without its pair, a region twice or nested, a region no table
            is defined for, or a defined table without its region.
    """
    out, end, seen = [], 0, set()
    matches = list(MARKER.finditer(text))
    for opening, closing in zip(matches[::2], matches[1::2], strict=False):
        name = opening.group(2)
        if opening.group(1) or closing.group(1) != "/" or closing.group(2) != name:
            raise TableError(f"table markers out of order at {opening.group(0)!r} (line "
                             f"{text.count(chr(10), 0, opening.start()) + 1}): each "
                             f"<!-- table:NAME --> needs its <!-- /table:NAME --> next")
        if name in seen:
            raise TableError(f"table {name!r} appears twice")
        if name not in tables:
            raise TableError(f"no table is defined for the region {name!r}: add it to TABLES "
                             f"or remove its markers")
        seen.add(name)
        out += [text[end:opening.end()], "\n", render(tables[name]()), "\n"]
        end = closing.start()
    if len(matches) % 2:
        raise TableError(f"an unpaired table marker: {matches[-1].group(0)!r}")
    if missing := sorted(set(tables) - seen):
        raise TableError(f"tables without a region in the README: {', '.join(missing)}")
    return "".join(out) + text[end:]


# -- formatting ------------------------------------------------------------------------------

def ms(seconds: float) -> str:
    return f"{1000 * seconds:.0f}"


def joined(values: Iterable[object], sep: str = ", ") -> str:
    return sep.join(str(value) for value in values)


def when(result: BenchmarkResult) -> str:
    """The run's start, as the README's times: UTC hours and minutes."""
    return f"{datetime.fromtimestamp(result.started_at, UTC):%H:%M}"
