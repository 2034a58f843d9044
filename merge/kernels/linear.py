"""Linear (weighted average) kernel: the numpy twin of `methods/linear.py`."""

from __future__ import annotations

import numpy as np

from mergeguard.errors import ConfigError

from . import Job, NumpyKernel, mix


def linear(job: Job) -> np.ndarray | None:
    """sum_i w_i x_i, divided by sum_i w_i when `normalize`, in float32 (one BLAS call per block)."""
    weights = np.array([float(p["weight"]) for p in job.params], dtype=job.work)
    if job.options["normalize"]:
        total = weights.sum()
        if total == 0:
            raise ConfigError(
                f"linear weights sum to zero for `{job.name}` with normalize: true",
                hint="change the weights or set `normalize: false`",
            )
        weights = weights / total
    return mix(job, job.tensors, weights)


KERNEL = NumpyKernel(linear)
