"""mergeguard.merge: mergekit-compatible configs merged by a streaming engine.

config = load_config("merge.yml")          # validated; config.warnings lists ineffective settings
result = run_merge(config, Path("out"), MergeOptions(random_seed=0))
"""

from mergeguard.merge.config import InputModel, MergeConfig, OutputSlice, config_models, load_config
from mergeguard.merge.engine import MergeOptions, MergeResult, Progress, run_merge

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
