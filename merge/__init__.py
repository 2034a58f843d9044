"""mergeguard.merge: mergekit-compatible configs merged by a streaming engine.

config = load_config("merge.yml")          # validated; config.warnings lists ineffective settings
result = run_merge(config, Path("out"), MergeOptions(random_seed=0))
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {  # public name -> its module, imported on first use (a kernel worker process needs none of them)
    "InputModel": "config",
    "MergeConfig": "config",
    "OutputSlice": "config",
    "config_models": "config",
    "load_config": "config",
    "MergeOptions": "engine",
    "MergeResult": "engine",
    "Progress": "engine",
    "run_merge": "engine",
}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    globals()[name] = value
    return value


__all__ = [
    "InputModel",
    "MergeConfig",
    "MergeOptions",
    "MergeResult",
    "OutputSlice",
    "Progress",
    "config_models",
    "load_config",
    "run_merge",
]
