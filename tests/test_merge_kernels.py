"""The numpy merge kernels (merge/kernels) against torch's casts and the torch methods of the same name.

Three layers: the half-precision conversions bit for bit against numpy/torch; each kernel against its torch
method on tensors spanning several kernel blocks (DARE, whose draws differ by design, by its properties);
and whole merges of the tiny fixture models with `backend="numpy"` against `backend="torch"`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mergeguard.errors import ConfigError, MergeguardError
from mergeguard.merge import MergeOptions, load_config, run_merge, workers
from mergeguard.merge.engine import tensor_seed
from mergeguard.merge.kernels import BLOCK, Job, NumpyKernel, Operand, run
from mergeguard.merge.kernels.floats import narrow, widen
from mergeguard.merge.methods import METHODS, REQUIRED, MergeInputs, get_method
from mergeguard.merge.numpy_stream import kernel_for
from mergeguard.merge.workers import WorkerPool

BIG = 3 * BLOCK + 123  # several blocks and a ragged last one
TINY = 7
SIZES = (TINY, BIG)
SAMPLED = 4 * BLOCK + 777  # above 4 * 65536: the TIES cut is bracketed by a sample (torch: lowest index wins)
HALVES = ("float16", "bfloat16")
TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


# ---------------------------------------------------------------- helpers


def _storage(t: torch.Tensor) -> np.ndarray:
    """A tensor as the kernels hold it: half precisions as their uint16 bits."""
    t = t.contiguous().reshape(-1)
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.view(torch.int16).numpy().view(np.uint16).copy()
    return t.numpy().copy()


def _tensor(stored: np.ndarray, dtype: str) -> torch.Tensor:
    """The kernels' output storage back as a torch tensor of `dtype`."""
    if dtype in HALVES:
        return torch.from_numpy(stored.view(np.int16).copy()).view(TORCH[dtype])
    return torch.from_numpy(stored.copy())


def _f16_bits(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).view(np.uint16)


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    return (
        torch.from_numpy(np.ascontiguousarray(values, np.float32))
        .to(torch.bfloat16)
        .view(torch.int16)
        .numpy()
    )


def _narrow(values: np.ndarray, dtype: str) -> np.ndarray:
    out = np.empty(len(values), np.uint16)
    narrow(values.copy(), dtype, out, np.empty(len(values), np.uint32))
    return out


def _widen(bits: np.ndarray, dtype: str, work: Any = np.float32) -> np.ndarray:
    out = np.empty(len(bits), work)
    return widen(bits, dtype, out, np.empty(len(bits), np.uint32))


def _options(method: str, **overrides: Any) -> dict[str, Any]:
    """Method-level options as the plan resolves them: every declared default, then the overrides."""
    opts = {p.name: p.default for p in METHODS[method].params if not p.per_model}
    opts.update(overrides)
    assert all(v is not REQUIRED for v in opts.values()), opts
    return opts


def _per_model(method: str, params: dict[str, Any], is_base: bool) -> dict[str, Any]:
    out = {}
    for p in METHODS[method].params:
        if not p.per_model or (is_base and p.non_base):
            continue
        out[p.name] = params.get(p.name, p.default)
    return {k: v for k, v in out.items() if v is not REQUIRED}


