"""mergeguard.benchmarks: the leaderboard test sets mergeguard guards against.

`registry` is the one list of benchmarks (hub ids, scored splits, lm-eval tasks, baselines); `items` turns a
row into an `Item`; `loading` reads a local folder or the hub; `custom` reads a team's own YAML spec.
"""

from __future__ import annotations

from mergeguard.benchmarks.custom import load_custom_spec
from mergeguard.benchmarks.items import Item
from mergeguard.benchmarks.loading import (
    EXTENSIONS,
    LoadedBenchmark,
    benchmark_status,
    load_benchmark,
    load_benchmarks,
    load_spec,
    local_files,
    spec_status,
)
from mergeguard.benchmarks.registry import REGISTRY, BenchmarkSpec, get_spec, suite_names

__all__ = [
    "EXTENSIONS",
    "REGISTRY",
    "BenchmarkSpec",
    "Item",
    "LoadedBenchmark",
    "benchmark_status",
    "get_spec",
    "load_benchmark",
    "load_benchmarks",
    "load_custom_spec",
    "load_spec",
    "local_files",
    "spec_status",
    "suite_names",
]
