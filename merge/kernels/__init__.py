"""numpy kernels for the most used merge methods, so a CPU merge of safetensors never imports torch.

torch's import alone costs more than a whole passthrough merge should take (README, Performance), and the
element-wise methods need nothing that numpy lacks. Each kernel computes one output tensor block by block
(cache-sized float32 blocks, never a float32 copy of a whole tensor) with the same formula as the torch
method of the same name in `merge/methods/`, which declares it (`MergeMethod.kernel`); the engine uses the
torch method whenever no kernel applies (`numpy_stream.numpy_kernel`): another device, pickled inputs,
integer tensors, or a method or option without a kernel.

Precision: kernels compute in float32 (float64 for float64) and round once to the output dtype. The torch
methods, like mergekit, round half-precision intermediates (e.g. each task vector) to the config's dtype,
so on float16/bfloat16 merges the two differ on many entries: task_arithmetic about 12% (at most ~3 ulps
of the inputs' scale); TIES about 23% (measured on the tiny test models: 23.8% of entries in bfloat16, max
0.043; 22.7% in float16, max 0.029), because a rounded intermediate moves the trim and the sign election.
Rounding once is the more accurate: against the float32 result of the same bfloat16 inputs, 0.22% of the
kernels' TIES entries are off by more than one ulp, and 9.5% of mergekit's. `--mergekit-rounding` runs the
torch methods, which give mergekit's half-precision TIES bit for bit (tested). float32 merges agree to
float32 rounding (the mergekit parity tests run both paths). A block holding NaN/inf, or values its
output dtype cannot hold, fails the merge unless the inputs already hold such values (`Job.store`).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from mergeguard.errors import MergeguardError

from .floats import STORAGE, narrow, round_to, widen, work_dtype

OVERFLOW = {
    "float16": 65520.0,  # the smallest magnitude that rounds to float16's inf
    "bfloat16": 3.3961775e38,  # 2**128 - 2**119: rounds to bfloat16's inf
    "float32": float(np.finfo(np.float32).max),
    "float64": float("inf"),
}
"""Values at least this large (in magnitude) become inf in each output dtype."""
BLOCK = 1 << 16
"""Elements converted and combined at a time: a few float32 blocks per input stay in the CPU cache."""


@dataclass
class Operand:
    """One input tensor as stored (half precisions as uint16 bits), with its dtype.

    Either an in-memory flat array, or `size` elements at byte `offset` of the file `path`, which the
    kernels read block by block with pread into a small reused buffer: the bytes arrive in the CPU cache
    just before they are converted, and no mapping or copy of the whole tensor is ever made. A file
    operand is a few plain fields, so a job pickles cheaply to a worker process, which opens the file.
    """

    dtype: str
    size: int
    array: np.ndarray | None = None
    path: str = ""
    offset: int = 0

    @classmethod
    def of(cls, array: np.ndarray, dtype: str) -> Operand:
        """An in-memory operand (`array` holds the storage: uint16 bits for half precisions)."""
        flat = array.reshape(-1)
        return cls(dtype, int(flat.size), array=flat)

    def read(self, start: int, end: int, buffer: np.ndarray, files: Files) -> np.ndarray:
        """Stored elements [start, end); `buffer` (bytes, at least BLOCK * 8) receives them from a file."""
        if self.array is not None:
            return self.array[start:end]
        storage = STORAGE[self.dtype]
        view = buffer[: (end - start) * storage.itemsize]
        pread_into(files.open(self.path), view, self.offset + start * storage.itemsize)
        return view.view(storage)

    def strided(self, step: int, files: Files) -> np.ndarray:
        """Every `step`-th stored element (a sample): a file is mapped, and only sampled pages are read."""
        if self.array is not None:
            return self.array[::step].copy()
        storage = STORAGE[self.dtype]
        skew = self.offset % mmap.ALLOCATIONGRANULARITY
        length = self.size * storage.itemsize
        fd = files.open(self.path)
        with mmap.mmap(fd, length + skew, prot=mmap.PROT_READ, offset=self.offset - skew) as region:
            mapped = np.frombuffer(region, storage, count=self.size, offset=skew)
            values = mapped[::step].copy()
            del mapped  # the mapping closes only when no array refers to it
        return values


class Files:
    """The files one job reads and writes, opened on first use and closed with the job."""

    def __init__(self) -> None:
        self._fds: dict[tuple[str, int], int] = {}

    def open(self, path: str, flags: int = os.O_RDONLY) -> int:
        key = (path, flags)
        if key not in self._fds:
            self._fds[key] = os.open(path, flags)
        return self._fds[key]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def pread_into(fd: int, view: np.ndarray, offset: int) -> None:
    """Fill the byte array `view` from `fd` at `offset`."""
    done = 0
    total = view.nbytes
    memory = memoryview(view).cast("B")
    while done < total:
        got = os.preadv(fd, [memory[done:]], offset + done)
        if got <= 0:
            raise MergeguardError("a weights file ends early", hint="download the model again")
        done += got


@dataclass
class Job:
    """Everything a kernel sees for one output tensor (the numpy twin of `methods.base.MergeInputs`).

    Picklable as built (buffers are made on first use), so that a worker process can run it.
    """

    tensors: list[Operand]
    params: list[dict[str, Any]]
    base: Operand | None
    base_index: int | None
    options: dict[str, Any]
    name: str
    compute: str | None  # the config's `dtype:` (inputs are cast to it first); None: each input as stored
    out: str  # the output dtype
    seed: int | None = None  # seeds `rng` (random methods)
    target: tuple[str, int] | None = None  # (file, byte offset) to write the output to; None: in memory
    _raw_rows_buffer: np.ndarray | None = field(default=None, repr=False)
    _inputs_not_finite: bool = field(default=False, repr=False)  # then non-finite outputs pass

    @property
    def n(self) -> int:
        return (self.base or self.tensors[0]).size

    @cached_property
    def work(self) -> np.dtype:
        return work_dtype(self.compute or self.out, *(t.dtype for t in self.tensors))

    @cached_property
    def files(self) -> Files:
        return Files()

    @cached_property
    def rng(self) -> np.random.Generator:
        if self.seed is None:
            raise MergeguardError(f"{self.name}: a random method needs a seed", hint="this is a bug")
        return np.random.Generator(np.random.PCG64(self.seed))

    @cached_property
    def scratch(self) -> np.ndarray:
        return np.empty(min(self.n, BLOCK), np.uint32)

    @cached_property
    def raw(self) -> np.ndarray:
        return np.empty(min(self.n, BLOCK) * 8, np.uint8)

    @cached_property
    def out_block(self) -> np.ndarray:
        return np.empty(min(self.n, BLOCK), STORAGE[self.out])

    def others(self) -> list[tuple[Operand, dict[str, Any]]]:
        """The non-base inputs with their parameters, in config order."""
        return [
            (t, p)
            for i, (t, p) in enumerate(zip(self.tensors, self.params, strict=True))
            if i != self.base_index
        ]

    def blocks(self) -> Iterator[tuple[int, int]]:
        for start in range(0, self.n, BLOCK):
            yield start, min(self.n, start + BLOCK)

    def buffer(self, rows: int = 0) -> np.ndarray:
        """A reusable block buffer in the work dtype (`rows` > 0: one row per model)."""
        size = min(self.n, BLOCK)
        return np.empty((rows, size) if rows else size, self.work)

    def load(self, operand: Operand, start: int, end: int, out: np.ndarray) -> np.ndarray:
        """Elements [start, end) of `operand` as work-dtype values, as the torch path sees them."""
        stored = operand.read(start, end, self.raw, self.files)
        block = widen(stored, operand.dtype, out[: end - start], self.scratch)
        if self.compute and not _exact_in(operand.dtype, self.compute):  # cast to the config's dtype
            round_to(block, self.compute, self.scratch)
        return block

    def load_rows(self, operands: list[Operand], start: int, end: int, rows: np.ndarray) -> np.ndarray:
        """Elements [start, end) of each operand into the rows of `rows` (as `load`); returns those rows.

        Half-precision files of one dtype are read into one buffer and widened by one set of numpy calls
        for all rows: a block costs a few dozen numpy calls, whose overhead is a sizeable part of a merge.
        """
        size, count = end - start, len(operands)
        dtype = operands[0].dtype
        batched = (
            size == rows.shape[1]
            and rows.dtype == np.float32
            and dtype in ("float16", "bfloat16")
            and not (self.compute and not _exact_in(dtype, self.compute))
            and all(o.dtype == dtype and o.array is None for o in operands)
        )
        if not batched:
            for operand, row in zip(operands, rows, strict=False):
                self.load(operand, start, end, row)
            return rows[:count, :size]
        raw = self._raw_rows(count)
        for operand, stored in zip(operands, raw, strict=False):
            operand.read(start, end, stored.view(np.uint8), self.files)
        widen(raw[:count].reshape(-1), dtype, rows[:count].reshape(-1), self.scratch)
        return rows[:count]

    def _raw_rows(self, count: int) -> np.ndarray:
        """A (count, block) buffer of stored half-precision elements, kept for the job's next blocks."""
        if self._raw_rows_buffer is None or len(self._raw_rows_buffer) < count:
            self._raw_rows_buffer = np.empty((count, min(self.n, BLOCK)), np.uint16)
        return self._raw_rows_buffer

    def sample(self, operand: Operand, step: int) -> np.ndarray:
        """Every `step`-th element of `operand`, as work-dtype values."""
        stored = operand.strided(step, self.files)
        scratch = np.empty(len(stored), np.uint32)
        values = widen(stored, operand.dtype, np.empty(len(stored), self.work), scratch)
        if self.compute and not _exact_in(operand.dtype, self.compute):
            round_to(values, self.compute, scratch)
        return values

    def _check_finite(self, block: np.ndarray) -> None:
        """Refuse a block that holds NaN/inf, or values its output dtype rounds to inf (a float16 overflow),
        unless the inputs already hold such values (then they pass through as the method makes them)."""
        if float(np.dot(block, block)) < OVERFLOW[self.out] ** 2:  # one BLAS pass; NaN/inf fail it
            return
        low, high = float(block.min()), float(block.max())  # rare: big values, or not finite
        if np.isfinite(low) and np.isfinite(high) and max(-low, high) < OVERFLOW[self.out]:
            return
        if not self.inputs_finite():
            self._inputs_not_finite = True
            return
        what = "NaN or inf" if not (np.isfinite(low) and np.isfinite(high)) else f"beyond {self.out}'s range"
        raise MergeguardError(
            f"the merged tensor {self.name} has values {what} although its inputs are finite",
            hint="merge in float32 (`dtype: float32` or `out_dtype: float32`) or use smaller weights",
        )

    def inputs_finite(self) -> bool:
        """True when every input of this tensor is finite (read once more, block by block)."""
        values = self.buffer()
        for operand in {id(o): o for o in [*self.tensors, *([self.base] if self.base else [])]}.values():
            for start, end in self.blocks():
                if not np.isfinite(self.load(operand, start, end, values)).all():
                    return False
        return True

    def output(self) -> np.ndarray | None:
        """The whole output in memory, or None when the blocks go straight to `target`."""
        return None if self.target else np.empty(self.n, STORAGE[self.out])

    def store(self, block: np.ndarray, out: np.ndarray | None, start: int) -> None:
        """Round `block` (clobbered) to the compute dtype, then to the output dtype, into out[start:...]."""
        if self.compute and self.compute != self.out and self.compute != self.work.name:
            round_to(block, self.compute, self.scratch)
        if len(block) and not self._inputs_not_finite:
            self._check_finite(block)
        if out is not None:
            narrow(block, self.out, out[start : start + len(block)], self.scratch)
            return
        assert self.target is not None
        path, offset = self.target
        dest = self.out_block[: len(block)]
        narrow(block, self.out, dest, self.scratch)
        fd = self.files.open(path, os.O_WRONLY)
        written = os.pwrite(fd, memoryview(dest).cast("B"), offset + start * dest.itemsize)
        if written != dest.nbytes:
            raise MergeguardError(f"short write of {self.name}", hint="check the free disk space")


