"""Half-precision storage <-> float32 blocks in numpy, without torch.

numpy has no bfloat16 and its float16 casts are scalar loops, an order of magnitude slower than a float32
add (README, Performance), so both halves are widened with integer bit operations on reused, cache-sized
buffers. Half tensors are held as their uint16 bit patterns. Rounding to half is round-to-nearest-even,
bit-identical to torch's `.to(torch.float16 / torch.bfloat16)` (NaNs stay NaN, overflow becomes inf).
"""

from __future__ import annotations

import numpy as np

from mergeguard.merge.method_rules import work_dtype_name

STORAGE = {
    "float16": np.dtype(np.uint16),
    "bfloat16": np.dtype(np.uint16),
    "float32": np.dtype(np.float32),
    "float64": np.dtype(np.float64),
}
"""The numpy dtype each supported float dtype is held in (half precisions as raw bits)."""

_F16_EXP_SHIFT = np.float32(2.0**112)  # float16 bits << 13 read as float32, times this, is the value


def work_dtype(*dtypes: str) -> np.dtype:
    """float64 when any dtype involved is float64, else float32 (what the torch methods compute in)."""
    return np.dtype(work_dtype_name(*dtypes))


def widen(src: np.ndarray, dtype: str, out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """`src` (a 1-D block stored as `dtype`) as float values in `out` (float32 or float64, same length).

    `scratch` is a uint32 buffer at least as long as `src` (used for float16 only).
    """
    if dtype == "bfloat16" and out.dtype == np.float32:
        bits = out.view(np.uint32)
        np.copyto(bits, src, casting="unsafe")
        np.left_shift(bits, 16, out=bits)
        return out
    if dtype == "float16" and out.dtype == np.float32:
        bits = out.view(np.uint32)
        np.copyto(bits, src.view(np.int16), casting="unsafe")  # sign-extended: bits 15-31 = the sign
        np.left_shift(bits, 13, out=bits)  # exponent and mantissa in place for float32, 2**112 too small
        np.bitwise_and(bits, 0x8FFFFFFF, out=bits)  # keep the sign at bit 31, clear its copies at 28-30
        np.multiply(out, _F16_EXP_SHIFT, out=out)  # exact: a power of two, normals and subnormals alike
        if np.dot(out, out) >= 2.0**32:  # inf/nan came out as |x| >= 65536 (or big weights): redo
            np.copyto(out, src.view(np.float16))
        return out
    if dtype in ("float16", "bfloat16"):  # into float64: via float32 (exact)
        wide = np.empty(len(src), np.float32)
        widen(src, dtype, wide, scratch)
        with np.errstate(invalid="ignore"):  # signalling NaN patterns stay NaN
            np.copyto(out, wide)
        return out
    np.copyto(out, src, casting="unsafe")
    return out


def narrow(block: np.ndarray, dtype: str, out: np.ndarray, scratch: np.ndarray) -> None:
    """Round the float32/float64 `block` to `dtype` (nearest, ties to even) into `out` (its storage).

    `block` is clobbered; `scratch` is a uint32 buffer at least as long as `block`.
    """
    if dtype in ("float32", "float64"):
        np.copyto(out, block, casting="unsafe")
        return
    if block.dtype == np.float64:  # torch casts float64 to a half through float32 too
        block = block.astype(np.float32)
    if dtype == "bfloat16":
        _to_bfloat16(block, out, scratch[: len(block)])
    elif not _to_float16(block, out, scratch[: len(block)]):
        np.copyto(out.view(np.float16), block, casting="unsafe")


def _to_float16(block: np.ndarray, out: np.ndarray, sign: np.ndarray) -> bool:
    """float32 -> float16 bits with integer operations (1.6x numpy's cast); False when the block holds
    values beyond float16's range, inf or nan (then `block` is left as it was, for numpy's cast)."""
    bits = block.view(np.uint32)
    np.right_shift(bits, 16, out=sign)
    np.bitwise_and(sign, 0x8000, out=sign)
    np.bitwise_and(bits, 0x7FFFFFFF, out=bits)  # |x|
    if len(bits) and bits.max() >= 0x477FF000:  # rounds to inf, or is inf/nan: put the sign back
        np.bitwise_or(bits, np.left_shift(sign, 16), out=bits)
        return False
    small = np.flatnonzero(bits < 0x38800000)  # float16 subnormals (few): a fixed step of 2**-24
    subnormal = np.rint(block[small] * np.float32(2.0**24))  # exact product; rint: ties to even
    odd = np.right_shift(bits, 13)
    np.bitwise_and(odd, 1, out=odd)
    np.add(odd, np.uint32(0xFFF - 0x38000000 + 2**32), out=odd)  # rebias the exponent 127 -> 15
    np.add(bits, odd, out=bits)  # + 0xFFF + the kept lowest bit: round half to even at bit 13
    np.right_shift(bits, 13, out=bits)
    bits[small] = subnormal
    np.bitwise_or(bits, sign, out=bits)
    np.copyto(out, bits, casting="unsafe")
    return True


def _to_bfloat16(block: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
    bits = block.view(np.uint32)
    nan = np.isnan(block)
    np.right_shift(bits, 16, out=scratch)
    np.bitwise_and(scratch, 1, out=scratch)
    np.add(scratch, 0x7FFF, out=scratch)
    np.add(bits, scratch, out=bits)  # round half to even at bit 16
    np.right_shift(bits, 16, out=bits)
    np.copyto(out, bits, casting="unsafe")
    if nan.any():
        out[nan] = 0x7FC0  # torch's quiet NaN


def round_to(block: np.ndarray, dtype: str, scratch: np.ndarray) -> None:
    """Round a float32/float64 block, in place, to the values representable in `dtype`."""
    if dtype == "float64" or (dtype == "float32" and block.dtype == np.float32):
        return
    if dtype == "float32":
        np.copyto(block, block.astype(np.float32))
        return
    halves = np.empty(len(block), np.uint16)
    narrow(block.copy(), dtype, halves, scratch)
    widen(halves, dtype, block, scratch)
