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