def _merge_both(
    method: str,
    tensors: list[torch.Tensor],
    params: list[dict[str, Any]],
    *,
    base: torch.Tensor | None = None,
    base_index: int | None = None,
    compute: str = "float32",
    out: str | None = None,
    seed: int | None = None,
    name: str = "w",
    **options: Any,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(numpy kernel result, torch method result, torch method in float32) for one tensor.

    `tensors`/`base` are the stored inputs. The torch path casts them to `compute`, runs the method and
    casts to `out`, as the engine does; the third result runs the method on float32 copies of the
    `compute`-cast inputs and rounds once to `out`: what the kernels promise to compute. Both torch
    results are None for a randomized method (its draws differ).
    """
    out = out or compute
    opts = _options(method, **options)
    full = [_per_model(method, p, i == base_index) for i, p in enumerate(params)]
    kernel = kernel_for(get_method(method), [opts])
    assert kernel is not None, f"no kernel for {method} {opts}"
    operands = [Operand.of(_storage(t), str(t.dtype).removeprefix("torch.")) for t in tensors]
    base_operand = None
    if base is not None:
        base_operand = (
            operands[base_index]
            if base_index is not None
            else Operand.of(_storage(base), str(base.dtype).removeprefix("torch."))
        )
    job = Job(operands, full, base_operand, base_index, opts, name, compute, out, seed=seed)
    ours = _tensor(run(kernel, job), out)
    method_obj = get_method(method)
    if method_obj.randomized:
        return ours, None, None
    results = []
    for work in (TORCH[compute], torch.float32):
        cast = [t.to(TORCH[compute]).to(work) for t in tensors]
        torch_base = None
        if base is not None:
            torch_base = cast[base_index] if base_index is not None else base.to(TORCH[compute]).to(work)
        inputs = MergeInputs(cast, full, torch_base, base_index, opts, name, None)
        results.append(method_obj.fn(inputs).to(TORCH[out]).reshape(-1))
    return ours, results[0], results[1]


def _ordered(t: torch.Tensor) -> np.ndarray:
    """Half bits as integers that count units in the last place (both zeros are 0)."""
    bits = t.view(torch.int16).numpy().astype(np.int64)
    return np.where(bits < 0, -(bits & 0x7FFF), bits)


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, *, min_equal: float = 0.9) -> None:
    """float32: max abs diff <= 1e-6 (values of order 1); halves: <= 1 ulp apart, most entries equal.

    Halves may differ by more ulps only where float32 rounding alone (<= 1e-6 for values of order 1)
    separates them: results that cancel to near zero, where an ulp is tiny.
    """
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    if ours.dtype in (torch.float32, torch.float64):
        diff = (ours.double() - theirs.double()).abs().max().item() if ours.numel() else 0.0
        assert diff <= 1e-6, f"max abs diff {diff}"
        return
    a, b = _ordered(ours), _ordered(theirs)
    ulps = np.abs(a - b)
    ulps[np.abs(ours.double().numpy() - theirs.double().numpy()) <= 1e-6] = 0
    worst = int(np.argmax(ulps)) if len(ulps) else 0
    assert not len(ulps) or ulps.max() <= 1, (
        f"{int(ulps.max())} ulp apart at {worst}: {ours[worst].item()} vs {theirs[worst].item()}"
        f" ({int((ulps > 1).sum())} entries over 1 ulp)"
    )
    equal = float((a == b).mean()) if len(ulps) else 1.0
    assert equal >= min_equal, f"only {equal:.3f} of the entries are equal"


def _half_ulp(values: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """The spacing of `dtype` at |values| (the gap to the next representable magnitude)."""
    x = values.abs().to(dtype).contiguous()
    up = (x.view(torch.int16).int() + 1).to(torch.int16).view(dtype)
    return (up.double() - x.double()).numpy()


def assert_near_half_path(
    ours: torch.Tensor,
    theirs: torch.Tensor,
    inputs: list[torch.Tensor],
    *,
    flips: float = 0.0,
    within_one: float = 0.97,
    equal: float = 0.85,
) -> None:
    """`ours` against the torch method run in half precision, which rounds each intermediate (every task
    vector, product and sum) to the half dtype: entries drift by up to a few ulps of the inputs' magnitude
    (not of the output's), and sign elections / magnitude cuts decided on the rounded task vectors may
    differ on a fraction `flips` of the entries."""
    scale = torch.stack([t.reshape(-1).double().abs() for t in inputs]).amax(0)
    gap = _half_ulp(scale, ours.dtype)
    diff = (ours.double() - theirs.double()).abs().numpy()
    far = diff > 4 * gap
    assert far.mean() <= flips, f"{int(far.sum())} entries beyond 4 ulps of the inputs, e.g. {diff.max()}"
    ulps = np.abs(_ordered(ours) - _ordered(theirs))
    assert (ulps <= 1).mean() >= within_one, f"only {(ulps <= 1).mean():.3f} of the entries within 1 ulp"
    assert (ulps == 0).mean() >= equal, f"only {(ulps == 0).mean():.3f} of the entries equal"


def _randn(n: int, seed: int, scale: float = 1.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (torch.randn(n, generator=torch.Generator().manual_seed(seed)) * scale).to(dtype)


def _family(n: int, models: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> list[torch.Tensor]:
    """A base and `models` fine-tunes of it (deltas of order 0.1), stored in `dtype`."""
    base = _randn(n, seed)
    return [base.to(dtype)] + [(base + _randn(n, seed + i + 1, 0.1)).to(dtype) for i in range(models)]


# ---------------------------------------------------------------- floats


def test_widen_float16_matches_numpy_on_all_65536_patterns() -> None:
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    ours = _widen(bits, "float16")
    expected = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(expected)
    assert nan.sum() == 2 * 1023 and np.isnan(ours[nan]).all()
    assert np.array_equal(ours[~nan].view(np.uint32), expected[~nan].view(np.uint32))  # -0, inf, subnormals
    # finite blocks take the integer path, one inf sends the block to numpy's cast: both must agree
    finite = bits[np.isfinite(bits.view(np.float16))]
    assert np.array_equal(_widen(finite, "float16"), finite.view(np.float16).astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # signalling NaN patterns widened to float64
        assert np.array_equal(
            _widen(bits, "float16", np.float64), expected.astype(np.float64), equal_nan=True
        )


def test_widen_bfloat16_matches_torch_on_all_65536_patterns() -> None:
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    ours = _widen(bits, "bfloat16")
    expected = torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16).float().numpy()
    assert np.array_equal(ours.view(np.uint32), expected.view(np.uint32))


def _float16_probes() -> np.ndarray:
    """Every finite float16, the midpoints between neighbours (ties), and the float32 values either side
    of each value and each midpoint, both signs; plus values that overflow to inf."""
    bits = np.arange(0x7C00, dtype=np.uint16)  # +0 ... the largest finite
    values = bits.view(np.float16).astype(np.float64)
    mids = (values[:-1] + values[1:]) / 2
    mids = np.append(mids, 65520.0)  # halfway to the next power of two: rounds to inf
    centre = np.concatenate([values, mids]).astype(np.float32)
    assert np.array_equal(centre[len(values) :].astype(np.float64), mids)  # midpoints are exact in float32
    around = [centre, np.nextafter(centre, np.float32(np.inf)), np.nextafter(centre, np.float32(0))]
    probes = np.concatenate(around)
    return np.concatenate([probes, -probes, np.float32([65519.996, 7e4, 1e30, -1e30])])


def test_narrow_float16_matches_numpy_bit_for_bit() -> None:
    probes = _float16_probes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow to inf is the point
        in_range = probes[np.abs(probes) < 65504]
        assert np.array_equal(_narrow(in_range, "float16"), _f16_bits(in_range))  # the integer path
        assert np.array_equal(_narrow(probes, "float16"), _f16_bits(probes))  # blocks that overflow
        rng = np.random.default_rng(0)
        patterns = rng.integers(0, 1 << 32, 1 << 18, dtype=np.uint64).astype(np.uint32).view(np.float32)
        ours, expected = _narrow(patterns, "float16"), _f16_bits(patterns)
        nan = np.isnan(patterns)
        assert np.array_equal(ours[~nan], expected[~nan])
        assert np.isnan(ours[nan].view(np.float16)).all()
        # in-range random bit patterns (no block falls back to numpy's cast)
        small = patterns[np.abs(patterns) < 6e4]
        assert len(small) > 1000 and np.array_equal(_narrow(small, "float16"), _f16_bits(small))
        assert _narrow(np.float32([7e4, -7e4, np.inf]), "float16").tolist() == [0x7C00, 0xFC00, 0x7C00]
    # the largest finite float16 stays just under the integer path's overflow test
    assert _narrow(np.full(10, 65504.0, np.float32), "float16").tolist() == [0x7BFF] * 10


def _bfloat16_probes() -> np.ndarray:
    """Every finite bfloat16 as float32 with the float32 values at, just below and just above each
    midpoint between bfloat16 neighbours (the 16 dropped bits: 0x8000 +- 1), both signs."""
    bits = np.arange(0x7F80, dtype=np.uint32) << 16
    offsets = np.array([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF], dtype=np.uint32)
    probes = (bits[:, None] + offsets[None, :]).reshape(-1)
    probes = np.concatenate([probes, probes | np.uint32(0x80000000)])
    return probes.view(np.float32)


def test_narrow_bfloat16_matches_torch() -> None:
    probes = _bfloat16_probes()
    assert np.array_equal(_narrow(probes, "bfloat16"), _bf16_bits(probes).view(np.uint16))
    rng = np.random.default_rng(1)
    patterns = rng.integers(0, 1 << 32, 1 << 18, dtype=np.uint64).astype(np.uint32).view(np.float32)
    ours, expected = _narrow(patterns, "bfloat16"), _bf16_bits(patterns).view(np.uint16)
    nan = np.isnan(patterns)
    assert nan.any() and np.array_equal(ours[~nan], expected[~nan])
    widened = ours[nan].astype(np.uint32) << 16
    assert np.isnan(widened.view(np.float32)).all()  # NaN payloads may differ, NaN stays NaN
    big = np.float32([3.4028235e38, -3.4028235e38, np.inf, -np.inf])  # the largest floats round to inf
    assert np.array_equal(_narrow(big, "bfloat16"), _bf16_bits(big).view(np.uint16))


@pytest.mark.parametrize("dtype", HALVES)
def test_narrow_from_float64_matches_torch(dtype: str) -> None:
    """A float64 merge written as a half: torch's cast of the float64 tensor, which rounds through float32
    (float64 values just off a half's midpoint land on it in float32, then round to even)."""
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.standard_normal(5000), rng.standard_normal(5000) * 1e-6])
    if dtype == "float16":
        finite = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
        mids = (finite[1:] + finite[:-1]) / 2
    else:
        mids = ((np.arange(0x7F7F, dtype=np.uint32) << 16) + 0x8000).view(np.float32).astype(np.float64)
    off_mid = np.concatenate([mids + mids * 2.0**-30, mids - mids * 2.0**-30])
    expected = _storage(torch.from_numpy(off_mid).to(TORCH[dtype]))
    assert np.array_equal(_narrow(off_mid, dtype), expected)
    if dtype == "float16":  # the probes do tell double rounding from numpy's direct cast
        assert not np.array_equal(expected, off_mid.astype(np.float16).view(np.uint16))
    expected = _storage(torch.from_numpy(values).to(TORCH[dtype]))
    assert np.array_equal(_narrow(values, dtype), expected)


# ---------------------------------------------------------------- kernels vs torch methods

DTYPES = ("float32", "float16", "bfloat16")
TIES_PARAMS = [
    {"weight": 0.5, "density": 0.5},
    {"weight": 0.3, "density": 0.1},
    {"weight": 0.8, "density": 0.7},
]


def check_against_torch(
    ours: torch.Tensor,
    theirs: torch.Tensor | None,
    reference: torch.Tensor | None,
    inputs: list[torch.Tensor],
    *,
    flips: float = 0.0,
) -> None:
    """float32: the torch method to 1e-6. Halves: the float32 torch method rounded once to <= 1 ulp (what
    the kernels compute), and the torch method run in the half dtype within its own rounding drift."""
    assert theirs is not None and reference is not None
    if ours.dtype == torch.float32:
        assert_close(ours, theirs)
        return
    assert_close(ours, reference, min_equal=0.99)
    assert_near_half_path(ours, theirs, inputs, flips=flips)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("normalize", [True, False])
def test_linear_matches_torch(dtype: str, n: int, normalize: bool) -> None:
    """torch's linear accumulates in float32 too: within 1 ulp of it even in half precision."""
    tensors = [_randn(n, seed, dtype=TORCH[dtype]) for seed in range(3)]
    params = [{"weight": w} for w in (0.2, 0.5, 0.9)]
    ours, theirs, reference = _merge_both("linear", tensors, params, compute=dtype, normalize=normalize)
    assert_close(ours, theirs, min_equal=0.9 if n > TINY else 0.5)
    assert_close(ours, reference, min_equal=0.9 if n > TINY else 0.5)


def test_linear_casts_like_the_torch_path() -> None:
    """float32 inputs merged in bfloat16 (inputs rounded first) and float16 merged into a float32 output."""
    tensors = [_randn(BIG, seed) for seed in range(2)]
    params = [{"weight": 0.3}, {"weight": 0.7}]
    ours, theirs, _ = _merge_both("linear", tensors, params, compute="bfloat16", normalize=False)
    assert_close(ours, theirs)
    halves = [t.half() for t in tensors]
    ours, theirs, _ = _merge_both("linear", halves, params, compute="float16", out="float32", normalize=True)
    assert ours.dtype == torch.float32 and theirs is not None
    assert torch.equal(ours, ours.half().float())  # rounded to float16 before widening to float32
    assert_close(ours.half(), theirs.half())


@pytest.mark.parametrize("method", ["linear", "task_arithmetic"])
def test_mixed_stored_dtypes_without_a_config_dtype(method: str) -> None:
    """A bfloat16 model merged with a float32 one, no `dtype:`: each input is used as stored (compute None),
    as the torch path does, and the result is rounded once to the output dtype (the first input's)."""
    first = _randn(BIG, 0, dtype=torch.bfloat16)
    second = first.float() + _randn(BIG, 1, 0.1)
    opts = _options(method)
    params = [{"weight": 0.5}, {"weight": 0.5}] if method == "linear" else [{}, {"weight": 0.8}]
    base_index = None if method == "linear" else 0
    operands = [Operand.of(_storage(first), "bfloat16"), Operand.of(_storage(second), "float32")]
    base = operands[0] if base_index == 0 else None
    job = Job(operands, params, base, base_index, opts, "w", None, "bfloat16")
    kernel = kernel_for(get_method(method), [opts])
    assert kernel is not None
    ours = _tensor(run(kernel, job), "bfloat16")
    # the promised semantics: float32 inside, one rounding (the torch task vectors round to the base's dtype)
    wide = [first.float(), second]
    torch_base = wide[0] if base_index == 0 else None
    inputs = MergeInputs(wide, params, torch_base, base_index, opts, "w", None)
    theirs = get_method(method).fn(inputs).to(torch.bfloat16).reshape(-1)
    assert_close(ours, theirs)


def test_linear_zero_weights_with_normalize_is_a_config_error() -> None:
    tensors = [_randn(TINY, 0), _randn(TINY, 1)]
    with pytest.raises(ConfigError, match="sum to zero") as caught:
        _merge_both("linear", tensors, [{"weight": 1.0}, {"weight": -1.0}], normalize=True)
    assert caught.value.hint and "normalize" in caught.value.hint


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("normalize", [True, False])
def test_task_arithmetic_matches_torch(dtype: str, n: int, normalize: bool) -> None:
    base, *fts = _family(n, 3, TORCH[dtype])
    params = [{"weight": w} for w in (0.6, -0.3, 0.9)]
    results = _merge_both(
        "task_arithmetic", fts, params, base=base, compute=dtype, normalize=normalize, **{"lambda": 0.7}
    )
    if n == TINY and dtype != "float32":  # too few entries for the statistics; the big case has them
        assert_close(results[0], results[2], min_equal=0.5)
        return
    check_against_torch(*results, [base, *fts])


def test_task_arithmetic_with_the_base_listed() -> None:
    base, a, b = _family(BIG, 2)
    params = [{}, {"weight": 0.5}, {"weight": 0.8}]
    ours, theirs, _ = _merge_both(
        "task_arithmetic", [base, a, b], params, base=base, base_index=0, **{"lambda": 1.3}
    )
    assert_close(ours, theirs)


@pytest.mark.parametrize("n", [TINY, BIG, SAMPLED])
@pytest.mark.parametrize("density", [0.5, 0.1])
def test_ties_float32_keeps_exactly_the_torch_entries(n: int, density: float) -> None:
    base, ft = _family(n, 1, seed=3)
    ours, theirs, _ = _merge_both(
        "ties", [ft], [{"weight": 1.0, "density": density}], base=base, normalize=False
    )
    assert theirs is not None
    kept_ours, kept_theirs = (ours != base).numpy(), (theirs != base).numpy()
    assert kept_ours.sum() == max(1, int(density * n))  # random deltas: no ties at the cut
    assert np.array_equal(kept_ours, kept_theirs)
    assert_close(ours, theirs)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("n", [TINY, BIG, SAMPLED])
def test_ties_float32_matches_torch(n: int, normalize: bool) -> None:
    base, *fts = _family(n, 3, seed=5)
    ours, theirs, _ = _merge_both("ties", fts, TIES_PARAMS, base=base, normalize=normalize)
    assert_close(ours, theirs)


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("normalize", [True, False])
def test_ties_half_matches_torch(dtype: str, normalize: bool) -> None:
    """Above the exact-ties size (both break ties at the cut by lowest index). The torch method in half
    precision elects signs and cuts on rounded task vectors: a few entries may flip."""
    base, *fts = _family(SAMPLED, 3, TORCH[dtype], seed=5)
    results = _merge_both("ties", fts, TIES_PARAMS, base=base, compute=dtype, normalize=normalize)
    check_against_torch(*results, [base, *fts], flips=0.002)


def test_ties_breaks_ties_at_the_cut_by_lowest_index_when_big() -> None:
    """Above EXACT_TIES_MAX_NUMEL, equal magnitudes straddling the cut: the lowest indices win in both."""
    n = SAMPLED
    delta = torch.from_numpy((np.arange(n) % 4).astype(np.float32))  # magnitudes 0, 1, 2, 3 repeated
    ours, theirs, _ = _merge_both(
        "ties", [delta], [{"weight": 1.0, "density": 0.3}], base=torch.zeros(n), normalize=False
    )
    kept = np.flatnonzero(ours.numpy())
    assert len(kept) == int(0.3 * n)
    twos = kept[delta.numpy()[kept] == 2]
    assert np.array_equal(twos, np.arange(len(twos)) * 4 + 2)  # the first entries equal to the cut
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_ties_kernel_keeps_the_lowest_indices_at_the_cut(dtype: str) -> None:
    """Documented difference: at every size the kernel keeps the lowest indices among magnitudes equal to
    the cut; the torch method follows mergekit's argsort order up to EXACT_TIES_MAX_NUMEL (and differs)."""
    n = 1000
    delta = torch.from_numpy((np.arange(n) % 4).astype(np.float32)).to(TORCH[dtype])
    ours, theirs, _ = _merge_both(
        "ties",
        [delta],
        [{"weight": 1.0, "density": 0.3}],
        base=torch.zeros(n, dtype=TORCH[dtype]),
        compute=dtype,
        normalize=False,
    )
    k = int(0.3 * n)  # 250 threes, then the first 50 twos (indices 2, 6, ..., 198)
    kept = torch.nonzero(ours.float()).flatten()
    assert len(kept) == k
    twos = [int(i) for i in kept if int(i) % 4 == 2]
    assert twos == list(range(2, 200, 4))
    assert theirs is not None and int(torch.count_nonzero(theirs)) == k  # same count, other twos


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_slerp_matches_torch(dtype: str, n: int, t: float) -> None:
    a, b = _randn(n, 0, dtype=TORCH[dtype]), _randn(n, 1, dtype=TORCH[dtype])  # nearly orthogonal
    ours, theirs, _ = _merge_both("slerp", [a, b], [{}, {}], base=a, base_index=0, compute=dtype, t=t)
    assert theirs is not None
    assert_close(ours, theirs, min_equal=0.99 if n > TINY else 0.5)
    if t == 0.0:
        assert torch.equal(ours, a)
    if t == 1.0:
        assert_close(ours, b, min_equal=0.99 if n > TINY else 0.5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_slerp_nearly_parallel_falls_back_to_linear(dtype: str) -> None:
    """cos ~ 0.9999 (over the 0.9995 threshold): plain linear interpolation, which differs from the
    spherical formula by ~1e-4 here, so taking the wrong branch shows."""
    a = _randn(BIG, 0)
    b = a * 1.5 + _randn(BIG, 1, 0.02)
    a, b = a.to(TORCH[dtype]), b.to(TORCH[dtype])
    ours, theirs, _ = _merge_both("slerp", [a, b], [{}, {}], base=a, base_index=0, compute=dtype, t=0.3)
    assert theirs is not None
    assert_close(ours, theirs, min_equal=0.99)
    linear = (0.7 * a.double() + 0.3 * b.double()).to(TORCH[dtype])
    assert_close(ours, linear, min_equal=0.9)


def test_slerp_with_an_unlisted_base() -> None:
    a, b = _randn(BIG, 2), _randn(BIG, 3)
    ours, theirs, _ = _merge_both("slerp", [b], [{}], base=a, t=0.6)
    assert theirs is not None
    assert_close(ours, theirs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES)
def test_passthrough_with_scale_matches_torch(dtype: str, n: int) -> None:
    x = _randn(n, 4, dtype=TORCH[dtype])
    ours, theirs, _ = _merge_both("passthrough", [x], [{"scale": 0.37}], compute=dtype)
    assert theirs is not None
    assert_close(ours, theirs, min_equal=1.0)
    ours, theirs, _ = _merge_both("passthrough", [x], [{"scale": None}], compute=dtype)
    assert torch.equal(ours, x) and theirs is not None and torch.equal(theirs, x)


# ---------------------------------------------------------------- DARE


def _dare(
    method: str,
    tensors: list[torch.Tensor],
    params: list[dict[str, Any]],
    *,
    seed: int | None,
    **options: Any,
) -> torch.Tensor:
    base = torch.zeros_like(tensors[0])
    return _merge_both(method, tensors, params, base=base, seed=seed, **options)[0]


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear"])
def test_dare_is_reproducible_and_seeded_per_tensor(method: str) -> None:
    delta = _randn(BIG, 1, 0.1)
    params = [{"weight": 1.0, "density": 0.4}]
    first = _dare(method, [delta], params, seed=tensor_seed(0, "a"))
    assert torch.equal(first, _dare(method, [delta], params, seed=tensor_seed(0, "a")))
    for other in (tensor_seed(0, "b"), tensor_seed(1, "a")):
        mask = _dare(method, [delta], params, seed=other) != 0
        assert not torch.equal(first != 0, mask)
        assert abs(float((mask & (first != 0)).float().mean()) - 0.16) < 0.01  # independent draws
    with pytest.raises(MergeguardError, match="seed"):
        _dare(method, [delta], params, seed=None)


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear"])
@pytest.mark.parametrize("rescale", [True, False])
def test_dare_keeps_density_and_restores_each_l1_norm(method: str, rescale: bool) -> None:
    """Two models with disjoint supports (even / odd entries) so each model's survivors can be read off."""
    n = BIG
    even = torch.arange(n) % 2 == 0
    a = torch.where(even, _randn(n, 2, 0.1), 0.0)
    b = torch.where(even, 0.0, _randn(n, 3, 0.1))
    densities = (0.3, 0.7)
    params = [{"weight": 1.0, "density": d} for d in densities]
    out = _dare(method, [a, b], params, seed=11, rescale=rescale, normalize=False)
    for delta, support, density in ((a, even, densities[0]), (b, ~even, densities[1])):
        kept = out[support]
        original = delta[support]
        count = int((kept != 0).sum())
        size = original.numel()
        sigma = (size * density * (1 - density)) ** 0.5
        assert abs(count - density * size) <= 3 * sigma, (count, density * size, sigma)
        survivors = kept != 0
        if rescale:
            l1, l1_before = kept.double().abs().sum(), original.double().abs().sum()
            assert abs(l1 / l1_before - 1) <= 1e-4
            ratio = kept[survivors] / original[survivors]
            assert (ratio - ratio[0]).abs().max() <= 1e-6 * ratio[0]  # one factor for every survivor
        else:
            assert torch.equal(kept[survivors], original[survivors])


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dare_density_one_keeps_everything(method: str, dtype: str) -> None:
    """No draw decides anything: the torch method's result, as for a deterministic method."""
    base, *fts = _family(BIG, 2, TORCH[dtype], seed=9)
    params = [{"weight": 0.6, "density": 1.0}, {"weight": 0.5, "density": 1.0}]
    ours = _merge_both(method, fts, params, base=base, compute=dtype, seed=3)[0]
    opts = _options(method)
    full = [_per_model(method, p, False) for p in params]
    fn = get_method(method).fn
    theirs = fn(MergeInputs(fts, full, base, None, opts, "w", torch.Generator())).reshape(-1)
    wide = [t.float() for t in (base, *fts)]
    reference = fn(MergeInputs(wide[1:], full, wide[0], None, opts, "w", None)).to(TORCH[dtype]).reshape(-1)
    check_against_torch(ours, theirs, reference, [base, *fts], flips=0.002)


def test_dare_density_zero_keeps_the_base() -> None:
    base, ft = _family(BIG, 1)
    ours = _merge_both("dare_linear", [ft], [{"weight": 1.0, "density": 0.0}], base=base, seed=1)[0]
    assert torch.equal(ours, base)


# ---------------------------------------------------------------- file operands


def _file_operands(tensors: dict[str, torch.Tensor], folder: Path) -> dict[str, Operand]:
    """Write `tensors` into one safetensors file (with a 3-element float16 tensor, so that offsets are
    not page-aligned: the mapping of a sample must skew) and return them as file operands."""
    from safetensors.torch import save_file

    path = folder / "inputs.safetensors"
    save_file({"a_odd": torch.ones(3, dtype=torch.float16), **tensors}, str(path))
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    operands = {}
    for name, tensor in tensors.items():
        start, end = header[name]["data_offsets"]
        dtype = str(tensor.dtype).removeprefix("torch.")
        operands[name] = Operand(dtype, tensor.numel(), path=str(path), offset=8 + size + start)
    assert all(op.offset % 4096 for op in operands.values())
    return operands


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("method", ["ties", "dare_ties", "slerp"])
def test_file_operands_and_file_target_give_the_in_memory_result(
    method: str, dtype: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inputs read from a file with pread (and, for the sampled TIES cut, mapped and strided), the output
    written into a file with pwrite: the same bytes as the in-memory job."""
    from mergeguard.merge.kernels import task_vectors

    def rank_all(*args: Any) -> None:
        raise AssertionError("the sampled bracket missed the TIES cut (a bad sample?)")

    monkeypatch.setattr(task_vectors, "_kth_all", rank_all)
    base, a, b = _family(SAMPLED, 2, TORCH[dtype], seed=12)
    files = _file_operands({"base": base, "a": a, "b": b}, tmp_path)
    memory = {k: Operand.of(_storage(t), dtype) for k, t in {"base": base, "a": a, "b": b}.items()}
    opts = _options(method, t=0.4) if method == "slerp" else _options(method)
    params = [{"weight": 0.7, "density": 0.3}, {"weight": 0.4, "density": 0.6}]
    if method == "slerp":
        params = [{}, {}]
    kernel = kernel_for(get_method(method), [opts])
    assert kernel is not None
    target = tmp_path / "out.bin"
    offset = 6  # not aligned either
    itemsize = 4 if dtype == "float32" else 2
    target.write_bytes(b"\xff" * (offset + SAMPLED * itemsize + 5))

    def job(ops: dict[str, Operand], where: tuple[str, int] | None) -> Job:
        others = [ops["a"]] if method == "slerp" else [ops["a"], ops["b"]]
        return Job(others, params[: len(others)], ops["base"], None, opts, "w", dtype, dtype, 7, where)

    expected = run(kernel, job(memory, None))
    assert expected is not None
    assert run(kernel, job(files, (str(target), offset))) is None
    written = target.read_bytes()
    assert written[offset : offset + SAMPLED * itemsize] == expected.tobytes()
    assert written[:offset] == b"\xff" * offset and written[-5:] == b"\xff" * 5
    assert np.array_equal(run(kernel, job(files, None)), expected)


# ---------------------------------------------------------------- kernel_for


def test_kernel_for_declines_what_only_torch_implements() -> None:
    def kernel(method: str, *options: dict[str, Any]) -> Any:
        return kernel_for(get_method(method), list(options))

    assert kernel("ties", _options("ties")) is not None
    assert kernel("dare_ties", _options("dare_ties")) is not None
    assert kernel("ties", _options("ties"), _options("ties", paper_sign_election=True)) is None
    assert kernel("dare_ties", _options("dare_ties", paper_sign_election=True)) is None
    assert kernel("dare_linear", _options("dare_linear", paper_rescale=True)) is None
    assert kernel("dare_ties", _options("dare_ties", paper_rescale=True)) is None
    assert kernel("ties", _options("ties", rescale=True)) is None
    assert kernel("dare_linear", _options("dare_linear", rescale=True)) is not None
    for method in ("della", "della_linear", "nuslerp", "multislerp", "breadcrumbs", "sce", "karcher"):
        assert kernel(method, _options(method) if method != "nuslerp" else {}) is None, method


# ---------------------------------------------------------------- engine: numpy vs torch


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def _raw(folder: Path) -> dict[str, bytes]:
    """Each tensor's stored bytes, read from the safetensors header offsets (no dtype conversion)."""
    out: dict[str, bytes] = {}
    for file in sorted(folder.glob("*.safetensors")):
        data = file.read_bytes()
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + size])
        for name, entry in header.items():
            if name != "__metadata__":
                start, end = entry["data_offsets"]
                out[name] = data[8 + size + start : 8 + size + end]
    return out


def _both_backends(config: str, tmp_path: Path, **options: Any) -> tuple[Path, Path]:
    outs = []
    for backend in ("numpy", "torch"):
        out = tmp_path / backend
        opts = MergeOptions(backend=backend, write_model_card=False, random_seed=0, **options)
        run_merge(load_config(textwrap.dedent(config)), out, opts)
        outs.append(out)
    return outs[0], outs[1]


def _compare_outputs(ours: Path, theirs: Path, inputs: list[Path] | None = None) -> None:
    """Every tensor to 1e-6 (float32) or 1 ulp (halves); with `inputs` (a half-precision task-vector
    merge), all entries together within the torch path's own rounding drift (`assert_near_half_path`)."""
    a, b = _tensors(ours), _tensors(theirs)
    assert sorted(a) == sorted(b) and a
    if inputs is not None:
        names = sorted(a)
        sources = [_tensors(folder) for folder in inputs]
        dtype = a[names[0]].dtype
        assert dtype in (torch.float16, torch.bfloat16)
        flat = [torch.cat([t[name].reshape(-1).to(dtype) for name in names]) for t in (a, b)]
        given = [torch.cat([s[name].reshape(-1).to(dtype) for name in names]) for s in sources]
        # tiny models: deltas as large as the weights, so more drift than in test_ties_half_matches_torch
        assert_near_half_path(*flat, given, flips=0.003, within_one=0.9, equal=0.75)
        return
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        try:
            assert_close(a[name].reshape(-1), b[name].reshape(-1), min_equal=0.5)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}") from None


