"""SLERP between the base and one other model, over the whole flattened tensor.

Like mergekit: computed in float32 (float64 stays float64), falls back to linear interpolation when the two
tensors are nearly parallel or antiparallel (|cos| > DOT_THRESHOLD), norms below EPS count as 1.
"""

from __future__ import annotations

import torch

from mergeguard.errors import ConfigError

from .base import MergeInputs, MergeMethod, Param, require_base, work_dtype

DOT_THRESHOLD = 0.9995
EPS = 1e-8
CHUNK = 1 << 20  # elements upcast at a time (mergekit's chunk): bounds float32 scratch


def _chunks(n: int):
    for start in range(0, n, CHUNK):
        yield slice(start, min(n, start + CHUNK))


def slerp_tensors(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from v0 (t=0) to v1 (t=1), in v0's dtype."""
    dtype = work_dtype(v0)
    a, b = v0.reshape(-1), v1.reshape(-1)
    n = a.numel()
    if n == 0:
        return v0.clone()
    # norms of chunk norms and a chunked dot of unit vectors: mergekit's reductions, so rounding matches
    norm_a = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(a[s].to(dtype)) for s in _chunks(n)])
    )
    norm_b = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(b[s].to(dtype)) for s in _chunks(n)])
    )
    norm_a = torch.where(norm_a > EPS, norm_a, 1)
    norm_b = torch.where(norm_b > EPS, norm_b, 1)
    dot = torch.stack(
        [((a[s].to(dtype) / norm_a) * (b[s].to(dtype) / norm_b)).sum() for s in _chunks(n)]
    ).sum()
    # coefficients in the work dtype, with mergekit's formula, so rounding matches
    cos = dot.clamp(-1, 1)
    tt = torch.tensor(t, dtype=dtype)
    if cos.abs() > DOT_THRESHOLD:
        ca, cb = 1 - tt, tt
    else:
        theta = torch.acos(cos)
        ca = torch.sin((1 - tt) * theta) / torch.sin(theta)
        cb = torch.sin(tt * theta) / torch.sin(theta)
    ca, cb = ca.to(a.device), cb.to(a.device)
    out = torch.empty_like(a)
    for s in _chunks(n):
        out[s] = ca * a[s].to(dtype) + cb * b[s].to(dtype)
    return out.reshape(v0.shape)


def slerp(inputs: MergeInputs) -> torch.Tensor:
    base = require_base(inputs, "slerp")
    others = inputs.others()
    if len(others) != 1:
        raise ConfigError(
            f"slerp merges exactly two models (the base and one other), got {len(others) + 1}",
            hint="list base_model and one other model",
        )
    return slerp_tensors(float(inputs.options["t"]), base, others[0][0])


SLERP = MergeMethod(
    name="slerp",
    fn=slerp,
    params=(Param("t", float, help="0 = base model, 1 = the other model"),),
    requires_base=True,
    min_models=2,
    max_models=2,
    description="spherical interpolation between the base and one other model",
)
