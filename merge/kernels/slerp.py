"""SLERP kernel: the numpy twin of `methods/slerp.py` (same constants, same linear fallback)."""

from __future__ import annotations

import math

import numpy as np

from mergeguard.errors import ConfigError
from mergeguard.merge.method_rules import missing_base

from . import Job, NumpyKernel, mix

DOT_THRESHOLD = 0.9995
EPS = 1e-8


def coefficients(t: float, cos: float, work: np.dtype) -> tuple[float, float]:
    """The weights of the two tensors, computed in the work dtype as the torch method does."""
    tt = work.type(t)
    one = work.type(1)
    if abs(cos) > DOT_THRESHOLD:
        return float(one - tt), float(tt)
    c = work.type(cos)
    theta = np.arccos(c)
    sin_theta = np.sin(theta)
    return float(np.sin((one - tt) * theta) / sin_theta), float(np.sin(tt * theta) / sin_theta)


def slerp(job: Job) -> np.ndarray | None:
    """Spherical interpolation from the base (t=0) to the other model (t=1) over the flattened tensor."""
    if job.base is None:
        raise missing_base("slerp")
    others = job.others()
    if len(others) != 1:
        raise ConfigError(
            f"slerp merges exactly two models (the base and one other), got {len(others) + 1}",
            hint="list base_model and one other model",
        )
    base, other = job.base, others[0][0]
    pair = job.buffer(rows=2)
    sq_a = sq_b = ab = 0.0
    for start, end in job.blocks():
        a, b = job.load_rows([base, other], start, end, pair)
        sq_a += float(np.dot(a, a))
        sq_b += float(np.dot(b, b))
        ab += float(np.dot(a, b))
    norm_a, norm_b = math.sqrt(sq_a), math.sqrt(sq_b)
    norm_a = norm_a if norm_a > EPS else 1.0
    norm_b = norm_b if norm_b > EPS else 1.0
    cos = min(1.0, max(-1.0, float(job.work.type(ab / (norm_a * norm_b)))))
    ca, cb = coefficients(float(job.options["t"]), cos, job.work)
    return mix(job, [base, other], np.array([ca, cb], dtype=job.work))


KERNEL = NumpyKernel(slerp)