@pytest.fixture(scope="module")
def family_models(models: Any) -> dict[str, Path]:
    base = models.base("llama", seed=0, num_layers=2)
    return {"base": base, "ft1": models.finetune(base, seed=1), "ft2": models.finetune(base, seed=2)}


ENGINE_CASES = {
    "linear": """
        models:
          - model: {ft1}
            parameters: {{weight: [0.2, 0.9]}}
          - model: {ft2}
            parameters: {{weight: 0.5}}
          - model: {base}
            parameters: {{weight: 0.3}}
        merge_method: linear
        dtype: float32
    """,
    "task_arithmetic": """
        models:
          - model: {ft1}
            parameters: {{weight: 0.7}}
          - model: {ft2}
            parameters: {{weight: [0.2, 0.6]}}
        base_model: {base}
        merge_method: task_arithmetic
        parameters: {{lambda: 0.8, normalize: true}}
        dtype: float32
    """,
    "task_arithmetic_out_bfloat16": """
        models:
          - model: {ft1}
            parameters: {{weight: 0.7}}
          - model: {ft2}
            parameters: {{weight: 0.4}}
        base_model: {base}
        merge_method: task_arithmetic
        dtype: float32
        out_dtype: bfloat16
    """,
    "ties_float32": """
        models:
          - model: {base}
          - model: {ft1}
            parameters: {{weight: 0.6, density: [0.3, 0.8]}}
          - model: {ft2}
            parameters: {{weight: 0.4, density: 0.5}}
        base_model: {base}
        merge_method: ties
        parameters: {{normalize: true}}
        dtype: float32
    """,
    "ties_float16": """
        models:
          - model: {ft1}
            parameters: {{weight: 0.6, density: 0.4}}
          - model: {ft2}
            parameters: {{weight: 0.4, density: 0.5}}
        base_model: {base}
        merge_method: ties
        dtype: float16
    """,
    "slerp_bfloat16": """
        models:
          - model: {base}
          - model: {ft1}
        base_model: {base}
        merge_method: slerp
        parameters: {{t: [0.0, 0.3, 0.8, 1.0]}}
        dtype: bfloat16
    """,
    "slerp": """
        models:
          - model: {base}
          - model: {ft1}
        base_model: {base}
        merge_method: slerp
        parameters: {{t: [0.0, 0.3, 0.8, 1.0]}}
        dtype: float32
    """,
    "passthrough_scale": """
        slices:
          - sources: [{{model: {base}, layer_range: [0, 2], parameters: {{scale: 0.5}}}}]
          - sources: [{{model: {ft1}, layer_range: [1, 2]}}]
        merge_method: passthrough
    """,
}


