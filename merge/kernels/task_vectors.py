"""task_arithmetic, ties, dare_ties and dare_linear kernels: the numpy twin of `methods/task_arithmetic.py`.

merged = base + lambda * combine_i(w_i * sparsify(x_i - base)). Task vectors are never held whole: a
sparsification that needs the whole tensor (the TIES magnitude cut, DARE's L1 rescale) is decided in a first
pass over blocks, and the combine pass recomputes each block's task vectors and applies the decision (a
threshold, or the DARE keep mask stored as bits). TIES keeps the lowest indices among magnitudes equal to the
cut at every size; the torch method does so above `EXACT_TIES_MAX_NUMEL` and follows mergekit's sort below.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from mergeguard.merge.method_rules import Cut, missing_base, trim_size

from . import BLOCK, Job, NumpyKernel, Operand, mix

RESCALE_EPS = 1e-7
_SAMPLE = 1 << 16

CONSENSUS = (None, "sum")
"""The sign consensus the kernel computes (none, or TIES's weighted sum); other variants merge with torch."""
SPARSIFICATIONS = (None, "magnitude", "random")
"""The sparsifications the kernel computes (none, TIES's trim, DARE's drop); others merge with torch."""


def for_variant(name: str, sparsification: str | None, consensus: str | None) -> NumpyKernel | None:
    """The kernel of the task-vector method `name` (`methods/task_arithmetic.py`'s switches), or None."""
    if sparsification not in SPARSIFICATIONS or consensus not in CONSENSUS:
        return None
    run = partial(task_vectors, method=name, sparsification=sparsification, consensus=consensus is not None)
    return NumpyKernel(run, accepts=partial(accepts, sparsification=sparsification))


def accepts(options: dict[str, Any], sparsification: str | None) -> bool:
    """False for the options that only the torch method implements (the papers' variants, TIES rescale)."""
    if options.get("paper_sign_election") or options.get("paper_rescale"):
        return False
    return not (sparsification == "magnitude" and options.get("rescale"))


@dataclass
class Sparsity:
    """One model's decided sparsification, applied block by block in the combine pass."""

    cut: Cut | None = None
    keep_bits: np.ndarray | None = None  # DARE: the kept entries, one bit each
    factor: float = 1.0  # DARE: L1 rescale of the survivors


def task_vectors(job: Job, method: str, sparsification: str | None, consensus: bool) -> np.ndarray | None:
    if job.base is None:
        raise missing_base(method)
    base = job.base
    others = job.others()
    weights = [float(p["weight"]) for _, p in others]
    if sparsification is None and not consensus:
        return mix(job, [base, *(o for o, _ in others)], _dense_coefficients(job, weights))
    out = job.output()
    decided = [_decide(job, operand, p, sparsification) for operand, p in others]
    # each task vector is scaled once: its weight times its DARE rescale factor (in the work dtype)
    scales = [
        float(job.work.type(w) * job.work.type(d.factor)) for w, d in zip(weights, decided, strict=True)
    ]
    opts = job.options
    lam = float(opts["lambda"])
    normalize = bool(opts["normalize"])
    operands = [base, *(operand for operand, _ in others)]
    rows = job.buffer(rows=len(operands))
    for start, end in job.blocks():
        loaded = job.load_rows(operands, start, end, rows)
        b, deltas = loaded[0], loaded[1:]
        if not others:
            job.store(b, out, start)
            continue
        for i, delta in enumerate(deltas):
            np.subtract(delta, b, out=delta)
            _apply(delta, decided[i], start)
        mixed = _combine(deltas, scales, weights, consensus, normalize)
        if lam != 1:
            np.multiply(mixed, lam, out=mixed)
        np.add(mixed, b, out=mixed)
        job.store(mixed, out, start)
    return out


def _dense_coefficients(job: Job, weights: list[float]) -> np.ndarray:
    """base + lam * sum_i w_i (x_i - base) / d, written as one weighted sum of [base, x_1, ...]."""
    w = np.array(weights, dtype=job.work)
    divisor = w.sum() if job.options["normalize"] else job.work.type(1)
    if abs(divisor) < 1e-8:
        divisor = job.work.type(1)
    scaled = w * job.work.type(float(job.options["lambda"])) / divisor
    return np.concatenate([[job.work.type(1) - scaled.sum()], scaled]).astype(job.work)


def _combine(
    deltas: np.ndarray, scales: list[float], weights: list[float], consensus: bool, normalize: bool
) -> np.ndarray:
    """combine_i(s_i * delta_i) for one block (deltas: models x elements, clobbered); returns deltas[0].

    s_i is w_i (times DARE's rescale); `normalize` divides by the sum of the w_i (of the agreeing models
    under a sign consensus). Masks are bool arrays combined with logical operations: numpy's masked
    copies and `where` cost many times more (README, Performance).
    """
    for row, scale in zip(deltas, scales, strict=True):
        np.multiply(row, scale, out=row)
    if not consensus:
        mixed = _sum_rows(deltas)
        if normalize:
            divisor = np.array(weights, dtype=deltas.dtype).sum()
            np.divide(mixed, divisor if abs(divisor) >= 1e-8 else 1, out=mixed)
        return mixed
    size = deltas.shape[1]
    total = np.add.reduce(deltas, axis=0) if len(deltas) > 2 else np.add(deltas[0], deltas[-1])
    positive = np.greater_equal(total, 0)  # the elected sign: that of the weighted sum (0 counts as +)
    negative = np.logical_not(positive)
    above, below = np.empty(size, bool), np.empty(size, bool)
    divisor = np.zeros(size, deltas.dtype) if normalize else None
    for row, weight in zip(deltas, weights, strict=True):
        np.greater(row, 0, out=above)
        np.logical_and(above, positive, out=above)
        np.less(row, 0, out=below)
        np.logical_and(below, negative, out=below)
        np.logical_or(above, below, out=above)  # agrees with the elected sign (zeros never do)
        np.multiply(row, above, out=row)
        if divisor is not None:
            np.multiply(above, deltas.dtype.type(weight), out=total)
            np.add(divisor, total, out=divisor)
    mixed = _sum_rows(deltas)
    if divisor is not None:
        np.equal(divisor, 0, out=above)
        np.add(divisor, above, out=divisor)  # no model agrees: 0 / 1 (the sum is 0 there)
        np.divide(mixed, divisor, out=mixed)
    return mixed


def _sum_rows(rows: np.ndarray) -> np.ndarray:
    """Sum of the rows into rows[0], in row order."""
    for row in rows[1:]:
        np.add(rows[0], row, out=rows[0])
    return rows[0]


def _decide(job: Job, operand: Operand, params: dict[str, Any], kind: str | None) -> Sparsity:
    if kind == "magnitude":
        return Sparsity(cut=_magnitude_cut(job, operand, float(params["density"])))
    if kind == "random":
        return _dare(job, operand, float(params["density"]), bool(job.options["rescale"]))
    return Sparsity()


def _apply(delta: np.ndarray, sparsity: Sparsity, start: int) -> None:
    """Zero what the decided sparsification drops from the block of `delta` that begins at `start`."""
    if sparsity.cut is not None:
        cut = sparsity.cut
        magnitude = np.abs(delta)
        keep = magnitude > cut.thr
        if cut.ties > 0:
            at = np.flatnonzero(magnitude == cut.thr)[: cut.ties]
            keep[at] = True
            cut.ties -= len(at)
        np.multiply(delta, keep, out=delta)
    elif sparsity.keep_bits is not None:
        bits = sparsity.keep_bits[start // 8 : (start + len(delta) + 7) // 8]
        keep = np.unpackbits(bits, count=len(delta)).view(bool)
        np.multiply(delta, keep, out=delta)  # the rescale factor goes with the weight (`scales`)


def _magnitudes(job: Job, operand: Operand, start: int, end: int, pair: np.ndarray) -> np.ndarray:
    """|x - base| for one block, computed in the two-row buffer `pair`; returns it (a row of `pair`)."""
    delta, base = job.load_rows([operand, job.base], start, end, pair)  # type: ignore[list-item]
    np.subtract(delta, base, out=delta)
    return np.abs(delta, out=delta)


def _magnitude_cut(job: Job, operand: Operand, density: float) -> Cut | None:
    """The TIES trim: keep the k = max(1, int(density * n)) largest |delta| (None keeps everything)."""
    n = job.n
    k = trim_size(n, density)
    if k is None:
        return None
    if k == 0:
        return Cut(float("inf"), 0)
    m = n - k + 1  # the threshold is the m-th smallest magnitude
    value, less, equal = _kth(job, operand, m)
    need = k - (n - less - equal)
    return Cut(value, 0 if value == 0 else need)


def _kth(job: Job, operand: Operand, m: int) -> tuple[float, int, int]:
    """(m-th smallest |delta|, count below it, count equal to it), never holding all of |delta|.

    A strided sample brackets the answer; one pass counts the entries below the bracket and keeps those
    inside it, which are few, for an exact `np.partition`.
    """
    n = job.n
    pair = job.buffer(rows=2)
    lo = hi = None
    if n > 4 * _SAMPLE:
        step = n // _SAMPLE
        step += 1 - step % 2  # odd, so the sample does not follow one column of a matrix
        sample = np.abs(job.sample(operand, step) - job.sample(job.base, step))  # type: ignore[arg-type]
        size = len(sample)
        pos = (m - 0.5) / n * size
        margin = 5 * size**0.5
        sample.sort()
        lo = sample[max(0, int(pos - margin) - 1)]
        hi = sample[min(size - 1, int(pos + margin))]
    below = 0
    inside: list[np.ndarray] = []
    for start, end in job.blocks():
        block = _magnitudes(job, operand, start, end, pair)
        if lo is None:
            inside.append(block.copy())
            continue
        below += int(np.count_nonzero(block < lo))
        inside.append(block[(block >= lo) & (block <= hi)])
    values = np.concatenate(inside) if inside else np.empty(0, job.work)
    if not below < m <= below + len(values):  # the sample missed (almost never): rank everything
        return _kth_all(job, operand, m)
    values.partition(m - below - 1)
    value = values[m - below - 1]
    less = below + int(np.count_nonzero(values < value))
    return float(value), less, int(np.count_nonzero(values == value))


def _kth_all(job: Job, operand: Operand, m: int) -> tuple[float, int, int]:
    magnitudes = np.empty(job.n, job.work)
    pair = job.buffer(rows=2)
    for start, end in job.blocks():
        magnitudes[start:end] = _magnitudes(job, operand, start, end, pair)
    value = np.partition(magnitudes, m - 1)[m - 1]
    return (
        float(value),
        int(np.count_nonzero(magnitudes < value)),
        int(np.count_nonzero(magnitudes == value)),
    )


def _dare(job: Job, operand: Operand, density: float, rescale: bool) -> Sparsity:
    """DARE: keep each entry with probability `density`; with `rescale`, restore the L1 norm (mergekit)."""
    if density >= 1:
        return Sparsity()
    bits = np.zeros((job.n + 7) // 8, np.uint8)
    if density <= 0:
        return Sparsity(keep_bits=bits)
    pair = job.buffer(rows=2)
    draws = np.empty(min(job.n, BLOCK), np.float32)
    keep = np.empty(min(job.n, BLOCK), bool)
    kept = job.buffer()
    before = after = 0.0
    for start, end in job.blocks():
        size = end - start
        r = job.rng.random(out=draws[:size], dtype=np.float32)
        np.less(r, density, out=keep[:size])
        bits[start // 8 : (end + 7) // 8] = np.packbits(keep[:size])
        if rescale:
            block = _magnitudes(job, operand, start, end, pair)
            before += float(np.add.reduce(block))
            np.copyto(kept[:size], keep[:size])
            after += float(np.dot(block, kept[:size]))  # masked sums are slow in numpy; this is BLAS
    factor = before / after if rescale and before >= RESCALE_EPS and after >= RESCALE_EPS else 1.0
    return Sparsity(keep_bits=bits, factor=float(job.work.type(factor)) if factor != 1.0 else 1.0)
