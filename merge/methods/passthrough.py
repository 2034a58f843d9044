"""Passthrough: copy one model's tensor, optionally multiplied by its per-model `scale` (frankenmerges)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergeguard.merge.kernels import passthrough as passthrough_kernel
from mergeguard.merge.method_rules import require_one_source

from .base import MergeInputs, MergeMethod, Param

if TYPE_CHECKING:
    import torch


def passthrough(inputs: MergeInputs) -> torch.Tensor:
    require_one_source(len(inputs.tensors))
    scale = inputs.params[0].get("scale") if inputs.params else None
    tensor = inputs.tensors[0]
    return tensor if scale is None else tensor * float(scale)


PASSTHROUGH = MergeMethod(
    name="passthrough",
    fn=passthrough,
    params=(Param("scale", float, None, per_model=True, help="multiply this source's tensor by scale"),),
    requires_base=False,
    max_models=1,
    description="copy tensors unchanged (layer stacking), optionally scaled",
    kernel=passthrough_kernel.KERNEL,
)
