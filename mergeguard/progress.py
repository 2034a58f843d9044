"""Progress of the library's long steps (hashing, indexing, scoring), reported through a callback.

The library never draws: it calls the `ProgressCallback` its caller passed in (or nothing, when None), and the
CLI turns those calls into bars (`mergeguard.cli.progress_view`). A notebook can pass `print`, a test a list's
`append`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    """Where one step stands: `done` of `total` units (None: not known in advance), `finished` at its end."""

    step: str
    done: int
    total: int | None = None
    finished: bool = False


ProgressCallback = Callable[[ProgressEvent], None]


class Step:
    """One named step's counter: `advance(n)` reports the new count to the callback."""

    def __init__(self, callback: ProgressCallback | None, name: str, total: int | None) -> None:
        self.callback = callback
        self.name = name
        self.total = total
        self.done = 0

    def advance(self, units: int = 1) -> None:
        self.done += units
        if self.callback is not None:
            self.callback(ProgressEvent(self.name, self.done, self.total))

    def finish(self) -> None:
        if self.callback is not None:
            self.callback(ProgressEvent(self.name, self.done, self.total, finished=True))


@contextmanager
def step(callback: ProgressCallback | None, name: str, total: int | None = None) -> Iterator[Step]:
    """A step reported from its start (0 done) to its end, also when it fails."""
    counter = Step(callback, name, total)
    if callback is not None:
        callback(ProgressEvent(name, 0, total))
    try:
        yield counter
    finally:
        counter.finish()


# TRANSITIONAL (architecture pass): the old drawing helper, removed once auditor/audit.py and merge/sanity.py
# report through ProgressCallback.
from typing import Any  # noqa: E402


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
