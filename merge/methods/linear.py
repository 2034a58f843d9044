"""Linear (weighted average) merge: https://arxiv.org/abs/2203.05482."""

from __future__ import annotations

import torch

from mergeguard.errors import ConfigError

from .base import MergeInputs, MergeMethod, Param, work_dtype


def linear(inputs: MergeInputs) -> torch.Tensor:
    """sum_i w_i x_i, divided by sum_i w_i when `normalize` (accumulated in float32, like mergekit)."""
    first = inputs.tensors[0]
    dtype = work_dtype(first)
    weights = [float(p["weight"]) for p in inputs.params]
    out = torch.zeros(first.shape, dtype=dtype, device=first.device)
    for tensor, w in zip(inputs.tensors, weights, strict=True):
        out.add_(tensor, alpha=w) if tensor.dtype == dtype else out.add_(tensor.to(dtype), alpha=w)
    if inputs.options["normalize"]:
        total = torch.tensor(weights, dtype=dtype).sum()
        if total == 0:
            raise ConfigError(
                f"linear weights sum to zero for `{inputs.name}` with normalize: true",
                hint="change the weights or set `normalize: false`",
            )
        out.div_(total)
    return out.to(first.dtype)


LINEAR = MergeMethod(
    name="linear",
    fn=linear,
    params=(
        Param("weight", float, per_model=True, help="weight of this model (the base too, when listed)"),
        Param("normalize", bool, True, help="divide by the sum of the weights"),
    ),
    requires_base=False,
    description="weighted average of the models",
)
