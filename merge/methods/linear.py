"""Linear (weighted average) merge: https://arxiv.org/abs/2203.05482."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergeguard.errors import ConfigError
from mergeguard.merge.kernels import linear as linear_kernel

from .base import MergeInputs, MergeMethod, Param, work_dtype

if TYPE_CHECKING:
    import torch

CHUNK = 1 << 16
"""Elements accumulated at a time: the float32 accumulator stays in the CPU cache and is reused."""


def linear(inputs: MergeInputs) -> torch.Tensor:
    """sum_i w_i x_i, divided by sum_i w_i when `normalize` (accumulated in float32, like mergekit).

    Block by block into one output of the inputs' dtype; the float32 accumulator is one reused block, so a
    half-precision merge never holds a float32 copy of a whole tensor. Same bits as accumulating all at once.
    """
    import torch

    first = inputs.tensors[0]
    dtype = work_dtype(first)
    weights = [float(p["weight"]) for p in inputs.params]
    total = None
    if inputs.options["normalize"]:
        total = torch.tensor(weights, dtype=dtype).sum()
        if total == 0:
            raise ConfigError(
                f"linear weights sum to zero for `{inputs.name}` with normalize: true",
                hint="change the weights or set `normalize: false`",
            )
        total = total.to(first.device)
    flats = [t.reshape(-1) for t in inputs.tensors]
    n = flats[0].numel()
    out = torch.empty(n, dtype=first.dtype, device=first.device)
    direct = first.dtype == dtype  # accumulate straight into the output
    scratch = torch.empty((2, min(n, CHUNK)), dtype=dtype, device=first.device)
    for start in range(0, n, CHUNK):
        end = min(n, start + CHUNK)
        acc = out[start:end] if direct else scratch[0, : end - start]
        acc.copy_(flats[0][start:end]).mul_(weights[0])  # = 0 + w * x, the same rounding
        for flat, w in zip(flats[1:], weights[1:], strict=True):
            block = flat[start:end]
            if block.dtype != dtype:  # upcast first: torch's mixed-dtype add is a slow scalar loop
                block = scratch[1, : end - start].copy_(block)
            acc.add_(block, alpha=w)
        if total is not None:
            acc.div_(total)
        if not direct:
            out[start:end].copy_(acc)
    return out.reshape(first.shape)


LINEAR = MergeMethod(
    name="linear",
    fn=linear,
    params=(
        Param("weight", float, per_model=True, help="weight of this model (the base too, when listed)"),
        Param("normalize", bool, True, help="divide by the sum of the weights"),
    ),
    requires_base=False,
    description="weighted average of the models",
    kernel=linear_kernel.KERNEL,
)
