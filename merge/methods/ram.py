"""Reinforced Agent Merging (mergekit's `ram` and `ramplus_tl`, arXiv 2601.13572).

Task vectors tv_i = model_i - base; an entry counts for model i when |tv_i| > epsilon. Where exactly one
model changes an entry, its change is kept whole; where several do, they are averaged over those models.
`ramplus_tl` scales each model's unique changes by lambda_i = 1 + r * clamp(rho_i, 0, alpha), where
rho_i = (its shared entries) / max(its unique entries, epsilon), counted over this tensor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergeguard.merge.params import Interval

from .base import MergeInputs, MergeMethod, Param, require_base, work_dtype

if TYPE_CHECKING:
    import torch

NON_NEGATIVE = Interval(0, None)


def _ram(inputs: MergeInputs, plus: bool) -> torch.Tensor:
    import torch

    base = require_base(inputs, "ramplus_tl" if plus else "ram")
    dtype = work_dtype(base)
    base = base.to(dtype)
    others = [t for t, _ in inputs.others()]
    if not others:
        return base + torch.zeros_like(base)
    epsilon = float(inputs.options["epsilon"])
    deltas = torch.stack([t.to(dtype) - base for t in others]).reshape(len(others), -1)
    changed = deltas.abs() > epsilon
    count = changed.sum(dim=0, keepdim=True)
    unique, shared = count == 1, count > 1
    kept = deltas * changed
    scale = torch.ones((len(others), 1), dtype=dtype, device=base.device)
    if plus:
        rho = (changed & shared).sum(dim=1) / (changed & unique).sum(dim=1).clamp(min=epsilon)
        alpha, r = float(inputs.options["alpha"]), float(inputs.options["r"])
        scale = (1 + r * rho.clamp(min=0, max=alpha)).to(dtype).unsqueeze(-1)
    merged = (kept * unique * scale + kept * shared / count.clamp(min=1)).sum(dim=0)
    return base + merged.reshape(base.shape)


def ram(inputs: MergeInputs) -> torch.Tensor:
    return _ram(inputs, plus=False)


def ramplus_tl(inputs: MergeInputs) -> torch.Tensor:
    return _ram(inputs, plus=True)


EPSILON = Param("epsilon", float, 1e-5, valid=NON_NEGATIVE, help="changes at most this large do not count")

RAM = MergeMethod(
    name="ram",
    fn=ram,
    params=(EPSILON,),
    requires_base=True,
    description="keep each model's unique changes whole, average the overlapping ones",
)
RAMPLUS_TL = MergeMethod(
    name="ramplus_tl",
    fn=ramplus_tl,
    params=(
        Param("r", float, 0.1, valid=NON_NEGATIVE, help="strength of the unique-change boost"),
        Param("alpha", float, 0.2, valid=NON_NEGATIVE, help="cap of the shared/unique ratio rho"),
        EPSILON,
    ),
    requires_base=True,
    description="RAM with each model's unique changes boosted by its share of overlapping ones",
)
