"""The merge methods, by mergekit name: the one registry of what a method is and can do.

Add a method: write `def my_method(inputs: MergeInputs) -> torch.Tensor` in a module here, declare
`MY_METHOD = MergeMethod("my_method", my_method, params=(Param(...), ...), requires_base=...)` beside
it (optionally `kernel=NumpyKernel(my_kernel)`, its numpy twin, which a CPU merge runs without torch and in
worker processes), and add it to `_ALL` below. The README's "Adding a merge method" has a worked example.
"""

from __future__ import annotations

import difflib

from mergeguard.errors import ConfigError

from .arcee_fusion import ARCEE_FUSION
from .base import REQUIRED, MergeInputs, MergeMethod, Param
from .karcher import KARCHER
from .linear import LINEAR
from .model_stock import MODEL_STOCK
from .multislerp import MULTISLERP
from .nearswap import NEARSWAP
from .nuslerp import NUSLERP
from .passthrough import PASSTHROUGH
from .ram import RAM, RAMPLUS_TL
from .sce import SCE
from .slerp import SLERP
from .task_arithmetic import FAMILY

_ALL: tuple[MergeMethod, ...] = (
    LINEAR,
    *FAMILY,
    SLERP,
    NUSLERP,
    MULTISLERP,
    KARCHER,
    MODEL_STOCK,
    SCE,
    NEARSWAP,
    ARCEE_FUSION,
    RAM,
    RAMPLUS_TL,
    PASSTHROUGH,
)

METHODS: dict[str, MergeMethod] = {m.name: m for m in _ALL}
ALL_PARAM_NAMES: frozenset[str] = frozenset(p.name for m in _ALL for p in m.params)


def get_method(name: str) -> MergeMethod:
    """The method called `name`, or a ConfigError suggesting the closest known name."""
    try:
        return METHODS[name]
    except KeyError:
        pass
    close = difflib.get_close_matches(str(name), METHODS, n=1)
    guess = f", did you mean `{close[0]}`?" if close else ""
    raise ConfigError(
        f"unknown merge method `{name}`{guess}", hint="known methods: " + ", ".join(sorted(METHODS))
    )


__all__ = ["ALL_PARAM_NAMES", "METHODS", "REQUIRED", "MergeInputs", "MergeMethod", "Param", "get_method"]
