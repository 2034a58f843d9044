"""Real benchmark test sets from `shared_data`, for the detection tests (test_auditor_core,
test_detection_units, test_detection_passages)."""

from __future__ import annotations

from pathlib import Path

from mergeguard.benchmarks import Item
from mergeguard.benchmarks.loading import LoadedBenchmark, load_benchmarks


def load_real(names: list[str], shared_data: Path) -> list[LoadedBenchmark]:
    """The named benchmarks, read from `shared_data/hf`; every one of them must load."""
    benchmarks, problems = load_benchmarks(names, shared_data / "hf")
    assert not problems
    return benchmarks


def items_of(loaded: list[LoadedBenchmark], name: str) -> list[Item]:
    """The items of benchmark `name` among `loaded`."""
    return next(b for b in loaded if b.spec.name == name).items
