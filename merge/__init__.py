"""mergeguard.merge: mergekit-compatible configs merged by a streaming engine.

config = load_config("merge.yml")          # validated; config.warnings lists ineffective settings
result = run_merge(config, Path("out"), MergeOptions(random_seed=0))
with WorkerPool() as pool:                 # optional: the caller's worker processes, started early
    pool.start()
    result = run_merge(config, Path("out"), MergeOptions(), pool=pool)
"""

from __future__ import annotations

from mergeguard.lazy import lazy_exports

_HOME = {  # public name -> its module, imported on first use (a kernel worker process needs none of them)
    "InputModel": "config",
    "MergeConfig": "config",
    "OutputSlice": "config",
    "config_models": "config",
    "load_config": "config",
    "MergeOptions": "options",
    "MergeResult": "options",
    "Progress": "options",
    "WorkerPool": "workers",
    "run_merge": "engine",
}

__getattr__ = lazy_exports(__name__, _HOME)


__all__ = [
    "InputModel",
    "MergeConfig",
    "MergeOptions",
    "MergeResult",
    "OutputSlice",
    "Progress",
    "WorkerPool",
    "config_models",
    "load_config",
    "run_merge",
]
