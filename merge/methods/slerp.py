"""SLERP between the base and one other model, over the whole flattened tensor.

Like mergekit: computed in float32 (float64 stays float64), falls back to linear interpolation when the two
tensors are nearly parallel or antiparallel (|cos| > DOT_THRESHOLD), norms below EPS count as 1.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from mergeguard.errors import ConfigError
from mergeguard.merge.kernels import slerp as slerp_kernel

from .base import MergeInputs, MergeMethod, Param, require_base, work_dtype

if TYPE_CHECKING:
    import torch

DOT_THRESHOLD = 0.9995
EPS = 1e-8
CHUNK = 1 << 20  # elements upcast at a time (mergekit's chunk): bounds float32 scratch
KEEP_NUMEL = 1 << 22  # half-precision tensors up to this size are upcast once (32 MiB of float32 scratch)


def _chunks(n: int):
    for start in range(0, n, CHUNK):
        yield slice(start, min(n, start + CHUNK))


def _coefficients(t: float, cos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """mergekit's coefficients, computed in the work dtype so that rounding matches."""
    import torch

    tt = torch.tensor(t, dtype=dtype)
    if cos.abs() > DOT_THRESHOLD:
        return 1 - tt, tt
    theta = torch.acos(cos)
    return torch.sin((1 - tt) * theta) / torch.sin(theta), torch.sin(tt * theta) / torch.sin(theta)


def _slerp_exact(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float32/float64 inputs: mergekit's chunked reductions, so the result matches it to the last bit."""
    import torch

    n = a.numel()
    norm_a = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(a[s]) for s in _chunks(n)]))
    norm_b = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(b[s]) for s in _chunks(n)]))
    norm_a = torch.where(norm_a > EPS, norm_a, 1)
    norm_b = torch.where(norm_b > EPS, norm_b, 1)
    dot = torch.stack([((a[s] / norm_a) * (b[s] / norm_b)).sum() for s in _chunks(n)]).sum()
    ca, cb = _coefficients(t, dot.clamp(-1, 1), a.dtype)
    out = torch.mul(a, ca.to(a.device))
    return out.add_(b * cb.to(a.device))


def _slerp_half(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 inputs: one float32 pass for both norms and the dot, one pass for the output.

    Each chunk is upcast once per pass (small tensors: once in all); the dot is taken on the raw vectors and
    divided by the norms afterwards, which differs from mergekit's rounding only in the last float32 bits
    of the coefficients.
    """
    import torch

    n = a.numel()
    keep = n <= KEEP_NUMEL
    sq_a = sq_b = ab = 0.0
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    for s in _chunks(n):
        x, y = a[s].float(), b[s].float()
        sq_a += float(torch.dot(x, x))
        sq_b += float(torch.dot(y, y))
        ab += float(torch.dot(x, y))
        if keep:
            kept.append((x, y))
    norm_a, norm_b = math.sqrt(sq_a), math.sqrt(sq_b)
    norm_a = norm_a if norm_a > EPS else 1.0
    norm_b = norm_b if norm_b > EPS else 1.0
    cos = torch.tensor(ab / (norm_a * norm_b), dtype=torch.float32).clamp(-1, 1)
    ca, cb = (float(c) for c in _coefficients(t, cos, torch.float32))
    out = torch.empty_like(a)
    for i, s in enumerate(_chunks(n)):
        x, y = kept[i] if keep else (a[s].float(), b[s].float())
        out[s] = x.mul_(ca).add_(y, alpha=cb)
    return out


def slerp_tensors(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from v0 (t=0) to v1 (t=1), in v0's dtype."""
    a, b = v0.reshape(-1), v1.reshape(-1)
    if a.numel() == 0:
        return v0.clone()
    if v0.dtype == work_dtype(v0):
        return _slerp_exact(t, a, b.to(v0.dtype)).reshape(v0.shape)
    return _slerp_half(t, a, b).reshape(v0.shape)


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
    kernel=slerp_kernel.KERNEL,
)
