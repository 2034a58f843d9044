"""Sparsification of task vectors (delta = model - base), in place.

Each function keeps mergekit's semantics (which entries survive, how the survivors are rescaled). Selection
finds a threshold with `kthvalue` instead of sorting the whole tensor; only when equal magnitudes straddle the
threshold does it fall back to the same sort mergekit uses, so that ties are broken identically.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergeguard.errors import ConfigError
from mergeguard.merge.method_rules import Cut, trim_size

if TYPE_CHECKING:
    import torch

RESCALE_EPS = 1e-7
EXACT_TIES_MAX_NUMEL = 1 << 18
"""Up to this size, equal values straddling a cut are broken exactly as mergekit's torch sort breaks them
(parity on small models); above it, the lowest indices win (no full sort: the speed of big merges)."""
_SAMPLE = 1 << 16
_DRAW_CHUNK = 1 << 16  # random draws made at a time (a reused float32 buffer that stays in cache)


def _kth_smallest(w: torch.Tensor, m: int) -> torch.Tensor:
    """The m-th smallest value of the 1-D tensor `w` (1 <= m <= numel), without sorting all of it."""
    return _kth_stats(w, m)[0]


def _kth_stats(w: torch.Tensor, m: int) -> tuple[torch.Tensor, int, int]:
    """(the m-th smallest value v of the 1-D tensor `w`, count of entries < v, count of entries == v).

    A strided sample brackets the answer; only the entries inside the bracket go to `kthvalue`, and the
    counts come from them too, so the whole tensor is scanned about four times, never sorted.
    """
    import torch

    n = w.numel()
    if n > 4 * _SAMPLE:
        step = n // _SAMPLE
        step += 1 - step % 2  # odd, so the sample does not follow one column of a matrix
        sample = w[::step].contiguous()
        size = sample.numel()
        pos = (m - 0.5) / n * size
        margin = 5 * size**0.5  # 10 standard deviations of the sample's rank: a miss is (almost) never seen
        lo = torch.kthvalue(sample, max(1, int(pos - margin))).values
        hi = torch.kthvalue(sample, min(size, int(pos + margin) + 1)).values
        del sample
        mask = w >= lo
        below = n - int(torch.count_nonzero(mask))
        if below < m:
            inside = w[mask.logical_and_(w <= hi)]
            if m <= below + inside.numel():
                value = torch.kthvalue(inside, m - below).values
                less = below + int(torch.count_nonzero(inside < value))
                return value, less, int(torch.count_nonzero(inside == value))
    value = torch.kthvalue(w, m).values
    return value, int(torch.count_nonzero(w < value)), int(torch.count_nonzero(w == value))


def _kth_stats_bits(w: torch.Tensor, m: int) -> tuple[torch.Tensor, int, int]:
    """`_kth_stats` for a non-negative float16/bfloat16 `w`: one exact histogram of the 2-byte patterns.

    Non-negative half-precision values sort like their bits read as int16, so `bincount` over the 32768
    patterns gives every rank at once (a single pass, no bool masks).
    """
    import torch

    hist = torch.bincount(w.view(torch.int16), minlength=1 << 15)
    cum = hist.cumsum(0)
    bits = int(torch.searchsorted(cum, m))  # the first pattern whose cumulative count reaches m
    less = int(cum[bits - 1]) if bits else 0
    value = torch.tensor([bits], dtype=torch.int16, device=w.device).view(w.dtype)[0]
    return value, less, int(hist[bits])


def magnitude_cut(delta: torch.Tensor, density: float) -> Cut | None:
    """`magnitude_` (without rescale) for a big tensor, as a rule; None keeps everything.

    Same survivors as `magnitude_` above EXACT_TIES_MAX_NUMEL; |delta| is ranked in delta's own dtype
    (exact: float16/bfloat16 -> float32 preserves order and ties), so no float32 copy is made.
    """
    import torch

    n = delta.numel()
    k = trim_size(n, density)
    if k is None:
        return None
    if k == 0:
        return Cut(torch.tensor(float("inf"), dtype=delta.dtype, device=delta.device), 0)
    w = delta.abs().reshape(-1)
    half = w.dtype in (torch.float16, torch.bfloat16) and w.device.type == "cpu"
    thr, less, equal = (_kth_stats_bits if half else _kth_stats)(w, n - k + 1)
    del w
    need = k - (n - less - equal)
    return Cut(thr, 0 if thr == 0 else need)


def apply_cut_(row: torch.Tensor, cut: Cut) -> None:
    """Zero the entries of `row` that `cut` drops; call it on consecutive blocks of the tensor, in order.

    The keep mask is built with arithmetic (sign of |x| - thr, exact in any float dtype) rather than
    comparisons: torch's bool kernels are several times slower on CPU.
    """
    import torch

    keep = row.abs().sub_(cut.thr).sign_()  # 1 above the cut, 0 at it, -1 below
    if cut.ties > 0:
        at = keep.numel() - int(torch.count_nonzero(keep))
        if at <= cut.ties:
            keep.add_(1).clamp_(0, 1)
            cut.ties -= at
        else:
            split = int(torch.nonzero(keep == 0).flatten()[cut.ties - 1]) + 1
            keep[:split].add_(1).clamp_(0, 1)
            keep[split:].clamp_(min=0)
            cut.ties = 0
    else:
        keep.clamp_(min=0)
    row.mul_(keep)


def _first_by_index(mask: torch.Tensor, candidates: torch.Tensor, need: int) -> torch.Tensor:
    """Add the first `need` True entries of `candidates` (lowest indices) to `mask`."""
    import torch

    if need > 0:
        mask[torch.nonzero(candidates).flatten()[:need]] = True
    return mask


def _largest_mask(w: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the k largest entries of the 1-D tensor `w` (1 <= k <= numel)."""
    import torch

    n = w.numel()
    if k >= n:
        return torch.ones_like(w, dtype=torch.bool)
    thr = _kth_smallest(w, n - k + 1)
    mask = w > thr
    need = k - int(torch.count_nonzero(mask))
    if need == 0 or thr == 0:  # no tie at the cut, or only zeros tie (keeping a zero changes nothing)
        return mask
    eq = w == thr
    if int(torch.count_nonzero(eq)) == need:
        return mask | eq
    if n <= EXACT_TIES_MAX_NUMEL:  # reproduce mergekit's argsort order for the tie
        mask.zero_()
        mask[torch.argsort(w, descending=True)[:k]] = True
        return mask
    return _first_by_index(mask, eq, need)


