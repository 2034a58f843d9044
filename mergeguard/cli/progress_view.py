"""The CLI's drawing of library progress: one transient rich bar per step, on stderr."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from mergeguard.progress import ProgressCallback, ProgressEvent

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


def count_text(event: ProgressEvent) -> str:
    """`12/40` when the total is known, else `817 done` (never `817/?`)."""
    return f"{event.done}/{event.total}" if event.total is not None else f"{event.done} done"


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
            task = self.tasks[event.step] = self.progress.add_task(event.step, total=event.total, count="")
        self.progress.update(task, completed=event.done, total=event.total, count=count_text(event))
        if event.finished:
            self.progress.remove_task(task)
            del self.tasks[event.step]


@contextmanager
def progress_view(enabled: bool) -> Iterator[ProgressCallback | None]:
    """A callback drawing bars on stderr while the block runs, or None when progress is off (`-q`)."""
    if not enabled:
        yield None
        return
    from rich.console import Console  # rich: drawn only when progress is shown (mergeguard.lazy)
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    count = TextColumn("{task.fields[count]}", style="progress.download")
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), count, TimeElapsedColumn())
    bar = Progress(*columns, console=Console(stderr=True), transient=True)
    try:
        yield ProgressView(bar)
    finally:
        if bar.live.is_started:
            bar.stop()
