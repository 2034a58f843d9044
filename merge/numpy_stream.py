"""The torch-free merge loop: numpy kernels streaming blocks from the input files into the shards.

Used by the engine when every tensor can take it (`numpy_kernel`); it skips torch's import (about 3 s
here), holds only block-sized buffers (never a tensor), and keeps both cores busy with two worker
processes, each computing whole output tensors. Unchanged passthrough tensors are copied file to file
without being read into the process.
"""

from __future__ import annotations

import importlib.util
import math
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergeguard.errors import MergeguardError
from mergeguard.merge.io import ShardWriter, parse_size
from mergeguard.merge.kernels import Job, Kernel, Operand, kernel_for, run, supported_dtype
from mergeguard.merge.kernels.floats import STORAGE
from mergeguard.merge.kernels.passthrough import copy_unchanged

if TYPE_CHECKING:
    from mergeguard.merge.config import MergeConfig
    from mergeguard.merge.engine import MergeOptions
    from mergeguard.merge.plan import MergePlan, SourceModel, TensorTask

WORKERS = 2
"""Worker processes (this machine has two cores). Processes, not threads: the kernels make thousands of
short numpy calls, and two threads handing the GIL back and forth ran slower than one."""
QUEUED = 2
"""Jobs submitted per worker: one running, one waiting, so that a worker never waits on this process
(which runs the family check and imports the database code once the first jobs are out)."""
PARALLEL_MIN_ELEMENTS = 1 << 24
"""Below this many computed elements the merge runs in this process (spawned workers cost ~0.4 s to start,
forked ones a few ms, and every job a round trip)."""


def numpy_kernel(
    config: MergeConfig, method: Any, models: dict[str, SourceModel], plan: MergePlan, options: MergeOptions
) -> Kernel | None:
    """The kernel that can run this whole merge without torch, or None (the torch loop runs it)."""
    if options.device != "cpu" or any(m.reader.pickled for m in models.values()):
        return None
    if not hasattr(os, "preadv") or not hasattr(os, "pwrite"):  # positional I/O (not on Windows)
        return None
    for dtype in (config.dtype, config.out_dtype):
        if dtype and not supported_dtype(dtype):
            return None
    for task in plan.tasks:
        for ref, name in task.sources():
            if not supported_dtype(models[ref].reader.dtype(name)):
                return None
    return kernel_for(method.name, [task.options for task in plan.tasks])


def _operand(models: dict[str, SourceModel], ref: str, name: str) -> Operand:
    reader = models[ref].reader
    path, offset, nbytes = reader.locate(name)
    dtype = reader.dtype(name)
    return Operand(dtype, nbytes // STORAGE[dtype].itemsize, path=str(path), offset=offset)


def _vocab_operands(models: dict[str, SourceModel], plan: MergePlan, task: TensorTask) -> dict[Any, Operand]:
    """A vocabulary tensor's inputs read whole, widened, aligned (or truncated): in-memory operands."""
    import numpy as np

    from mergeguard.merge.kernels.floats import widen, work_dtype

    arrays = {}
    for ref, name in task.sources():
        reader, dtype = models[ref].reader, models[ref].reader.dtype(name)
        stored = np.frombuffer(reader.raw(name), STORAGE[dtype])
        wide = np.empty(stored.size, work_dtype(dtype))
        widen(stored, dtype, wide, np.empty(stored.size, np.uint32))
        arrays[ref] = wide.reshape(reader.shape(name))
    done = plan.vocab_inputs(task, arrays)
    return {
        pair: Operand.of(np.ascontiguousarray(done[pair[0]]), str(done[pair[0]].dtype))
        for pair in task.sources()
    }


_prestarted: list[ProcessPoolExecutor] = []
PRESTART_METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "slerp")


def prestart_workers(config: MergeConfig, device: str = "cpu") -> None:
    """Start the worker processes now if this merge will likely want them, so that their start (for a
    spawned worker, numpy's import: ~0.35 s each) overlaps the reading of headers and the planning.
    `release_workers` undoes it."""
    if _prestarted or device != "cpu" or (os.cpu_count() or 1) < 2:
        return
    if config.merge_method not in PRESTART_METHODS:
        return
    from mergeguard.merge.config import config_models

    biggest = 0
    for ref in config_models(config):
        folder = Path(ref.split("+", 1)[0]).expanduser()
        if folder.is_dir():
            files = [f for f in folder.glob("*.safetensors") if os.path.isfile(f)]  # no loop, no FIFO
            biggest = max(biggest, sum(f.stat().st_size for f in files))
    if biggest >= 2 * PARALLEL_MIN_ELEMENTS:  # two bytes an element at least
        _prestarted.append(_start_workers(min(WORKERS, os.cpu_count() or 1)))


def _take_prestarted() -> ProcessPoolExecutor | None:
    return _prestarted.pop() if _prestarted else None