def _smallest_mask(w: torch.Tensor, m: int, exact: bool) -> torch.Tensor:
    """Bool mask of the m smallest entries (ties: lowest index first, or mergekit's sort order if exact)."""
    import torch

    n = w.numel()
    if m <= 0:
        return torch.zeros_like(w, dtype=torch.bool)
    if m >= n:
        return torch.ones_like(w, dtype=torch.bool)
    thr = _kth_smallest(w, m)
    mask = w < thr
    need = m - int(torch.count_nonzero(mask))
    if need == 0:
        return mask
    eq = w == thr
    if int(torch.count_nonzero(eq)) == need:
        return mask | eq
    if exact:
        mask.zero_()
        mask[torch.sort(w).indices[:m]] = True
        return mask
    return _first_by_index(mask, eq, need)


def _ascending_range_mask(w: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Bool mask of the entries at positions [lo, hi) of `w` sorted ascending."""
    import torch

    n = w.numel()
    if hi <= lo:
        return torch.zeros_like(w, dtype=torch.bool)
    if n <= EXACT_TIES_MAX_NUMEL:
        upper, lower = _smallest_mask(w, hi, False), _smallest_mask(w, lo, False)
        if _tie_free(w, hi) and _tie_free(w, lo):
            return upper & ~lower
        mask = torch.zeros(n, dtype=torch.bool, device=w.device)
        mask[torch.sort(w, descending=False).indices[lo:hi]] = True
        return mask
    return _smallest_mask(w, hi, False) & ~_smallest_mask(w, lo, False)


def _tie_free(w: torch.Tensor, m: int) -> bool:
    """True when the m smallest entries are determined without breaking a tie."""
    import torch

    if m <= 0 or m >= w.numel():
        return True
    thr = _kth_smallest(w, m)
    return int(torch.count_nonzero(w < thr)) + int(torch.count_nonzero(w == thr)) == m


def _work(delta: torch.Tensor) -> torch.Tensor:
    """mergekit draws random masks in float32 on CPU (bfloat16 and accelerator tensors stay as they are)."""
    import torch

    if delta.device.type != "cpu" or delta.dtype in (torch.float32, torch.bfloat16):
        return delta
    return delta.float()


def _rescale_(delta: torch.Tensor, mask: torch.Tensor, l1: bool) -> None:
    """delta *= mask; with `l1`, restore delta's L1 norm (mergekit's DARE/TIES `rescale`)."""
    if not l1:
        delta.mul_(mask)
        return
    before = delta.abs().sum()
    delta.mul_(mask)
    after = delta.abs().sum()
    if before < RESCALE_EPS or after < RESCALE_EPS:
        return
    delta.mul_(before / after)


def magnitude_(delta: torch.Tensor, density: float, rescale: bool) -> None:
    """Keep the `density` fraction with the largest |delta| (TIES trim); at least one if density > 0."""
    import torch

    if density >= 1:
        return
    if density <= 0 or delta.numel() == 0:
        delta.zero_()
        return
    k = max(1, int(density * delta.numel()))
    w = delta.abs().reshape(-1)
    if w.dtype != torch.float64:
        w = w.float()
    mask = _largest_mask(w, k).reshape(delta.shape)
    del w
    _rescale_(delta, mask, rescale)


def breadcrumbs_(delta: torch.Tensor, density: float, gamma: float, rescale: bool) -> None:
    """Drop the `gamma` fraction of largest |delta| and the smallest, keeping `density` (Breadcrumbs).

    As in mergekit, density >= 1 disables it entirely (gamma included), and the outlier cut shrinks when
    density + gamma > 1.
    """
    import torch

    if density >= 1:
        return
    n = delta.numel()
    target = int(density * n)
    n_top = int(gamma * n)
    n_bot = max(0, n - target - n_top)
    w = delta.abs().reshape(-1)
    if w.dtype != torch.float64:
        w = w.float()
    mask = _ascending_range_mask(w, n_bot, min(n, n_bot + target)).reshape(delta.shape)
    del w
    _rescale_(delta, mask, rescale)


def random_(
    delta: torch.Tensor, density: float, rescale: bool, generator: torch.Generator | None, paper: bool = False
) -> torch.Tensor:
    """DARE: keep each entry with probability `density`.

    mergekit rescales the survivors to the original L1 norm (`rescale`); `paper` rescales by 1/density
    instead, as the DARE paper does. In place, one model at a time: the draws go through a reused float32
    buffer and the L1 norms accumulate in float32, so half-precision deltas are never copied whole. Returns
    the result (a new tensor only when `delta` is not contiguous).
    """
    import torch

    if density >= 1:
        return delta
    if density <= 0:
        delta.zero_()
        return delta
    if not delta.is_contiguous():
        delta = delta.contiguous()
    l1 = rescale and not paper
    before = after = 0.0
    flat = delta.view(-1)
    draws = torch.empty(min(flat.numel(), _DRAW_CHUNK), dtype=torch.float32, device=delta.device)
    for start in range(0, flat.numel(), _DRAW_CHUNK):
        part = flat[start : start + _DRAW_CHUNK]
        r = draws[: part.numel()]
        torch.rand(r.shape, generator=generator, out=r)
        if l1:
            before += float(_l1(part))
        part.mul_(r.sub_(density).sign_().clamp_(max=0).neg_())  # 1 where the draw < density, else 0
        if l1:
            after += float(_l1(part))
    if paper and rescale:
        delta.div_(density)
    elif l1 and before >= RESCALE_EPS and after >= RESCALE_EPS:
        delta.mul_(before / after)
    return delta


def _l1(t: torch.Tensor) -> torch.Tensor:
    """L1 norm of one block, accumulated in float32 at least (the block's float32 copy stays in cache;
    faster than `vector_norm(dtype=float32)` on float16: README, Performance)."""
    import torch

    if t.dtype in (torch.float16, torch.bfloat16):
        return t.float().abs_().sum()
    return t.abs().sum()


def check_della(density: float, epsilon: float) -> None:
    """DELLA's keep probabilities span density +/- epsilon: both ends inside (0, 1) when it prunes."""
    if 0 < density < 1 and (density + epsilon >= 1 or density - epsilon <= 0):
        raise ConfigError(
            f"della: density {density} +/- epsilon {epsilon} must stay inside (0, 1)",
            hint="lower `epsilon` or move `density` away from 0 and 1",
        )


