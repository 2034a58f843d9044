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
