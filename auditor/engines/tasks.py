"""Tasks: what an engine hands a worker (a shard to read, or a chunk of texts the driver read), what comes
back, and the driver's assembly of the results, in input order, into the dataset's `Scanned`.

`run_task` is the one function every engine runs on its workers; it reads (for a shard) and applies the
unit of work (`work.scan_batch`) a batch at a time. Results may arrive in any order: the assembly keeps
them until their turn, so example numbers and findings are those of one in-order pass. A shard whose read
stopped on a bad row ends the dataset there, as one stream would: later results are dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice

from mergeguard.auditor.datasets import ReadLog
from mergeguard.auditor.detect import ScanResult
from mergeguard.auditor.engines.reading import (
    ReadOptions,
    Scanned,
    Shard,
    plan_shards,
    shard_texts,
    stream_texts,
)
from mergeguard.auditor.engines.work import Accumulator, Partial, combine, scan_batch
from mergeguard.auditor.index import BenchmarkIndex
from mergeguard.errors import DatasetError

CHUNK = 16384  # texts per task when the driver reads (and per unit of work inside a shard)


@dataclass(frozen=True)
class Job:
    """What every task of an audit shares (picklable)."""

    read: ReadOptions
    containment: float
    chunk: int = CHUNK


@dataclass
class Task:
    """One piece of work: a shard to read, or texts the driver read. `seq` orders the results."""

    seq: int
    shard: Shard | None = None
    texts: list[str] | None = None


@dataclass
class TaskResult:
    seq: int
    partial: Partial
    read: Scanned | None  # what reading the shard met (None for driver-read texts)


def run_task(task: Task, index: BenchmarkIndex, job: Job) -> TaskResult:
    """Read the task's rows (a shard) or take its texts, and scan them a chunk at a time."""
    if task.shard is None:
        return TaskResult(task.seq, scan_batch(task.texts or [], index, job.containment), None)
    read = Scanned(task.shard.ref, ReadLog(task.shard.ref, job.read.skip_bad_rows, job.read.max_line))
    texts = shard_texts(task.shard, read, job.read)
    total = Accumulator(index)
    while chunk := list(islice(texts, job.chunk)):
        total.add(scan_batch(chunk, index, job.containment))
    return TaskResult(task.seq, total.partial(), read)


def plan_tasks(scanned: Scanned, job: Job) -> Iterator[Task]:
    """The dataset's tasks: its shards (read by the workers), or chunks of the driver's own in-order read
    (counted into `scanned` as it goes)."""
    try:
        shards = plan_shards(scanned.ref)
    except DatasetError as error:  # a URL that cannot be listed, or not parquet: said, and nothing read
        scanned.error = str(error)
        return iter(())
    if shards is not None:
        return (Task(k, shard=shard) for k, shard in enumerate(shards))
    texts = stream_texts(scanned, job.read)

    def chunks() -> Iterator[Task]:
        seq = 0
        while chunk := list(islice(texts, job.chunk)):
            yield Task(seq, texts=chunk)
            seq += 1

    return chunks()


class Assembly:
    """The driver's side: results folded in `seq` order into the dataset's read and scan."""

    def __init__(self, scanned: Scanned, index: BenchmarkIndex) -> None:
        self.scanned = scanned
        self.total = Accumulator(index)
        self.waiting: dict[int, TaskResult] = {}
        self.next = 0
        self.stopped = False  # a shard's read stopped on an error: nothing after it counts

    def add(self, result: TaskResult) -> None:
        self.waiting[result.seq] = result
        while self.next in self.waiting:
            ready = self.waiting.pop(self.next)
            self.next += 1
            if self.stopped:
                continue
            if ready.read is not None:
                self.scanned.absorb(ready.read)
                self.stopped = ready.read.error is not None
            self.total.add(ready.partial)

    def result(self, index: BenchmarkIndex, containment: float) -> ScanResult:
        """The dataset's findings, once every result up to the end (or the stop) is in."""
        return combine([self.total.partial()], index, containment)
