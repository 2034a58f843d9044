"""Scale of the audit (#16): a generated corpus of real Alpaca rows recombined (instruction, input and
output drawn from different rows), with GSM8K and ARC-Challenge test items planted at known rows, written
as sharded parquet; audited against every benchmark that loads with `--workers 2`, one worker, and
(`--ray`) the Ray engine on a local 2-CPU Ray. Reports wall time, rows/s, the peak RSS of the whole
process tree (the driver and every worker, sampled), the planted items' recall per engine, whether the
findings are identical, the scaling 2 workers / 1 worker, Ray's start-up apart from its scan, and the paper
estimate for 1B rows:

    .venv/bin/python perf/audit_scale.py [--rows 10000000] [--ray] [--skip-single] [--work /tmp/audit-scale]

The corpus and the benchmark index are built once under --work and reused, so a rerun costs the audits.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil

from mergeguard.auditor import AuditOptions, load_benchmark_index
from mergeguard.auditor.engines import open_engine, scan_dataset

FILE_ROWS = 250_000
ROW_GROUP = 50_000
PLANTS = 200
TARGET_SECONDS, TARGET_RSS, TARGET_SCALING, TARGET_RAY = 360, 2 << 30, 1.8, 1.25


def _planted_texts(data: Path, rng: random.Random) -> list[tuple[str, int, dict[str, str]]]:
    """Test items as Alpaca rows: (benchmark, item, row); half GSM8K with its worked answer, half ARC."""
    gsm8k = [json.loads(x) for x in (data / "hf/gsm8k/test.jsonl").read_text().splitlines()]
    arc = [json.loads(x) for x in (data / "hf/arc_challenge/test.jsonl").read_text().splitlines()]
    out = []
    for k in range(PLANTS):
        if k % 2:
            item = rng.randrange(len(gsm8k))
            row = {"instruction": gsm8k[item]["question"], "input": "", "output": gsm8k[item]["answer"]}
            out.append(("gsm8k", item, row))
        else:
            item = rng.randrange(len(arc))
            choices = arc[item]["choices"]
            listed = "\n".join(f"{a}. {b}" for a, b in zip(choices["label"], choices["text"], strict=True))
            answer = choices["text"][choices["label"].index(arc[item]["answerKey"])]
            out.append(
                (
                    "arc_challenge",
                    item,
                    {"instruction": f"{arc[item]['question']}\n{listed}", "input": "", "output": answer},
                )
            )
    return out


def build_corpus(data: Path, folder: Path, rows: int, seed: int = 16) -> dict[int, tuple[str, int]]:
    """The sharded corpus (written once per size and seed) and its planted rows {row: (benchmark, item)}."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = folder.with_name(folder.name + "-planted.json")  # beside the corpus: not a data file
    if manifest.is_file():
        return {int(k): tuple(v) for k, v in json.loads(manifest.read_text()).items()}
    rng = random.Random(seed)
    alpaca = json.loads((data / "corpora/alpaca/alpaca_5000.json").read_text())
    plants = _planted_texts(data, rng)
    at = sorted(rng.sample(range(rows), len(plants)))
    planted = {row: (bench, item) for row, (bench, item, _) in zip(at, plants, strict=True)}
    pools = {
        name: pa.array([r[name] for r in alpaca] + [p[2][name] for p in plants])
        for name in ("instruction", "input", "output")
    }
    gen = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, rows, FILE_ROWS):
        count = min(FILE_ROWS, rows - start)
        columns = {}
        for name, pool in pools.items():
            pick = gen.integers(0, len(alpaca), count)
            for k, row in enumerate(at):
                if start <= row < start + count:
                    pick[row - start] = len(alpaca) + k
            columns[name] = pool.take(pa.array(pick))
        pq.write_table(
            pa.table(columns), folder / f"part-{start // FILE_ROWS:05d}.parquet", row_group_size=ROW_GROUP
        )
    manifest.write_text(json.dumps(planted))
    return planted


