"""Engines that run an audit's scans: in this process, in worker processes (`--workers N`), or on a Ray
cluster (`--engine ray`). All run one unit of work (`work.scan_batch`) on the same tasks (`tasks`), and the
driver assembles the results in input order, so every engine reports the same findings.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from mergeguard.auditor.datasets import ReadLog
from mergeguard.auditor.engines.local import InProcess, ProcessPool
from mergeguard.auditor.engines.ray_engine import RayEngine
from mergeguard.auditor.engines.reading import ReadOptions, Scanned
from mergeguard.auditor.engines.tasks import Assembly, Job, Task, TaskResult, plan_tasks
from mergeguard.auditor.index import BenchmarkIndex
from mergeguard.errors import UsageError
from mergeguard.progress import ProgressCallback, step

ENGINES = ("local", "ray")


class Engine(Protocol):
    def map(self, tasks: Iterator[Task]) -> Iterator[TaskResult]: ...

    def close(self) -> None: ...


def default_workers() -> int:
    """The machine's cores (those this process may use)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextmanager
def open_engine(index: BenchmarkIndex, options: Any) -> Iterator[Engine]:
    """The engine the options ask for (`engine`, `workers`, `ray_address`), closed at the end."""
    job = Job(ReadOptions.of(options), options.containment)
    name = options.engine
    workers = options.workers
    if name not in ENGINES:
        raise UsageError(f"unknown engine {name!r}", hint=f"use one of {', '.join(ENGINES)}")
    if workers is not None and workers < 1:
        raise UsageError(f"--workers must be 1 or more (got {workers})")
    with tempfile.TemporaryDirectory(prefix="mergeguard-index-") as share:
        engine: Engine
        if name == "ray":
            engine = RayEngine(index, job, options.ray_address, workers)
        elif (workers or default_workers()) > 1:
            engine = ProcessPool(index, job, workers or default_workers(), Path(share))
        else:
            engine = InProcess(index, job)
        try:
            yield engine
        finally:
            engine.close()


def scan_dataset(
    ref: str, index: BenchmarkIndex, options: Any, engine: Engine, progress: ProgressCallback | None = None
) -> Scanned:
    """One dataset's lexical scan by `engine`: its read (rows, skips, the error that stopped it) and
    matches, exactly as one in-order pass would find them."""
    read = ReadOptions.of(options)
    scanned = Scanned(ref, ReadLog(ref, skip_bad_rows=read.skip_bad_rows, max_line=read.max_line))
    job = Job(read, options.containment)
    assembly = Assembly(scanned, index)
    tasks = plan_tasks(scanned, job)
    with step(progress, f"hashing {ref}") as counter:
        results = engine.map(tasks)
        try:
            for result in results:
                assembly.add(result)
                counter.advance(result.partial.examples)
                if assembly.stopped:
                    break
        finally:
            results.close()  # type: ignore[attr-defined]
    scanned.matches = assembly.result(index, options.containment).matches
    if not scanned.texts and not scanned.log.skipped and scanned.error is None:
        scanned.error = f"dataset {ref} holds no text ({scanned.examples} rows, none with a string)"
    return scanned