def release_workers() -> None:
    """Stop prestarted workers that no merge used (the merge failed, or took another path)."""
    while _prestarted:
        _prestarted.pop().shutdown(wait=False, cancel_futures=True)


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
"""The parent's to handle (Ctrl-C reaches the whole process group, and so may a service manager's SIGTERM):
the workers ignore them, and the parent stops them. A worker dies with its parent (`die_with_parent`)."""


def _start_workers(count: int) -> ProcessPoolExecutor:
    """`count` fresh worker processes with a single-threaded BLAS each (the processes are the parallelism).

    They start with Ctrl-C and SIGTERM ignored (`STOP_SIGNALS`), from their first instruction, not from
    their initializer on, so that Ctrl-C while a spawned worker still imports numpy prints no traceback
    from it.
    """
    with _stop_signals_held():
        return _new_pool(count)


@contextmanager
def _stop_signals_held() -> Iterator[None]:
    """`STOP_SIGNALS` ignored and blocked in this thread while it starts children, which inherit both (a
    spawned child keeps only the ignoring: multiprocessing unblocks them when it starts its resource
    tracker). Blocked, a signal that arrives meanwhile stays pending here and is handled once the
    handlers are back, instead of being lost."""
    mask = (
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS) if hasattr(signal, "pthread_sigmask") else None
    )
    saved: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
        saved = {number: signal.signal(number, signal.SIG_IGN) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in saved.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _new_pool(count: int) -> ProcessPoolExecutor:
    if _can_fork():
        pool = ProcessPoolExecutor(
            count,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_worker_init,
            initargs=(True, os.getpid()),
        )
        for _ in range(count):  # forks a process per call, without waiting
            pool.submit(os.getpid)
        return pool
    saved = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # read when a worker imports numpy
    # A script run as __main__ (the `mergeguard` console script) would be re-run in every worker, which
    # imports the whole CLI (~0.3 s each); the jobs need only mergeguard's modules, so hide its path.
    main = sys.modules["__main__"]
    script = main.__dict__.pop("__file__", None) if getattr(main, "__spec__", None) is None else None
    try:
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(
            count, mp_context=context, initializer=_worker_init, initargs=(False, os.getpid())
        )
        for _ in range(count):  # spawns a process per call, with this environment, without waiting
            pool.submit(os.getpid)
    finally:
        if script is not None:
            main.__file__ = script
        if saved is None:
            del os.environ["OPENBLAS_NUM_THREADS"]
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = saved
    return pool


START_METHOD: str | None = None
"""Force "fork" or "spawn" for the workers (tests); None chooses (`_can_fork`)."""


def _can_fork() -> bool:
    """Fork the workers when this is a one-thread process on Linux and BLAS threads can be limited.

    A forked worker is ready in milliseconds with numpy and the kernels already imported; a spawned
    one spends ~0.25 s of CPU importing them, on the two cores that the merge itself needs. Forking a
    process with other threads running (Python's, or native ones such as a BLAS or OpenMP pool) can
    deadlock the child on a lock held at the fork, so then, and off Linux, the workers are spawned.
    """
    if START_METHOD is not None:
        return START_METHOD == "fork"
    if not sys.platform.startswith("linux") or max(threading.active_count(), _os_threads()) > 1:
        return False
    return importlib.util.find_spec("threadpoolctl") is not None


def _os_threads() -> int:
    """This process's threads as the kernel counts them (native ones included)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 2  # unknown: assume threads, and spawn


def _worker_init(forked: bool = False, parent: int | None = None) -> None:
    from mergeguard.merge.memory import die_with_parent, tune_malloc

    if parent is not None:
        die_with_parent(parent)  # first: a worker must never outlive a parent killed with kill -9
    if forked:  # numpy's BLAS came with the parent, with its thread count: the processes are the parallelism
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")
    tune_malloc()
    for number in STOP_SIGNALS:  # the parent's to handle: it stops the workers
        signal.signal(number, signal.SIG_IGN)  # (a signal held back since the start is dropped)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def stream_numpy(
    config: MergeConfig,
    method: Any,
    kernel: Kernel,
    models: dict[str, SourceModel],
    plan: MergePlan,
    out: Path,
    options: MergeOptions,
) -> int:
    """Compute and write every planned tensor; returns the bytes written.

    Big merges run in WORKERS processes (each job names its files; workers write their output blocks
    straight into the shard files); small ones run here, where a process would cost more than it saves.
    """
    from mergeguard.merge.engine import output_layout, under_way

    seed = options.random_seed if options.random_seed is not None else int.from_bytes(os.urandom(4), "little")
    layout = output_layout(config, models, plan)
    writer = ShardWriter(out, layout, parse_size(options.out_shard_size))
    stream = _Stream(config, method, models, plan, options, writer, layout, seed)
    copies = [stream.copied(task, layout[i][1]) for i, task in enumerate(plan.tasks)]
    computed = sum(math.prod(t.shape) for t, c in zip(plan.tasks, copies, strict=True) if not c)
    workers = min(WORKERS, os.cpu_count() or 1)
    pool = _pool(workers, computed)
    pending = stream.pending
    # biggest first: the embeddings do not end up alone on one worker while the other one idles
    order = sorted(range(len(plan.tasks)), key=lambda i: -layout[i][3]) if pool else range(len(plan.tasks))
    starting = True
    try:
        for index in order:
            if starting and (pool is None or len(pending) >= QUEUED * workers):  # the workers are fed
                under_way(options, models)
                starting = False
            task = plan.tasks[index]
            name, dtype = layout[index][0], layout[index][1]
            if copies[index]:
                writer.copy(name, *models[task.inputs[0][0]].reader.locate(task.inputs[0][1]))
                stream.finished(index)
                continue
            if pool is None or task.vocab:  # an aligned vocabulary is in memory: not sent to a worker
                run(kernel, stream.job(task, dtype))
                writer.mark_written(name, layout[index][3])
                stream.finished(index)
                continue
            while len(pending) >= QUEUED * workers:
                stream.collect()
            pending[pool.submit(run, kernel, stream.job(task, dtype))] = index
        if starting:
            under_way(options, models)
        while pending:
            stream.collect()
    finally:
        if pool is not None:
            for future in pending:
                future.cancel()
            # after a failure, wait: a running job may still be writing into the shards that get removed
            pool.shutdown(wait=bool(pending), cancel_futures=True)
    writer.finish()
    return writer.bytes_written


def _pool(workers: int, computed: int) -> ProcessPoolExecutor | None:
    """The prestarted workers, else fresh ones when the merge computes enough elements to gain from them;
    None: the merge runs in this process."""
    pool = _take_prestarted()
    if pool is None and workers > 1 and computed >= PARALLEL_MIN_ELEMENTS:
        pool = _start_workers(workers)
    return pool


@dataclass
class _Stream:
    """What `stream_numpy`'s steps share: they build the jobs, and count and report the finished tensors."""

    config: MergeConfig
    method: Any
    models: dict[str, SourceModel]
    plan: MergePlan
    options: MergeOptions
    writer: ShardWriter
    layout: list[Any]
    seed: int
    tensors: int = 0
    bytes: int = 0
    pending: dict[Future[Any], int] = field(default_factory=dict)  # a worker's job -> its task's index
    total_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.total_bytes = sum(entry[3] for entry in self.layout)

    def job(self, task: TensorTask, dtype: str) -> Job:
        """The kernel's job for `task`: its operands (files and offsets, or aligned arrays) and target."""
        from mergeguard.merge.engine import tensor_seed

        if task.vocab:
            operands = _vocab_operands(self.models, self.plan, task)
        else:
            operands = {pair: _operand(self.models, *pair) for pair in task.sources()}
        shard, offset = self.writer.target(task.name)
        return Job(
            tensors=[operands[pair] for pair in task.inputs],
            params=task.params,
            base=operands[task.base] if task.base else None,
            base_index=task.base_index,
            options=task.options,
            name=task.name,
            compute=self.config.dtype,
            out=dtype,
            seed=tensor_seed(self.seed, task.name) if self.method.randomized else None,
            target=(str(shard), offset),
        )

    def copied(self, task: TensorTask, dtype: str) -> bool:
        """Whether `task` is a passthrough whose stored bytes are the output's: copied, not computed."""
        ref, name = task.inputs[0]
        stored = self.models[ref].reader.dtype(name)
        compute = self.config.dtype or stored
        return (
            not task.vocab
            and self.method.name == "passthrough"
            and copy_unchanged(task.params, stored, compute, dtype)
        )

    def finished(self, index: int) -> None:
        """Count the tensor `index` as written and report the progress."""
        from mergeguard.merge.engine import Progress

        self.tensors += 1
        self.bytes += self.layout[index][3]
        if self.options.progress:
            self.options.progress(
                Progress(
                    self.tensors, len(self.plan.tasks), self.bytes, self.total_bytes, self.layout[index][0]
                )
            )

    def collect(self) -> None:
        """Wait for a job to finish and record the finished ones; a worker's error is raised here."""
        done, _ = wait(self.pending, return_when=FIRST_COMPLETED)
        for future in done:
            index = self.pending.pop(future)
            try:
                future.result()
            except BrokenProcessPool as error:
                raise MergeguardError(
                    f"a merge worker process died while computing {self.layout[index][0]} ({error})",
                    hint="check the free memory (a worker holds a few tensor blocks) and run the merge again",
                ) from error
            self.writer.mark_written(self.layout[index][0], self.layout[index][3])
            self.finished(index)