def della_(
    delta: torch.Tensor,
    density: float,
    epsilon: float,
    rescale: bool,
    generator: torch.Generator | None,
    paper: bool = False,
) -> torch.Tensor:
    """DELLA MagPrune: per row, keep probability grows linearly with the magnitude rank, from
    density - epsilon to density + epsilon. mergekit rescales by the L1 norm ratio; `paper` divides each
    survivor by its own keep probability, as the DELLA paper does.
    """
    import torch

    if density >= 1:
        return delta
    if density <= 0:
        delta.zero_()
        return delta
    check_della(density, epsilon)
    work = _work(delta)
    rows = work if work.dim() >= 2 else work.unsqueeze(0)
    ncols = rows.shape[1]
    # rank of each entry along dim 1 (0 = smallest |x|): the inverse of mergekit's sorting permutation
    order = torch.argsort(rows.abs(), dim=1)
    ranks = torch.empty_like(order)
    shape = [1] * rows.dim()
    shape[1] = ncols
    ranks.scatter_(1, order, torch.arange(ncols, device=order.device).view(shape).expand_as(order))
    del order
    probs = ranks.to(work.dtype)
    del ranks
    probs.div_(ncols - 1).clamp_(0, 1).mul_(2 * epsilon).add_(density - epsilon)
    mask = torch.bernoulli(probs, generator=generator)
    if paper and rescale:
        rows.mul_(mask).div_(probs)
    else:
        del probs
        _rescale_(rows, mask, rescale)
    return work