class PeakRss:
    """The peaks of the summed RSS and PSS of this process and all its descendants, sampled every 0.25 s.
    RSS counts a shared page (the mapped index) once per process that touched it: an upper bound; PSS
    splits it between them, so its sum is the tree's real footprint."""

    def __init__(self) -> None:
        self.peak = 0
        self.peak_pss = 0
        self.cpu: dict[int, float] = {}  # CPU seconds per process of the tree, as last seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            rss = pss = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    full = proc.memory_full_info()
                    times = proc.cpu_times()
                except psutil.Error:
                    continue
                self.cpu[proc.pid] = times.user + times.system
                rss, pss = rss + full.rss, pss + full.pss
            self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)
            time.sleep(0.25)

    @property
    def cpu_seconds(self) -> float:
        """CPU time the tree used (a process's last sample: a short-lived one may be missed)."""
        return sum(self.cpu.values())

    def __enter__(self) -> PeakRss:
        self.cpu[0] = -sum(psutil.Process().cpu_times()[:2])  # this process's CPU before the run
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def run(
    corpus: Path, options: AuditOptions, planted: dict[int, tuple[str, int]], label: str
) -> dict[str, Any]:
    """One audit of the corpus by the engine `options` names: timings, peak RSS, recall, findings."""
    start = time.perf_counter()
    with PeakRss() as rss:
        index, _ = load_benchmark_index(options)
        loaded = time.perf_counter()
        with open_engine(index, options) as engine:
            ready = time.perf_counter()
            scanned = scan_dataset(str(corpus), index, options, engine)
            scanned_at = time.perf_counter()
    found = {(m.example, index.refs[m.item].benchmark, index.refs[m.item].index) for m in scanned.matches}
    hit = sum(1 for row, (bench, item) in planted.items() if (row, bench, item) in found)
    result = {
        "engine": label,
        "rows": scanned.examples,
        "status": scanned.status,
        "index_s": round(loaded - start, 2),
        "startup_s": round(ready - loaded, 2),
        "scan_s": round(scanned_at - ready, 2),
        "total_s": round(scanned_at - start, 2),
        "rows_per_s": round(scanned.examples / (scanned_at - ready)),
        "cpu_s": round(rss.cpu_seconds, 1),  # the machine is shared: rows per CPU-second is the steadier rate
        "rows_per_cpu_s": round(scanned.examples / max(rss.cpu_seconds, 1e-9)),
        "peak_rss_mb": round(rss.peak / 2**20),
        "peak_pss_mb": round(rss.peak_pss / 2**20),
        "recall": f"{hit}/{len(planted)}",
        "findings": len(scanned.matches),
    }
    print(json.dumps(result), flush=True)
    result["keys"] = sorted((m.example, m.item, m.severity, round(m.score, 6)) for m in scanned.matches)
    return result


def estimate(per_core: float) -> str:
    """1B rows at the measured rate per CPU-second (the whole process tree's, driver included), in
    core-hours, and on 64- and 512-core clusters (the scan is map-only: it divides by the cores)."""
    core_hours = 1e9 / per_core / 3600
    return (
        f"1B rows at {per_core:,.0f} rows/s per core: {core_hours:,.1f} core-hours; "
        f"{core_hours / 64 * 60:,.0f} min on 64 cores, {core_hours / 512 * 60:,.1f} min on 512 cores"
    )


def report(two: dict[str, Any], one: dict[str, Any] | None, on_ray: dict[str, Any] | None) -> None:
    """The comparisons against the targets of #16, and the paper estimate."""
    if one is not None:
        scaling = two["rows_per_s"] / one["rows_per_s"]
        print(f"scaling: 2 workers / 1 worker = {scaling:.2f}x (target >= {TARGET_SCALING})")
        efficiency = two["rows_per_cpu_s"] / one["rows_per_cpu_s"]
        print(
            f"per CPU-second: 2 workers {efficiency:.2f}x one worker's rate, so on 2 idle cores "
            f"about {2 * efficiency:.2f}x (this machine is shared: wall-clock scaling understates it)"
        )
        print(f"findings identical to one worker: {two['keys'] == one['keys']}")
    if on_ray is not None:
        ratio = on_ray["scan_s"] / two["scan_s"]
        print(
            f"ray scan / --workers 2 scan: {ratio:.2f} (target <= {TARGET_RAY}); "
            f"start-up {on_ray['startup_s']} s"
        )
        print(f"findings identical to --workers 2: {on_ray['keys'] == two['keys']}")
    print(
        f"--workers 2: {two['total_s']} s (target < {TARGET_SECONDS} s at 10M rows), "
        f"peak RSS {two['peak_rss_mb']} MB, PSS {two['peak_pss_mb']} MB (target < {TARGET_RSS >> 20} MB)"
    )
    print(estimate(two["rows_per_cpu_s"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("/tmp/audit-scale"))
    parser.add_argument("--ray", action="store_true", help="also the Ray engine on a local 2-CPU Ray")
    parser.add_argument("--skip-single", action="store_true", help="no one-worker run (no scaling figure)")
    args = parser.parse_args()
    corpus = args.work / f"corpus-{args.rows}"
    began = time.perf_counter()
    planted = build_corpus(args.data, corpus, args.rows)
    files = len(list(corpus.glob("*.parquet")))
    print(f"corpus: {args.rows:,} rows, {files} parquet files ({time.perf_counter() - began:.0f} s)")
    options = AuditOptions(benchmarks_dir=args.data / "hf", cache_dir=args.work / "cache")
    load_benchmark_index(options)  # the index, built once into the cache
    two = run(corpus, replace(options, workers=2), planted, "local, --workers 2")
    one = (
        None if args.skip_single else run(corpus, replace(options, workers=1), planted, "local, --workers 1")
    )
    on_ray = (
        run(corpus, replace(options, engine="ray", workers=2), planted, "ray, local") if args.ray else None
    )
    report(two, one, on_ray)


if __name__ == "__main__":
    main()
