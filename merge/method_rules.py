"""Rules that a torch merge method and its numpy kernel share, stated once so that the twins cannot drift.

Depends on nothing heavy: `merge/methods/` (torch, imported inside functions) and `merge/kernels/` (numpy,
also imported by the worker processes) both import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mergeguard.errors import ConfigError


def missing_base(method: str) -> ConfigError:
    """The error of a merge that names no `base_model:` for a method that needs one."""
    return ConfigError(f"merge method `{method}` needs a base model", hint="add `base_model:` to the config")


def require_one_source(count: int) -> None:
    """Passthrough copies one tensor: each slice source names a single model."""
    if count != 1:
        raise ConfigError(
            f"passthrough takes exactly one model per slice source, got {count}",
            hint="give each slice a single source",
        )


def work_dtype_name(*dtypes: str) -> str:
    """float64 when any dtype involved is float64, else float32: what the methods compute in (as mergekit)."""
    return "float64" if "float64" in dtypes else "float32"


def trim_size(n: int, density: float) -> int | None:
    """How many of `n` entries the TIES trim keeps, k = max(1, int(density * n)) as in mergekit (0 when
    density <= 0); None when it keeps them all."""
    if density >= 1 or n == 0:
        return None
    k = max(1, int(density * n)) if density > 0 else 0
    return None if k >= n else k


@dataclass
class Cut:
    """A TIES trim decided on the whole tensor and applied block by block, in index order.

    Keeps |x| > thr, and the first `ties` entries (lowest indices) with |x| == thr. `thr` is a float for
    the numpy kernel and a 0-d tensor for the torch method (compared in the delta's own dtype).
    """

    thr: Any
    ties: int
