"""The local engines: in this process, or `workers` processes of this machine.

Worker processes are spawned (not forked: the driver may hold threads) once per audit, and only when a
dataset has two tasks or more. Each maps the index the driver exported (`shared_index`), so the index's
pages exist once in memory however many workers read them. At most `IN_FLIGHT` tasks per worker are out at
a time: the driver reads ahead no further than that.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from itertools import chain, islice
from pathlib import Path

from mergeguard.auditor.engines.shared_index import export_index, open_index
from mergeguard.auditor.engines.tasks import Job, Task, TaskResult, run_task
from mergeguard.auditor.index import BenchmarkIndex

IN_FLIGHT = 2  # tasks per worker submitted ahead


class InProcess:
    """Every task in this process, in order (one worker, or a dataset too small to share out)."""

    def __init__(self, index: BenchmarkIndex, job: Job) -> None:
        self.index = index
        self.job = job

    def map(self, tasks: Iterator[Task]) -> Iterator[TaskResult]:
        for task in tasks:
            yield run_task(task, self.index, self.job)

    def close(self) -> None:
        pass


# The worker process's mapped index, set once by the pool's initializer (one per process, read-only).
_WORKER_INDEX: list[BenchmarkIndex] = []


def _start_worker(folder: str) -> None:
    _WORKER_INDEX[:] = [open_index(Path(folder))]


def _work(task: Task, job: Job) -> TaskResult:
    return run_task(task, _WORKER_INDEX[0], job)


class ProcessPool:
    """Tasks in `workers` spawned processes sharing the memory-mapped index; results as they finish."""

    def __init__(self, index: BenchmarkIndex, job: Job, workers: int, share_dir: Path) -> None:
        self.index = index
        self.job = job
        self.workers = workers
        self.share_dir = share_dir
        self.pool: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self.pool is None:
            folder = export_index(self.index, self.share_dir)
            self.pool = ProcessPoolExecutor(
                self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_worker,
                initargs=(str(folder),),
            )
        return self.pool

    def map(self, tasks: Iterator[Task]) -> Iterator[TaskResult]:
        """Results in completion order; a single task runs here (no process is worth starting for it).
        Closing the iterator early cancels what has not started."""
        head = list(islice(tasks, 2))
        if len(head) < 2:
            yield from InProcess(self.index, self.job).map(iter(head))
            return
        pool, pending = self._pool(), set[Future]()
        tasks = chain(head, tasks)
        try:
            for task in tasks:
                pending.add(pool.submit(_work, task, self.job))
                if len(pending) >= self.workers * IN_FLIGHT:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    yield from (future.result() for future in done)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (future.result() for future in done)
        finally:
            for future in pending:
                future.cancel()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
