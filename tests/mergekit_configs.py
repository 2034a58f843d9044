"""The mergekit configs the tests merge with: one writer for the common "these models, equal weights"
config, so every test file spells it the same way mergekit documents it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def weighted_config(
    models: Sequence[Path | str],
    *,
    method: str = "linear",
    weight: float = 0.5,
    density: float | None = None,
    base: Path | str | None = None,
    dtype: str | None = None,
    extra: str = "",
) -> str:
    """A mergekit config merging `models` with `method`, each at `weight` (and `density`, for the
    sparsifying methods), onto `base` when given; `extra` lines are appended as they are."""
    each = f"weight: {weight}" + (f", density: {density}" if density is not None else "")
    lines = ["models:"]
    for model in models:
        lines += [f"  - model: {model}", f"    parameters: {{{each}}}"]
    lines.append(f"merge_method: {method}")
    lines += [f"base_model: {base}"] if base is not None else []
    lines += [f"dtype: {dtype}"] if dtype is not None else []
    return "\n".join(lines) + "\n" + extra


def write_config(path: Path, text: str) -> Path:
    """`text` written to `path` (UTF-8), for the merge command to read."""
    path.write_text(text, encoding="utf-8")
    return path
