"""MinHash signatures computed in numpy batches, bit-identical to `datasketch.MinHash` (scheme "affine32").

datasketch 2.x hashes each value to 32 bits (`hashfunc`), pre-mixes it with the MurmurHash3 32-bit finalizer,
then applies `num_perm` affine permutations `a*h + b mod 2^32` (odd `a`, drawn with
`np.random.RandomState(seed)`), keeping the minimum per permutation. We do the same on whole arrays: one
matrix product-and-add per batch of shingles, then `np.minimum.reduceat` per set (an item, a window).

The per-shingle `hashfunc` is injectable in datasketch; ours, `shingle_hash`, composes per-word polynomial
hashes so that whole batches of texts hash in a few vector operations over their bytes.
`datasketch.MinHash(hashfunc=shingle_hash)` fed the same shingles gives the same hash values
(tests/test_auditor_core.py checks this, and checks the default `sha1_hash32` path too).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SCHEME = "affine32"
HASH_NAME = "word-poly64-fmix-poly64"  # part of the index cache key
MAX_HASH = np.uint32(0xFFFFFFFF)
_U64 = (1 << 64) - 1
_FINAL = 0x9E3779B97F4A7C15
_P = (
    0x100000001B3 * 0x9E3779B1 | 1
) & _U64  # odd: the powers of a word-hash polynomial are invertible mod 2^64
_P_INV = pow(_P, -1, 1 << 64)
_LEN = 0xD6E8FEB86659FD93
_M1, _M2 = 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53  # MurmurHash3 fmix64
CHUNK = 1 << 13  # shingles permuted at once (CHUNK x num_perm uint32 = 4 MiB at 128: stays in cache)


def _mix_constant(i: int) -> int:
    """An odd 64-bit multiplier for the word at position i of a shingle (splitmix64 of i)."""
    z = (i + 1) * 0x9E3779B97F4A7C15 & _U64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _U64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _U64
    return (z ^ (z >> 31)) | 1


def word_hash(word: bytes | str) -> int:
    """The 32-bit hash of one word's UTF-8 bytes: a polynomial mod 2^64, its length, fmix64, top half.

    A polynomial (not SHA1) so that every word of a whole batch hashes in a few array passes over its
    bytes (`buffer_word_hashes`); this is the scalar reference those passes equal.
    """
    data = word.encode("utf-8") if isinstance(word, str) else word
    acc = 0
    for byte in reversed(data):
        acc = (acc * _P + byte) & _U64
    acc ^= len(data) * _LEN & _U64
    acc = (acc ^ (acc >> 33)) * _M1 & _U64
    acc = (acc ^ (acc >> 33)) * _M2 & _U64
    return (acc ^ (acc >> 33)) >> 32


_powers = np.ones(1, dtype=np.uint64), np.ones(1, dtype=np.uint64)


def _power_tables(size: int) -> tuple[np.ndarray, np.ndarray]:
    """P^j and P^-j mod 2^64 for j < size (grown by doubling and kept)."""
    global _powers
    if len(_powers[0]) < size:
        size = max(size, 2 * len(_powers[0]), 1 << 16)
        with np.errstate(over="ignore"):
            up = np.full(size, _P, dtype=np.uint64)
            up[0] = 1
            down = np.full(size, _P_INV, dtype=np.uint64)
            down[0] = 1
            _powers = np.cumprod(up, dtype=np.uint64), np.cumprod(down, dtype=np.uint64)
    return _powers


def buffer_word_hashes(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`word_hash` of every word of a byte buffer where words are runs of bytes > 0x20 (normalized text:
    spaces between words, NUL between texts). Returns (hashes as uint64, start offset of each word)."""
    is_word = np.zeros(len(buf) + 2, dtype=bool)
    np.greater(buf, 0x20, out=is_word[1:-1])
    edges = np.flatnonzero(is_word[1:] != is_word[:-1])  # word starts and ends, alternating
    starts, ends = edges[0::2], edges[1::2]
    if not len(starts):
        return np.empty(0, np.uint64), starts
    up, down = _power_tables(len(buf) + 1)
    with np.errstate(over="ignore"):
        prefix = np.empty(len(buf) + 1, dtype=np.uint64)
        prefix[0] = 0
        np.cumsum(buf * up[: len(buf)], out=prefix[1:])
        acc = (prefix[ends] - prefix[starts]) * down[starts]
        acc ^= (ends - starts).astype(np.uint64) * np.uint64(_LEN)
        acc ^= acc >> np.uint64(33)
        acc *= np.uint64(_M1)
        acc ^= acc >> np.uint64(33)
        acc *= np.uint64(_M2)
        acc ^= acc >> np.uint64(33)
    return acc >> np.uint64(32), starts


