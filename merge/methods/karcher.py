"""Karcher (Riemannian) mean of the models' directions on the unit sphere, scaled by their mean norm.

Every input counts equally. As in mergekit, an unlisted `base_model` takes part as one more input.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Interval, MergeInputs, MergeMethod, Param, work_dtype

if TYPE_CHECKING:
    import torch


def karcher_mean(tensors: list[torch.Tensor], max_iter: int, tol: float) -> torch.Tensor:
    """Uniformly weighted Karcher mean: fixed-point iteration in the tangent space."""
    import torch

    if len(tensors) == 1:
        return tensors[0]
    n = len(tensors)
    alpha = 1.0 / n
    dtype = work_dtype(tensors[0])
    norms = [torch.linalg.vector_norm(t.to(dtype)) for t in tensors]
    valid = [i for i, nrm in enumerate(norms) if nrm.item() > tol]
    if not valid:
        return torch.zeros_like(tensors[0])
    units = [(tensors[i] / norms[i]).to(tensors[i].dtype) for i in valid]
    a = alpha / sum([alpha] * len(valid))  # uniform weights renormalised over the non-zero inputs
    mean = torch.zeros_like(units[0])
    for u in units:
        mean += a * u
    mnorm = torch.linalg.vector_norm(mean.to(dtype))
    mean = units[0].clone() if mnorm.item() < tol else (mean / mnorm).to(mean.dtype)
    for _ in range(int(max_iter)):
        tangent = torch.zeros_like(mean)
        flat_mean = mean.reshape(-1)
        for u in units:
            dot = torch.clamp(torch.dot(flat_mean, u.reshape(-1)), -1.0, 1.0)
            theta = torch.arccos(dot)
            if theta.item() < tol:
                continue
            tangent += a * (theta / torch.sin(theta)) * (u - dot * mean)
        tnorm = torch.linalg.vector_norm(tangent.to(dtype))
        if tnorm.item() < tol:
            break
        mean = (torch.cos(tnorm) * mean + torch.sin(tnorm) * (tangent / tnorm)).to(mean.dtype)
        unorm = torch.linalg.vector_norm(mean.to(dtype))
        if unorm.item() > tol:
            mean = (mean / unorm).to(mean.dtype)
    scale = sum(alpha * nrm for nrm in norms)
    return scale * mean


def karcher(inputs: MergeInputs) -> torch.Tensor:
    opts = inputs.options
    return karcher_mean(inputs.all_inputs(), int(opts["max_iter"]), float(opts["tol"]))


KARCHER = MergeMethod(
    name="karcher",
    fn=karcher,
    params=(
        Param("max_iter", int, 10, help="iterations of the fixed-point update", valid=Interval(0, 1000)),
        Param("tol", float, 1e-5, help="stop when the tangent step is below this", valid=Interval(0)),
    ),
    requires_base=False,
    description="Riemannian (Karcher) mean of directions, scaled by the mean norm",
)
