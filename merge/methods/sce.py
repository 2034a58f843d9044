"""SCE (https://arxiv.org/abs/2408.07990): Select the entries where the task vectors vary most
(`select_topk`), Calculate per-model weights from the mean squared task vector, Erase entries against
the elected sign.
It has no per-model `weight`: the weights come from the task vectors themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import FRACTION, MergeInputs, MergeMethod, Param, require_base
from .sparsify import EXACT_TIES_MAX_NUMEL, _first_by_index, _kth_smallest

if TYPE_CHECKING:
    import torch


def sce(inputs: MergeInputs) -> torch.Tensor:
    import torch

    base = require_base(inputs, "sce")
    others = inputs.others()
    if not others:
        return base
    tvs = base.new_empty((len(others), *base.shape))
    for i, (t, _) in enumerate(others):
        torch.sub(t, base, out=tvs[i])
    topk = float(inputs.options["select_topk"])
    if topk < 1:
        tvs.mul_(_variance_mask(tvs, topk))
    positive = tvs.sum(dim=0) >= 0
    erase = torch.where(positive, tvs > 0, tvs < 0)
    weights = tvs.square().reshape(len(others), -1).mean(dim=1)
    total = weights.sum().item()
    weights = torch.ones_like(weights) / len(others) if abs(total) < 1e-6 else weights / total
    w = weights.view(-1, *([1] * base.dim()))
    kept = erase * w  # per-entry weights of the agreeing models
    del erase
    merged = (tvs.mul_(kept)).sum(dim=0)
    merged.div_(kept.sum(dim=0).clamp_(min=1e-6))
    return merged.add_(base)


def _variance_mask(tvs: torch.Tensor, density: float) -> torch.Tensor:
    """Mask of the `density` fraction (of non-zero-variance entries) varying most across models."""
    import torch

    if density <= 0:
        return torch.zeros_like(tvs[0])
    var = torch.var(tvs, dim=0, unbiased=False)
    k = int(torch.count_nonzero(var) * density)
    if k == 0:
        return torch.zeros_like(var)
    flat = var.abs().reshape(-1)
    mask = _largest_mask_topk(flat, k)
    return mask.reshape(var.shape).to(tvs.dtype)


def _largest_mask_topk(w: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest entries; straddling ties broken by `topk` as mergekit's SCE does (small tensors)."""
    import torch

    n = w.numel()
    thr = _kth_smallest(w, n - k + 1)
    mask = w > thr
    need = k - int(torch.count_nonzero(mask))
    if need == 0:
        return mask
    eq = w == thr
    if int(torch.count_nonzero(eq)) == need:
        return mask | eq
    if n <= EXACT_TIES_MAX_NUMEL:
        mask.zero_()
        mask[torch.topk(w, k=k, largest=True).indices] = True
        return mask
    return _first_by_index(mask, eq, need)


SCE = MergeMethod(
    name="sce",
    fn=sce,
    params=(
        Param("select_topk", float, 1.0, help="fraction of highest-variance entries kept", valid=FRACTION),
        Param("int8_mask", bool, False, help="mergekit memory option; no effect on the result"),
    ),
    requires_base=True,
    description="variance-selected, self-weighted, sign-consensus task vector merge",
)
