"""NuSLERP: SLERP between two models weighted like a linear merge, optionally of task vectors (with a base).

t = weight_2 / (weight_1 + weight_2) (0.5 when the weights sum to ~0). By default the whole tensor is one
vector (`nuslerp_flatten: true`); otherwise each row (last dim), or each column with `nuslerp_row_wise: true`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergeguard.errors import ConfigError

from .base import MergeInputs, MergeMethod, Param

if TYPE_CHECKING:
    import torch

NORM_EPS = 1e-7
COLINEAR_EPS = 1e-8


def nuslerp_tensors(
    t: float, v0: torch.Tensor, v1: torch.Tensor, row_wise: bool, flatten: bool
) -> torch.Tensor:
    """Interpolate v0 -> v1 along vectors taken from the last dim (dim 0 with row_wise, all with flatten)."""
    import torch

    shape = v0.shape
    if flatten:
        v0, v1 = v0.reshape(-1), v1.reshape(-1)
    elif row_wise:
        v0, v1 = v0.transpose(0, -1), v1.transpose(0, -1)
    u0 = v0 / torch.norm(v0, dim=-1, keepdim=True).clamp(min=NORM_EPS)
    u1 = v1 / torch.norm(v1, dim=-1, keepdim=True).clamp(min=NORM_EPS)
    cos = (u0 * u1).sum(dim=-1, keepdim=True).clamp(-1, 1)
    del u0, u1
    colinear = (1 - cos.square()) <= COLINEAR_EPS**2
    theta = torch.acos(torch.where(colinear, 0, cos))
    sin = torch.sin(theta)
    out = (torch.sin((1 - t) * theta) * v0 + torch.sin(t * theta) * v1) / sin
    out = torch.where(colinear, (1 - t) * v0 + t * v1, out)
    if row_wise and not flatten:
        out = out.transpose(0, -1)
    return out.reshape(shape)


def nuslerp(inputs: MergeInputs) -> torch.Tensor:
    others = inputs.others()
    if len(others) != 2:
        raise ConfigError(
            f"nuslerp merges exactly two models besides the base, got {len(others)}",
            hint="list two models (plus an optional base_model)",
        )
    (x0, p0), (x1, p1) = others
    w0, w1 = float(p0["weight"]), float(p1["weight"])
    total = w0 + w1
    t = 0.5 if abs(total) < 1e-6 else w1 / total
    row_wise = bool(inputs.options["nuslerp_row_wise"])
    flatten = bool(inputs.options["nuslerp_flatten"])
    base = inputs.base
    if base is None:
        return nuslerp_tensors(t, x0, x1, row_wise, flatten)
    return base + nuslerp_tensors(t, x0 - base, x1 - base, row_wise, flatten)


NUSLERP = MergeMethod(
    name="nuslerp",
    fn=nuslerp,
    params=(
        Param("weight", float, per_model=True, non_base=True, help="relative weight; t = w2 / (w1 + w2)"),
        Param("nuslerp_row_wise", bool, False, help="interpolate column vectors (dim 0) instead of rows"),
        Param("nuslerp_flatten", bool, True, help="treat the whole tensor as one vector"),
    ),
    requires_base=False,
    min_models=2,
    max_models=3,
    description="SLERP of two models (or of their task vectors with a base), weights as in linear",
)
