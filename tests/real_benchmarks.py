"""Real benchmark test sets from `shared_data`, for the detection tests (test_auditor_core,
test_detection_units, test_detection_passages)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_real(names: list[str], shared_data: Path) -> list[Any]:
    """The named benchmarks, read from `shared_data/hf`; every one of them must load."""
    from mergeguard.benchmarks.loading import load_benchmarks

    benchmarks, problems = load_benchmarks(names, shared_data / "hf")
    assert not problems
    return benchmarks


def items_of(loaded: list[Any], name: str) -> list[Any]:
    """The items of benchmark `name` among `loaded`."""
    return next(b for b in loaded if b.spec.name == name).items
