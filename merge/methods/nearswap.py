"""NearSwap: move the base towards the other model only where they are already close.

Per entry, weight = clamp(t / |base - other|, 0, 1) (|diff| floored at 1e-6);
result = lerp(base, other, weight).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergeguard.errors import ConfigError

from .base import MergeInputs, MergeMethod, Param, require_base

if TYPE_CHECKING:
    import torch


def nearswap(inputs: MergeInputs) -> torch.Tensor:
    a = require_base(inputs, "nearswap")
    others = inputs.others()
    if len(others) != 1:
        raise ConfigError(
            f"nearswap merges the base with exactly one model, got {len(others)}", hint="list one"
        )
    b = others[0][0]
    weight = (a - b).abs_().clamp_(min=1e-6)
    weight = (float(inputs.options["t"]) / weight).clamp_(0, 1)
    return weight * b + (1 - weight) * a


NEARSWAP = MergeMethod(
    name="nearswap",
    fn=nearswap,
    params=(Param("t", float, help="distance scale: entries closer than t are swapped to the other model"),),
    requires_base=True,
    min_models=2,
    max_models=2,
    description="take the other model's values where they are near the base's",
)
