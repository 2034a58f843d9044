"""Model Stock (https://arxiv.org/abs/2403.19522): interpolate between the base and the fine-tunes' average
with t = N cos / (1 + (N - 1) cos), cos the mean pairwise cosine of the task vectors (per row with
`filter_wise`). Where 1 + (N - 1) cos ~ 0 the base is kept, as mergekit does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergeguard.errors import ConfigError

from .base import MergeInputs, MergeMethod, Param, require_base

if TYPE_CHECKING:
    import torch


def model_stock(inputs: MergeInputs) -> torch.Tensor:
    import torch

    base = require_base(inputs, "model_stock")
    ws = [t for t, _ in inputs.others()]
    if len(ws) < 2:
        raise ConfigError("model_stock needs at least two models besides the base", hint="list two or more")
    shape = base.shape
    if inputs.options["filter_wise"]:
        w0 = base.unsqueeze(0) if base.dim() == 1 else base
        ws = [w.unsqueeze(0) for w in ws] if base.dim() == 1 else ws
    else:
        w0 = base.reshape(-1)
        ws = [w.reshape(-1) for w in ws]
    offsets = [w - w0 for w in ws]
    norms = [torch.norm(o, dim=-1) for o in offsets]
    cos_pairs = [
        ((offsets[i] * offsets[j]).sum(dim=-1) / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1, 1)
        for i in range(len(offsets))
        for j in range(i + 1, len(offsets))
    ]
    del offsets
    cos = torch.stack(cos_pairs).mean(dim=0).unsqueeze(-1)
    n = len(ws)
    denom = 1 + (n - 1) * cos
    singular = denom.abs() < 1e-6
    t = torch.where(
        singular, torch.zeros_like(cos), n * cos / torch.where(singular, torch.ones_like(denom), denom)
    )
    average = sum(ws) / n
    return (t * average + (1 - t) * w0).reshape(shape)


MODEL_STOCK = MergeMethod(
    name="model_stock",
    fn=model_stock,
    params=(Param("filter_wise", bool, False, help="one interpolation ratio per row instead of per tensor"),),
    requires_base=True,
    min_models=3,
    description="base-to-average interpolation set by the fine-tunes' angle",
)