@pytest.mark.parametrize("case", sorted(ENGINE_CASES))
def test_engine_numpy_matches_torch(case: str, family_models: dict[str, Path], tmp_path: Path) -> None:
    config = ENGINE_CASES[case].format(**family_models)
    ours, theirs = _both_backends(config, tmp_path)
    inputs = [family_models[k] for k in ("base", "ft1", "ft2")] if case == "ties_float16" else None
    _compare_outputs(ours, theirs, inputs)


def test_engine_sharded_output(family_models: dict[str, Path], tmp_path: Path) -> None:
    config = ENGINE_CASES["ties_float32"].format(**family_models)
    ours, theirs = _both_backends(config, tmp_path, out_shard_size="60KB")
    index = json.loads((ours / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    assert len(files) > 3 and files == {p.name for p in ours.glob("*.safetensors")}
    assert sorted(index["weight_map"]) == sorted(_tensors(ours))
    _compare_outputs(ours, theirs)


def test_engine_passthrough_copies_bytes(family_models: dict[str, Path], tmp_path: Path) -> None:
    config = f"""
        slices:
          - sources: [{{model: {family_models["ft2"]}, layer_range: [0, 2]}}]
        merge_method: passthrough
    """
    ours, theirs = _both_backends(config, tmp_path)
    source = _raw(family_models["ft2"])
    assert _raw(ours) == source and _raw(theirs) == source


def test_engine_numpy_backend_refuses_a_method_without_kernel(
    family_models: dict[str, Path], tmp_path: Path
) -> None:
    config = f"""
        models:
          - model: {family_models["ft1"]}
            parameters: {{weight: 0.5, density: 0.5}}
        base_model: {family_models["base"]}
        merge_method: della
    """
    with pytest.raises(MergeguardError, match="no numpy kernel"):
        run_merge(load_config(config), tmp_path / "out", MergeOptions(backend="numpy", random_seed=0))
    assert not (tmp_path / "out").exists()


DARE_CONFIG = """
    models:
      - model: {ft1}
        parameters: {{weight: 0.6, density: 0.5}}
      - model: {ft2}
        parameters: {{weight: 0.5, density: 0.3}}
    base_model: {base}
    merge_method: dare_ties
    dtype: float32
"""


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_engine_worker_processes_give_the_in_process_result(
    family_models: dict[str, Path], tmp_path: Path, start_method: str
) -> None:
    config = load_config(textwrap.dedent(DARE_CONFIG.format(**family_models)))
    opts = {"backend": "numpy", "write_model_card": False, "random_seed": 5, "out_shard_size": "100KB"}
    run_merge(config, tmp_path / "here", MergeOptions(**opts))
    with WorkerPool(2, start_method=start_method) as pool:
        pool.start()  # a started pool runs even a tiny merge
        run_merge(config, tmp_path / "workers", MergeOptions(**opts), pool=pool)
        assert not pool.started  # the merge stopped the workers when it ended
    assert pool.jobs_submitted, "the merge did not run in worker processes"
    assert _raw(tmp_path / "workers") == _raw(tmp_path / "here")  # same bytes: draws seeded per tensor


def test_a_merge_without_a_pool_runs_a_tiny_merge_in_this_process(
    family_models: dict[str, Path], tmp_path: Path
) -> None:
    """A pool that nobody started is used only for merges big enough to gain from workers."""
    config = load_config(textwrap.dedent(DARE_CONFIG.format(**family_models)))
    with WorkerPool(2) as pool:
        run_merge(config, tmp_path / "out", MergeOptions(backend="numpy", write_model_card=False), pool=pool)
    assert pool.jobs_submitted == 0 and (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_engine_worker_error_keeps_type_and_hint(
    family_models: dict[str, Path], tmp_path: Path, start_method: str
) -> None:
    config = f"""
        models:
          - model: {family_models["ft1"]}
            parameters: {{weight: 1.0}}
          - model: {family_models["ft2"]}
            parameters: {{weight: -1.0}}
        merge_method: linear
        parameters: {{normalize: true}}
    """
    with (
        WorkerPool(2, start_method=start_method) as pool,
        pytest.raises(ConfigError, match="sum to zero") as caught,
    ):
        pool.start()
        run_merge(load_config(config), tmp_path / "out", MergeOptions(backend="numpy"), pool=pool)
    assert caught.value.hint == "change the weights or set `normalize: false`"
    assert str(caught.value).startswith("linear weights sum to zero for `")
    assert pool.jobs_submitted, "the merge did not run in worker processes"
    assert not (tmp_path / "out").exists()


def test_engine_worker_that_dies_is_a_clear_error(
    family_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed mid-merge (e.g. by the OOM killer) surfaces as a MergeguardError; nothing is left."""
    import dataclasses

    (tmp_path / "mg_dying_kernel.py").write_text("import os\n\ndef die(job):\n    os._exit(9)\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # the spawned workers inherit sys.path
    import mg_dying_kernel

    dying = dataclasses.replace(METHODS["dare_ties"], kernel=NumpyKernel(mg_dying_kernel.die))
    monkeypatch.setitem(METHODS, "dare_ties", dying)
    config = load_config(textwrap.dedent(DARE_CONFIG.format(**family_models)))
    with WorkerPool(2) as pool, pytest.raises(MergeguardError, match="worker process died") as caught:
        pool.start()
        run_merge(config, tmp_path / "out", MergeOptions(backend="numpy", write_model_card=False), pool=pool)
    assert caught.value.hint and "memory" in caught.value.hint
    assert not (tmp_path / "out").exists()
    sys.modules.pop("mg_dying_kernel", None)


# ---------------------------------------------------------------- no torch on the numpy path

_NO_TORCH = r"""
import atexit, importlib.abc, runpy, sys, traceback
report = sys.argv.pop(1)
class Spy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not hasattr(self, "stack"):
            self.stack = "".join(traceback.format_stack())
        return None
spy = Spy()
sys.meta_path.insert(0, spy)
def done():
    with open(report, "w") as f:
        f.write(getattr(spy, "stack", "") if "torch" in sys.modules else "")
atexit.register(done)
sys.argv = ["mergeguard", *sys.argv[1:]]
runpy.run_module("mergeguard", run_name="__main__", alter_sys=True)
"""


DELLA_CONFIG = """
    models:
      - model: {ft1}
        parameters: {{weight: 0.5, density: 0.5}}
    base_model: {base}
    merge_method: della
"""


@pytest.mark.parametrize("method", ["ties", "della"])
def test_cli_merge_imports_torch_only_without_a_kernel(
    method: str, family_models: dict[str, Path], tmp_path: Path
) -> None:
    """`mergeguard merge` of a ties config never imports torch; della (no kernel) does, which shows that
    the import spy sees it."""
    text = ENGINE_CASES["ties_float32"] if method == "ties" else DELLA_CONFIG
    config = tmp_path / f"{method}.yaml"
    config.write_text(textwrap.dedent(text.format(**family_models)))
    report = tmp_path / "report.txt"
    out = tmp_path / "out"
    command = [sys.executable, "-c", _NO_TORCH, str(report), "merge", str(config), str(out)]
    done = subprocess.run([*command, "--no-audit", "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "model.safetensors").exists()
    assert report.exists(), "the wrapper did not run to its end"
    stack = report.read_text()
    if method == "ties":
        assert not stack, f"torch was imported by a ties merge, first from:\n{stack}"
    else:
        assert "mergeguard" in stack and "import" in stack


def test_workers_fork_only_from_a_single_threaded_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forking while another thread runs can deadlock the child, so then the workers are spawned."""
    import threading

    if not sys.platform.startswith("linux"):
        pytest.skip("workers are forked on Linux only")
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    monkeypatch.setattr(workers, "os_threads", lambda: 1)
    assert workers.can_fork() == (importlib.util.find_spec("threadpoolctl") is not None)
    monkeypatch.setattr(threading, "active_count", lambda: 2)
    assert not workers.can_fork()
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    monkeypatch.setattr(workers, "os_threads", lambda: 3 + workers.blas_pool_threads())  # e.g. OpenMP's
    assert not workers.can_fork()
    monkeypatch.setattr(workers, "os_threads", lambda: 1 + workers.blas_pool_threads())  # OpenBLAS's own
    assert workers.can_fork() == (importlib.util.find_spec("threadpoolctl") is not None)


_OPENBLAS_AT_FORK = r"""
import os
import numpy as np
from mergeguard.merge import workers
a = np.ones((300, 300))
a @ a  # the BLAS pool runs
before = workers.os_threads()
pid = os.fork()
if pid == 0:
    os._exit(10 + workers.os_threads())
_, status = os.waitpid(pid, 0)
print(before, workers.blas_pool_threads(), os.waitstatus_to_exitcode(status) - 10)
"""


def test_openblas_stops_its_own_pool_at_a_fork() -> None:
    """Why `can_fork` may discount OpenBLAS's threads: the child of a fork has none of them."""
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"} | {"OPENBLAS_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", _OPENBLAS_AT_FORK], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    before, pool, child = (int(x) for x in done.stdout.split())
    assert before == 1 + pool and child == 1, done.stdout


def test_os_thread_count_sees_native_and_python_threads() -> None:
    import threading

    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc")
    before = workers.os_threads()
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert workers.os_threads() == before + 1
    finally:
        stop.set()
        thread.join()


def test_pool_is_sized_from_the_machine_and_checks_its_start_method() -> None:
    assert WorkerPool().workers == workers.machine_cores() >= 1
    with pytest.raises(ValueError, match="start_method"):
        WorkerPool(start_method="forkserver")
    with WorkerPool(1) as single:
        single.start()  # one worker: the merge runs in the calling process
        assert not single.started


def test_forked_workers_use_one_blas_thread() -> None:
    """Workers on few cores: a forked worker must not inherit a multi-threaded BLAS."""
    pytest.importorskip("threadpoolctl")
    with WorkerPool(2, start_method="fork") as pool:
        infos = pool.submit(_blas_threads).result(timeout=60)
    assert infos and all(threads == 1 for threads in infos)


def _blas_threads() -> list[int]:
    from threadpoolctl import threadpool_info

    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


_INTERRUPTED_MERGE = r"""
import dataclasses, signal, sys, threading
# Ctrl-C as in a terminal's foreground job: a test suite started in the background by a shell (`pytest &`)
# passes SIGINT down ignored, and the merge then rightly runs to its end (this test's old flakiness)
signal.signal(signal.SIGINT, signal.default_int_handler)
import mergeguard.merge.numpy_stream as numpy_stream
from mergeguard.merge.kernels import NumpyKernel
from mergeguard.merge.methods import METHODS
import mg_slow_kernel
numpy_stream.PARALLEL_MIN_ELEMENTS = 0
slow = NumpyKernel(mg_slow_kernel.slow)
METHODS.update({name: dataclasses.replace(m, kernel=slow) for name, m in METHODS.items()})
if sys.argv[1] == "spawn":  # a second thread: the workers are spawned (fork only from a one-thread process)
    threading.Thread(target=threading.Event().wait, daemon=True).start()
from mergeguard.cli import main
sys.exit(main(sys.argv[2:]))
"""


def spawned(pid: int) -> bool:
    """Whether the worker `pid` was spawned (it runs multiprocessing's spawn_main), not forked."""
    return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_ctrl_c_during_a_merge_stops_the_workers_and_leaves_nothing(
    family_models: dict[str, Path], tmp_path: Path, start_method: str
) -> None:
    """Ctrl-C reaches the whole process group: the merge stops, its workers end, no folder is left."""
    import os
    import signal
    import time

    started = tmp_path / "started"
    started.mkdir()
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc to find the workers")
    (tmp_path / "mg_slow_kernel.py").write_text(
        "import os, pathlib, time\n\n"
        "def slow(job):\n"
        f"    (pathlib.Path({str(started)!r}) / str(os.getpid())).touch()\n"
        "    time.sleep(2)\n"
    )
    config = tmp_path / "merge.yml"
    config.write_text(textwrap.dedent(DARE_CONFIG.format(**family_models)))
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-c", _INTERRUPTED_MERGE, start_method, "merge", str(config), str(out)]
    process = subprocess.Popen(
        [*command, "--no-audit", "--quiet", "--db", str(tmp_path / "db.sqlite")],
        env=env,
        start_new_session=True,  # its own process group, as a terminal's foreground job is
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not any(started.iterdir()) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    pids = [int(p.name) for p in started.iterdir()]
    assert pids, process.communicate()[1].decode()[-2000:]
    assert all(spawned(pid) == (start_method == "spawn") for pid in pids)
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does
    _, stderr = process.communicate(timeout=60)
    assert process.returncode != 0, stderr.decode()[-2000:]
    assert "Traceback" not in stderr.decode()
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if "mergeguard-tmp" in p.name] == []
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in pids), "a worker process outlived the interrupted merge"


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, or a reused pid of another program, counts as ended)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status and "python" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(
        errors="replace"
    )


_EARLY_CTRL_C = r"""
import os, signal, sys
from mergeguard.merge.workers import WorkerPool
interrupted = []
signal.signal(signal.SIGINT, lambda *_: interrupted.append(1))
pool = WorkerPool(2, start_method=sys.argv[1])
pool.start()
os.killpg(0, signal.SIGINT)  # while the workers are still starting (a spawned one imports numpy)
pids = {pool.submit(os.getpid).result(timeout=60) for _ in range(8)}
pool.close(wait_running=True)
assert interrupted and pids, (interrupted, pids)
print("ok")
"""


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_workers_ignore_ctrl_c_from_their_start(start_method: str) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("process groups")
    result = subprocess.run(
        [sys.executable, "-c", _EARLY_CTRL_C, start_method],
        capture_output=True,
        text=True,
        timeout=120,
        start_new_session=True,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr
