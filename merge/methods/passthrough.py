"""Passthrough: copy one model's tensor, optionally multiplied by its per-model `scale` (frankenmerges)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergeguard.errors import ConfigError

from .base import MergeInputs, MergeMethod, Param

if TYPE_CHECKING:
    import torch


def require_one_source(count: int) -> None:
    """Passthrough copies one tensor: each slice source names a single model (this method and the kernel)."""
    if count != 1:
        raise ConfigError(
            f"passthrough takes exactly one model per slice source, got {count}",
            hint="give each slice a single source",
        )


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
)
