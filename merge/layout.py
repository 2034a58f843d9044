"""The output every merge loop writes: each tensor's dtype, shape and size in plan order, and its seed."""

from __future__ import annotations

import hashlib
import math
from typing import TYPE_CHECKING

import numpy as np

from mergeguard.merge.kernels.floats import STORAGE

if TYPE_CHECKING:
    from mergeguard.merge.config import MergeConfig
    from mergeguard.merge.plan import MergePlan, SourceModel, TensorTask


def tensor_seed(seed: int, name: str) -> int:
    """A generator seed from the run seed and the tensor name, independent of processing order."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def output_layout(
    config: MergeConfig, models: dict[str, SourceModel], plan: MergePlan
) -> list[tuple[str, str, tuple[int, ...], int]]:
    """(name, dtype, shape, bytes) of every output tensor in plan order: what the shard writer reserves."""
    layout = []
    for task in plan.tasks:
        dtype = out_dtype(config, models, task)
        itemsize = (STORAGE.get(dtype) or np.dtype(dtype)).itemsize
        layout.append((task.name, dtype, task.shape, math.prod(task.shape) * itemsize))
    return layout


def out_dtype(config: MergeConfig, models: dict[str, SourceModel], task: TensorTask) -> str:
    """The dtype `task`'s tensor is written in: the config's `out_dtype`, else `dtype`, else the inputs'."""
    if config.out_dtype:
        return config.out_dtype
    if config.dtype:
        return config.dtype
    return promoted_dtype([models[ref].reader.dtype(name) for ref, name in task.sources()])


_FLOAT_RANK = ("bfloat16", "float16", "float32", "float64")


def promoted_dtype(dtypes: list[str]) -> str:
    """The dtype mergekit 0.1.5 computes and writes a tensor in without `dtype:` (torch's promotion of its
    inputs): bfloat16 + float32 -> float32, float16 + bfloat16 -> float32; integer buffers stay as stored."""
    floats = [d for d in dtypes if d in _FLOAT_RANK]
    if len(floats) != len(dtypes) or len(set(floats)) == 1:
        return dtypes[0]
    if set(floats) == {"bfloat16", "float16"}:
        return "float32"
    return max(floats, key=_FLOAT_RANK.index)
