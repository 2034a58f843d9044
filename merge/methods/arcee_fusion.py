"""Arcee Fusion: take the other model's change only where it matters most (mergekit's `arcee_fusion`).

importance = |other - base| * KL(softmax(other) || softmax(base)) per row (last dimension, eps 1e-8 on both
distributions); an entry moves to the other model where its importance reaches median + 1.5 * IQR of all
importances (quantiles picked as sorted[floor(q * (n - 1))]); elsewhere it keeps the base's value.
Above `SAMPLE` entries the quantiles come from a seeded sample of `SAMPLE` entries (mergekit draws its
sample from torch's global generator, so its own runs differ from each other there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import MergeInputs, MergeMethod, require_base, work_dtype

if TYPE_CHECKING:
    import torch

SAMPLE = 1_000_000
"""Importances sorted for the quantiles, at most (drawn with replacement, as mergekit does)."""


def _threshold(importance: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    import torch

    flat = importance.reshape(-1)
    if flat.numel() > SAMPLE:
        picks = torch.randint(flat.numel(), (SAMPLE,), generator=generator, device=flat.device)
        flat = flat[picks]
    ordered = torch.sort(flat).values
    last = ordered.numel() - 1
    q1, median, q3 = (ordered[int(q * last)] for q in (0.25, 0.5, 0.75))
    return median + 1.5 * (q3 - q1)


def arcee_fusion(inputs: MergeInputs) -> torch.Tensor:
    import torch

    base = require_base(inputs, "arcee_fusion")
    dtype = work_dtype(base)
    base = base.to(dtype)
    other = inputs.others()[0][0].to(dtype)
    p = torch.softmax(other, dim=-1) + 1e-8
    q = torch.softmax(base, dim=-1) + 1e-8
    divergence = (p * torch.log(p / q)).sum(dim=-1, keepdim=True)
    delta = other - base
    importance = delta.abs() * divergence
    mask = importance >= _threshold(importance, inputs.generator)
    return base + delta * mask


ARCEE_FUSION = MergeMethod(
    name="arcee_fusion",
    fn=arcee_fusion,
    params=(),
    requires_base=True,
    randomized=True,  # only tensors above SAMPLE entries draw (their quantile sample)
    min_models=2,
    max_models=2,
    description="keep the base except where the other model's change is unusually important",
)
