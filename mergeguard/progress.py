"""One progress bar style for the library's long steps (hashing, indexing, scoring), drawn on stderr."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _count(task: Any) -> str:
    """`12/40` when the total is known, else `817 done` (never `817/?`)."""
    done = int(task.completed)
    return f"{done}/{int(task.total)}" if task.total is not None else f"{done} done"


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Any]:
    """A transient rich Progress on stderr, or None when disabled (callers check before adding tasks).
    A spinner turns while a step runs, so a step that reports only at its end (building an index) still
    shows it is working; a bar without a total pulses instead of sitting at 0."""
    if not enabled:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    class CountColumn(TextColumn):
        def render(self, task: Any) -> Any:
            from rich.text import Text

            return Text(_count(task), style="progress.download")

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        CountColumn(""),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        yield bar
