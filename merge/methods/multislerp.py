"""Multi-SLERP: barycentric interpolation of several models (or task vectors) on the hypersphere.

Project unit vectors onto the tangent space at their weighted mean, average there, map back with the
exponential map and scale by the weighted mean norm (mergekit's construction).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mergeguard.errors import ConfigError

from .base import Interval, MergeInputs, MergeMethod, Param

if TYPE_CHECKING:
    import torch


def multislerp(inputs: MergeInputs) -> torch.Tensor:
    import torch

    others = inputs.others()
    if len(others) == 1:
        return others[0][0]
    base = inputs.base
    eps = float(inputs.options["eps"])
    first = others[0][0]
    flat = torch.empty((len(others), first.numel()), dtype=first.dtype, device=first.device)
    for i, (tensor, _) in enumerate(others):
        flat[i] = tensor.reshape(-1)
        if base is not None:
            flat[i] -= base.reshape(-1)
    w = torch.tensor([float(p["weight"]) for _, p in others], dtype=flat.dtype, device=flat.device)
    if inputs.options["normalize_weights"]:
        w = w / w.sum()
    norms = torch.norm(flat, dim=-1, keepdim=True)
    units = flat / (norms + eps)
    mean = (units * w.view(-1, 1)).sum(0)
    mean_norm = torch.norm(mean)
    if mean_norm < eps:
        if len(others) == 2:  # antipodal pair: linear interpolation
            out = (flat[0] * w[0] + flat[1] * w[1]).view(first.shape)
            return out + base if base is not None else out
        raise ConfigError(
            f"multislerp: the weighted mean direction of `{inputs.name}` is zero (antipodal inputs)",
            hint="change the weights",
        )
    mean = mean / mean_norm
    dots = (units * mean).sum(-1, keepdim=True)
    tangent = units - dots * mean
    del units
    tangent = (tangent * w.view(-1, 1)).sum(0)
    tnorm = torch.norm(tangent) + eps
    out = mean * torch.cos(tnorm) + tangent * (torch.sin(tnorm) / tnorm)
    out = (out * (norms.squeeze(-1) * w).sum()).view(first.shape)
    return out + base if base is not None else out


MULTISLERP = MergeMethod(
    name="multislerp",
    fn=multislerp,
    params=(
        Param("weight", float, per_model=True, non_base=True, help="barycentric weight of this model"),
        Param("normalize_weights", bool, True, help="divide the weights by their sum"),
        Param("eps", float, 1e-8, help="numerical floor for norms", valid=Interval(0, low_open=True)),
    ),
    requires_base=False,
    description="spherical barycentre of any number of models (task vectors with a base)",
)
