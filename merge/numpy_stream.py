"""The torch-free merge loop: numpy kernels streaming blocks from the input files into the shards.

Used by the engine when every tensor can take it (`numpy_kernel`); it skips torch's import, holds only
block-sized buffers (never a tensor), and spreads whole output tensors over the processes of a
`WorkerPool`. Unchanged passthrough tensors are copied file to file without being read into the process.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mergeguard.errors import MergeguardError
from mergeguard.merge.config import MergeConfig, config_models
from mergeguard.merge.io import ShardWriter, parse_size
from mergeguard.merge.kernels import Job, Kernel, Operand, run, supported_dtype
from mergeguard.merge.kernels.floats import STORAGE, widen, work_dtype
from mergeguard.merge.layout import output_layout, tensor_seed
from mergeguard.merge.methods import METHODS, MergeMethod
from mergeguard.merge.options import MergeOptions, Progress, under_way
from mergeguard.merge.workers import WorkerPool

if TYPE_CHECKING:
    from mergeguard.merge.plan import MergePlan, SourceModel, TensorTask

QUEUED = 2
"""Jobs submitted per worker: one running, one waiting, so that a worker never waits on this process
(which runs the family check and imports the database code once the first jobs are out)."""
PARALLEL_MIN_ELEMENTS = 1 << 24
"""Below this many computed elements the merge runs in this process, unless the caller started the pool:
starting workers, and every job's round trip, would cost more than they save."""


def numpy_kernel(
    config: MergeConfig,
    method: MergeMethod,
    models: dict[str, SourceModel],
    plan: MergePlan,
    options: MergeOptions,
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
    return kernel_for(method, [task.options for task in plan.tasks])


def kernel_for(method: MergeMethod, options: Iterable[dict[str, Any]]) -> Kernel | None:
    """The method's numpy kernel when it takes every tensor's resolved options, else None (torch merges)."""
    declared = method.kernel
    if declared is None or not all(declared.accepts(opts) for opts in options):
        return None
    return declared.run


def workers_help_early(config: MergeConfig, device: str = "cpu") -> bool:
    """Whether this merge will likely run in worker processes, so that its caller may start them before the
    inputs are read and planned (`WorkerPool.start`): a CPU merge by a method whose kernel computes most
    tensors, of inputs big enough."""
    method = METHODS.get(config.merge_method)
    if device != "cpu" or method is None or method.kernel is None or not method.kernel.workers_early:
        return False
    biggest = 0
    for ref in config_models(config):
        folder = Path(ref.split("+", 1)[0]).expanduser()
        if folder.is_dir():
            files = [f for f in folder.glob("*.safetensors") if os.path.isfile(f)]  # no loop, no FIFO
            biggest = max(biggest, sum(f.stat().st_size for f in files))
    return biggest >= 2 * PARALLEL_MIN_ELEMENTS  # two bytes an element at least


def _operand(models: dict[str, SourceModel], ref: str, name: str) -> Operand:
    reader = models[ref].reader
    path, offset, nbytes = reader.locate(name)
    dtype = reader.dtype(name)
    return Operand(dtype, nbytes // STORAGE[dtype].itemsize, path=str(path), offset=offset)


def _vocab_operands(models: dict[str, SourceModel], plan: MergePlan, task: TensorTask) -> dict[Any, Operand]:
    """A vocabulary tensor's inputs read whole, widened, aligned (or truncated): in-memory operands."""
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


def stream_numpy(
    config: MergeConfig,
    method: MergeMethod,
    kernel: Kernel,
    models: dict[str, SourceModel],
    plan: MergePlan,
    out: Path,
    options: MergeOptions,
    pool: WorkerPool,
) -> int:
    """Compute and write every planned tensor; returns the bytes written.

    Big merges (or any, when the caller started `pool`) run in the pool's processes, each job naming its
    files, the workers writing their output blocks straight into the shard files; small ones run here,
    where a process would cost more than it saves. The pool's processes stop when the stream ends.
    """
    seed = options.random_seed if options.random_seed is not None else int.from_bytes(os.urandom(4), "little")
    layout = output_layout(config, models, plan)
    writer = ShardWriter(out, layout, parse_size(options.out_shard_size))
    stream = _Stream(config, method, kernel, models, plan, options, writer, layout, seed, pool)
    copies = [stream.copied(task, layout[i][1]) for i, task in enumerate(plan.tasks)]
    computed = sum(math.prod(t.shape) for t, c in zip(plan.tasks, copies, strict=True) if not c)
    parallel = pool.started or (pool.workers > 1 and computed >= PARALLEL_MIN_ELEMENTS)
    # biggest first: the embeddings do not end up alone on one worker while the other one idles
    order = (
        sorted(range(len(plan.tasks)), key=lambda i: -layout[i][3]) if parallel else range(len(plan.tasks))
    )
    try:
        for index in order:
            if not stream.started and (not parallel or len(stream.pending) >= QUEUED * pool.workers):
                stream.start()  # the workers are fed
            stream.step(index, copies[index], parallel)
        if not stream.started:
            stream.start()
        while stream.pending:
            stream.collect()
    finally:
        if parallel:  # after a failure, wait: a running job may still be writing into shards being removed
            pool.cancel(stream.pending)
    writer.finish()
    return writer.bytes_written


@dataclass
class _Stream:
    """What `stream_numpy`'s steps share: they build the jobs, and count and report the finished tensors."""

    config: MergeConfig
    method: MergeMethod
    kernel: Kernel
    models: dict[str, SourceModel]
    plan: MergePlan
    options: MergeOptions
    writer: ShardWriter
    layout: list[Any]
    seed: int
    pool: WorkerPool
    started: bool = False  # the caller's `on_started` ran
    tensors: int = 0
    bytes: int = 0
    pending: dict[Future[Any], int] = field(default_factory=dict)  # a worker's job -> its task's index
    total_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.total_bytes = sum(entry[3] for entry in self.layout)

    def start(self) -> None:
        """The merge is under way: the caller's `on_started` runs while the workers compute."""
        under_way(self.options, self.models, self.pool)
        self.started = True

    def step(self, index: int, copied: bool, parallel: bool) -> None:
        """Copy the tensor `index`, compute it here, or send it to a worker (waiting for a free place)."""
        task = self.plan.tasks[index]
        name, dtype, _, size = self.layout[index]
        if copied:
            self.writer.copy(name, *self.models[task.inputs[0][0]].reader.locate(task.inputs[0][1]))
            self.finished(index)
        elif not parallel or task.vocab:  # an aligned vocabulary is in memory: not sent to a worker
            run(self.kernel, self.job(task, dtype))
            self.writer.mark_written(name, size)
            self.finished(index)
        else:
            while len(self.pending) >= QUEUED * self.pool.workers:
                self.collect()
            self.pending[self.pool.submit(run, self.kernel, self.job(task, dtype))] = index

    def job(self, task: TensorTask, dtype: str) -> Job:
        """The kernel's job for `task`: its operands (files and offsets, or aligned arrays) and target."""
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
        """Whether `task`'s output is its input's stored bytes (unscaled passthrough): copied, not made."""
        ref, name = task.inputs[0]
        stored = self.models[ref].reader.dtype(name)
        compute = self.config.dtype or stored
        copies = self.method.kernel.copies if self.method.kernel is not None else None
        return not task.vocab and copies is not None and copies(task.params, stored, compute, dtype)

    def finished(self, index: int) -> None:
        """Count the tensor `index` as written and report the progress."""
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