def run_hashes(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """A 64-bit polynomial hash of each run `values[s : s + n]` (uint64 values), all in a few passes:
    equal runs hash equal, so runs can be compared by their hashes before element-wise."""
    if not len(starts):
        return np.empty(0, np.uint64)
    up, down = _power_tables(len(values) + 1)
    with np.errstate(over="ignore"):
        prefix = np.zeros(len(values) + 1, dtype=np.uint64)
        np.cumsum(values * up[: len(values)], out=prefix[1:])
        return (prefix[starts + lengths] - prefix[starts]) * down[starts]


class WordHashes(dict):
    """A memo of `word_hash` keyed by the word (bytes or str): small lists are dict lookups, long ones one
    vectorized pass (`buffer_word_hashes`)."""

    def __missing__(self, word: bytes | str) -> int:
        value = self[word] = word_hash(word)
        return value

    def array(self, words: Sequence[bytes] | Sequence[str]) -> np.ndarray:
        if len(words) < 256:
            return np.fromiter(map(self.__getitem__, words), dtype=np.uint64, count=len(words))
        try:
            joined = b" ".join(words)  # type: ignore[arg-type]
        except TypeError:  # str words
            joined = " ".join(w if isinstance(w, str) else w.decode("utf-8") for w in words).encode("utf-8")
        return buffer_word_hashes(np.frombuffer(joined, dtype=np.uint8))[0]


def shingle_hash(shingle: bytes | str) -> int:
    """The 32-bit hash of one shingle (words separated by single spaces): a datasketch `hashfunc`."""
    text = shingle.decode("utf-8") if isinstance(shingle, bytes) else shingle
    acc = 0
    for i, word in enumerate(text.split(" ")):
        acc = (acc + word_hash(word) * _mix_constant(i)) & _U64
    acc = ((acc ^ (acc >> 31)) * _FINAL) & _U64
    return acc >> 32


def shingle_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """`shingle_hash` of every run of n consecutive words, from their word hashes (uint64), as uint32.

    Runs that cross the boundary of two texts in a concatenated array are the caller's to drop.
    """
    count = len(word_hashes) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint32)
    acc = np.zeros(count, dtype=np.uint64)
    for i in range(n):
        acc += word_hashes[i : i + count] * np.uint64(_mix_constant(i))
    acc ^= acc >> np.uint64(31)
    acc *= np.uint64(_FINAL)
    return (acc >> np.uint64(32)).astype(np.uint32)


def permutations(num_perm: int, seed: int = 1) -> np.ndarray:
    """The (2, num_perm) uint32 array `[a, b]` that `datasketch.MinHash(num_perm, seed)` draws."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return np.array([a, b])


def fmix32(values: np.ndarray) -> np.ndarray:
    """The MurmurHash3 32-bit finalizer (datasketch's pre-mix), on a uint32 array."""
    h = values.astype(np.uint32, copy=True)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def set_minima(hashes: np.ndarray, starts: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """Signatures of consecutive sets: set k is `hashes[starts[k]:starts[k+1]]` (the last runs to the end).

    Every set must be non-empty (an empty MinHash is all MAX_HASH, and all empty ones collide). Returns a
    (len(starts), num_perm) uint32 array whose row k equals datasketch's `hashvalues` for set k.
    """
    starts = np.asarray(starts, dtype=np.int64)
    num_perm = perms.shape[1]
    out = np.full((len(starts), num_perm), MAX_HASH, dtype=np.uint32)
    if len(starts) == 0:
        return out
    if np.any(np.diff(np.append(starts, len(hashes))) <= 0):
        raise ValueError("every set must hold at least one hash")
    a, b = perms[0][:, None], perms[1][:, None]
    mixed = fmix32(hashes)
    # (num_perm, chunk) blocks, reused: reduceat runs fastest along the last axis, and fresh multi-MiB
    # arrays per chunk would cost page faults. Minima collect per permutation, transposed once at the end.
    buffer = np.empty((num_perm, min(CHUNK, len(mixed))), dtype=np.uint32)
    minima = np.full((num_perm, len(starts)), MAX_HASH, dtype=np.uint32)
    for lo in range(0, len(mixed), CHUNK):
        hi = min(lo + CHUNK, len(mixed))
        block = buffer[:, : hi - lo]
        np.multiply(a, mixed[None, lo:hi], out=block)
        block += b
        first = int(np.searchsorted(starts, lo, side="right")) - 1  # the set holding position lo
        last = int(np.searchsorted(starts, hi, side="left"))  # sets starting before hi
        local = np.maximum(starts[first:last] - lo, 0)
        np.minimum(
            minima[:, first:last], np.minimum.reduceat(block, local, axis=1), out=minima[:, first:last]
        )
    out[:] = minima.T
    return out


def signature(hashes: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """The signature of one set of 32-bit hashes (all MAX_HASH when empty, like a fresh MinHash)."""
    if len(hashes) == 0:
        return np.full(perms.shape[1], MAX_HASH, dtype=np.uint32)
    return set_minima(np.asarray(hashes, dtype=np.uint32), np.zeros(1, dtype=np.int64), perms)[0]


_K1, _K2, _K3 = 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9


def band_keys(signatures: np.ndarray, rows: int) -> np.ndarray:
    """One 64-bit key per (set, band): a hash of the band's `rows` hash values and the band number.

    `MinHashLSH` (params=(bands, rows)) files a set under the bytes of each band; two sets share a bucket
    exactly when a band's values are equal, which is when these keys are equal (but for 64-bit hash
    collisions, which only add a candidate that verification then rejects). Shape (n, bands).
    """
    n, num_perm = signatures.shape
    bands = num_perm // rows
    acc = np.zeros((n, bands), dtype=np.uint64)
    for t in range(rows):
        column = signatures[:, t : bands * rows : rows].astype(np.uint64)
        acc = (acc ^ column) * np.uint64(_K1 if t % 2 == 0 else _K2)
        acc ^= acc >> np.uint64(29)
    acc ^= (np.arange(bands, dtype=np.uint64) * np.uint64(_K3))[None, :]
    acc *= np.uint64(_K2)
    return acc ^ (acc >> np.uint64(32))


def to_minhash(hashvalues: np.ndarray, perms: np.ndarray, seed: int = 1):  # -> datasketch.LeanMinHash
    """A datasketch `LeanMinHash` holding our signature, for `MinHashLSH.insert` and `query`."""
    from datasketch import LeanMinHash

    return LeanMinHash(seed=seed, hashvalues=np.asarray(hashvalues, dtype=np.uint32), scheme=SCHEME)