def mix(job: Job, operands: list[Operand], coefficients: np.ndarray) -> np.ndarray | None:
    """The output sum_i c_i x_i: each block's inputs are widened into rows of one buffer and combined by
    a single matrix-vector product (BLAS), instead of a multiply and an add per input."""
    out = job.output()
    rows = job.buffer(rows=len(operands))
    result = job.buffer()
    for start, end in job.blocks():
        size = end - start
        block = result[:size]
        np.dot(coefficients, job.load_rows(operands, start, end, rows), out=block)
        job.store(block, out, start)
    return out


def _exact_in(src: str, dst: str) -> bool:
    """True when every `src` value is representable in `dst`."""
    return src == dst or dst == "float64" or (dst == "float32" and src in ("float16", "bfloat16"))


Kernel = Callable[[Job], "np.ndarray | None"]
"""Returns the output in memory, or None when the job has a `target`."""


def run(kernel: Kernel, job: Job) -> np.ndarray | None:
    """Run `kernel` on `job` and close the files it opened (in whichever process runs it)."""
    try:
        return kernel(job)
    finally:
        job.files.close()


def _always(options: dict[str, Any]) -> bool:
    return True


@dataclass(frozen=True)
class NumpyKernel:
    """A merge method's numpy twin, as the method declares it (`MergeMethod.kernel`)."""

    run: Kernel
    """Computes one output tensor (a module-level function or a partial of one: it is sent to workers)."""
    accepts: Callable[[dict[str, Any]], bool] = _always
    """Whether the kernel handles a tensor's resolved method options; False for any tensor: torch merges."""
    copies: Callable[[list[dict[str, Any]], str, str, str], bool] | None = None
    """(params, stored dtype, compute dtype, output dtype) -> whether the output is the input's bytes, which
    are then copied file to file, never computed (passthrough)."""
    workers_early: bool = True
    """Worth starting the worker processes before the plan is made (False when most tensors are copied)."""


def supported_dtype(dtype: str) -> bool:
    """Whether the kernels read and write `dtype` (the floats; integer buffers go through torch)."""
    return dtype in STORAGE
