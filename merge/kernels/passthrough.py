"""Passthrough kernel: one source tensor, optionally times its `scale` (the twin of `methods/passthrough.py`).

An unscaled tensor whose dtype does not change never reaches a kernel: the engine copies its bytes from file
to file (`copy_unchanged`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mergeguard.merge.method_rules import require_one_source

from . import Job, NumpyKernel


def passthrough(job: Job) -> np.ndarray:
    require_one_source(len(job.tensors))
    scale = job.params[0].get("scale") if job.params else None
    out = job.output()
    buffer = job.buffer()
    for start, end in job.blocks():
        block = job.load(job.tensors[0], start, end, buffer)
        if scale is not None:
            np.multiply(block, float(scale), out=block)
        job.store(block, out, start)
    return out


def copy_unchanged(params: list[dict[str, Any]], stored: str, compute: str, out: str) -> bool:
    """True when passthrough's output is the input's bytes (no scale, no dtype change on the way)."""
    return (not params or params[0].get("scale") is None) and stored == compute == out


KERNEL = NumpyKernel(passthrough, copies=copy_unchanged, workers_early=False)
