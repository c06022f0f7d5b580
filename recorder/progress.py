"""The live progress display of recording and encoding."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

# Rich assumes 80 columns when output is not a terminal: too narrow for the tables.
REPORT_WIDTH = 140


def report_console() -> Console:
    """A console for reports: in a log or a pipe its tables keep REPORT_WIDTH columns."""
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, REPORT_WIDTH)
    return console


def progress_display(console: Console) -> Progress:
    """A live progress display, silent when output is not a terminal."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, disable=not console.is_terminal,
                    transient=True)
