"""The CLI's drawing of library progress: one transient rich bar per step, on stderr."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.text import Text

from mergeguard.progress import ProgressCallback, ProgressEvent


class CountColumn(TextColumn):
    """`12/40` when the total is known, else `817 done` (never `817/?`)."""

    def render(self, task: Any) -> Text:
        done = int(task.completed)
        count = f"{done}/{int(task.total)}" if task.total is not None else f"{done} done"
        return Text(count, style="progress.download")


class ProgressView:
    """A `ProgressCallback` that draws each step as a bar; a spinner turns while a step runs, so a step that
    reports only at its end (building an index) still shows it is working. Drawing starts with the first
    event: until then the process keeps one thread (a merge's worker processes can still be forked)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, TaskID] = {}

    def __call__(self, event: ProgressEvent) -> None:
        if not self.progress.live.is_started:
            self.progress.start()
        task = self.tasks.get(event.step)
        if task is None:
            task = self.tasks[event.step] = self.progress.add_task(event.step, total=event.total)
        self.progress.update(task, completed=event.done, total=event.total)
        if event.finished:
            self.progress.remove_task(task)
            del self.tasks[event.step]


@contextmanager
def progress_view(enabled: bool) -> Iterator[ProgressCallback | None]:
    """A callback drawing bars on stderr while the block runs, or None when progress is off (`-q`)."""
    if not enabled:
        yield None
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), CountColumn(""))
    bar = Progress(*columns, TimeElapsedColumn(), console=Console(stderr=True), transient=True)
    try:
        yield ProgressView(bar)
    finally:
        if bar.live.is_started:
            bar.stop()
