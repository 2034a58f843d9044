"""Time loading every benchmark from a local folder (what a cold audit does before building its index).

    .venv/bin/python perf/benchmarks_load.py [DIR] [--repeat N]

DIR defaults to ../shared/data/hf. Prints per-benchmark items and seconds (best of N), then the total.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mergeguard.benchmarks import REGISTRY, load_benchmarks, load_spec
from mergeguard.errors import BenchmarkError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "hf"
    parser.add_argument("dir", nargs="?", type=Path, default=default)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    totals = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        loaded, problems = load_benchmarks(None, args.dir, use_hub=False)
        totals.append(time.perf_counter() - start)
    print(f"{'benchmark':<15}{'items':>8}{'files':>7}{'seconds':>10}")
    for spec in REGISTRY.values():
        best = None
        for _ in range(args.repeat):
            start = time.perf_counter()
            try:
                benchmark = load_spec(spec, args.dir, use_hub=False)
            except BenchmarkError:
                break
            elapsed = time.perf_counter() - start
            best = elapsed if best is None else min(best, elapsed)
        if best is None:
            print(f"{spec.name:<15}{'-':>8}{'-':>7}{'absent':>10}")
        else:
            print(f"{spec.name:<15}{len(benchmark.items):>8}{len(benchmark.files):>7}{best:>10.3f}")
    items = sum(len(benchmark.items) for benchmark in loaded)
    print(
        f"all: {len(loaded)} benchmarks, {items} items, {len(problems)} absent; "
        f"first {totals[0]:.2f} s, best {min(totals):.2f} s of {args.repeat}"
    )


if __name__ == "__main__":
    main()
