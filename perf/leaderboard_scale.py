"""Leaderboard and lineage speed at scale: 100,000 models, 1,000,000 evaluation rows.

    .venv/bin/python perf/leaderboard_scale.py [--models 100000] [--evals-per-model 10] [--db PATH]

Builds a synthetic database through the same schema (bulk inserts, then the library's own score refresh),
then times `leaderboard` (default, v1, v2, clean-only, one task) and `lineage` (a family's base model with
all its descendants, and a merge of merges). Target: each under 200 ms. Prints the median of 5 runs.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mergeguard.db import Leaderboard, LineageGraph, leaderboard, lineage, open_db, transaction
from mergeguard.db.scores import refresh_model_scores
from mergeguard.db.writes import now_iso

BENCHMARKS = [  # (task, benchmark, metric)
    ("arc_challenge", "arc_challenge", "acc_norm"),
    ("hellaswag", "hellaswag", "acc_norm"),
    ("mmlu", "mmlu", "acc"),
    ("truthfulqa_mc2", "truthfulqa_mc", "acc"),
    ("winogrande", "winogrande", "acc"),
    ("gsm8k", "gsm8k", "exact_match"),
    ("leaderboard_bbh", "bbh", "acc_norm"),
    ("leaderboard_gpqa_diamond", "gpqa_diamond", "acc_norm"),
    ("leaderboard_mmlu_pro", "mmlu_pro", "acc"),
    ("leaderboard_musr", "musr", "acc_norm"),
]
FAMILY = 100  # models per family: 1 base, 30 fine-tunes, 40 merges of fine-tunes, 29 merges of merges


Edge = tuple[int, int, str, str | None, float | None]  # child, parent, relation, method, weight


def family_edges(rng: random.Random, n_models: int) -> list[Edge]:
    """Lineage edges of families of FAMILY models: a base, fine-tunes of it, merges of two fine-tunes onto
    the base, and merges of two earlier merges."""
    edges: list[Edge] = []
    for start in range(1, n_models + 1, FAMILY):
        ids = list(range(start, min(start + FAMILY, n_models + 1)))
        base, fts = ids[0], ids[1:31]
        merges, deep = ids[31:71], ids[71:]
        edges += [(ft, base, "finetune", None, None) for ft in fts]
        for m in merges:
            a, b = rng.sample(fts, 2)
            edges += [
                (m, a, "merge", "ties", 0.5),
                (m, b, "merge", "ties", 0.5),
                (m, base, "base", "ties", None),
            ]
        for i, m in enumerate(deep):
            a, b = rng.sample(merges + deep[:i], 2)
            edges += [(m, a, "merge", "slerp", 0.4), (m, b, "merge", "slerp", 0.6)]
    return edges


def build(path: Path, n_models: int, per_model: int, seed: int = 0) -> None:
    """The synthetic database: bulk inserts in one transaction, then the library's own score refresh."""
    rng = random.Random(seed)
    db = open_db(path)
    stamp = now_iso()
    started = time.perf_counter()
    with transaction(db):
        db.conn.executemany(
            "INSERT INTO models (id, ref, name, first_seen) VALUES (?, ?, ?, ?)",
            ((i, f"org/model-{i}", f"model-{i}", stamp) for i in range(1, n_models + 1)),
        )
        db.conn.executemany(
            "INSERT INTO lineage_edges (child_id, parent_id, relation, method, weight) "
            "VALUES (?, ?, ?, ?, ?)",
            family_edges(rng, n_models),
        )
        db.conn.executemany(
            "INSERT INTO results_files (id, sha256, path, model_id, imported_at) VALUES (?, ?, ?, ?, ?)",
            ((i, f"h{i}", f"r{i}.json", i, stamp) for i in range(1, n_models + 1)),
        )
        rows = (
            (i, i, task, bench, metric, rng.random() * 0.7 + 0.2, 1, stamp)
            for i in range(1, n_models + 1)
            for task, bench, metric in BENCHMARKS[:per_model]
        )
        db.conn.executemany(
            "INSERT INTO evaluations (model_id, results_file_id, task, benchmark, metric, value, is_primary, "
            "evaluated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        audit = db.execute(
            "INSERT INTO audits (created_at, report_hash) VALUES (?, 'perf')", [stamp]
        ).lastrowid
        db.conn.executemany(
            "INSERT INTO audit_verdicts (audit_id, model_id, verdict) VALUES (?, ?, ?)",
            ((audit, i, "contaminated" if rng.random() < 0.1 else "clean") for i in range(1, n_models + 1)),
        )
        inserted = time.perf_counter()
        refresh_model_scores(db, range(1, n_models + 1))
    db.execute("ANALYZE")
    n_eval = db.execute("SELECT count(*) FROM evaluations").fetchone()[0]
    n_edges = db.execute("SELECT count(*) FROM lineage_edges").fetchone()[0]
    print(
        f"built {n_models:,} models, {n_eval:,} evaluation rows, {n_edges:,} lineage edges: "
        f"inserts {inserted - started:.1f} s, score refresh {time.perf_counter() - inserted:.1f} s"
    )
    db.conn.close()


def timed(label: str, fn: Callable[[], Leaderboard | LineageGraph], runs: int = 5) -> float:
    """Run `fn` `runs` times, print its median in ms and what it returned; the median."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - start) * 1000)
    median = statistics.median(times)
    size = len(result.rows) if isinstance(result, Leaderboard) else len(result.nodes)
    flag = "ok" if median < 200 else "SLOW"
    print(f"{label:<44} median {median:7.1f} ms  (min {min(times):6.1f}, {size} rows/nodes)  {flag}")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=100_000)
    parser.add_argument("--evals-per-model", type=int, default=10)
    parser.add_argument("--db", type=Path, default=None, help="reuse or build this file")
    args = parser.parse_args()
    path = args.db or Path(tempfile.mkdtemp()) / "scale.db"
    if not path.exists():
        build(path, args.models, args.evals_per_model)
    db = open_db(path)
    deep = FAMILY * (args.models // FAMILY // 2) + FAMILY  # the last model of a family in the middle
    base = FAMILY * (args.models // FAMILY // 2) + 1
    results = [
        timed("leaderboard (all benchmarks, top 50)", lambda: leaderboard(db)),
        timed("leaderboard --suite v1", lambda: leaderboard(db, suite="v1")),
        timed("leaderboard --suite v2", lambda: leaderboard(db, suite="v2")),
        timed("leaderboard --suite v1 --clean-only", lambda: leaderboard(db, suite="v1", clean_only=True)),
        timed(
            "leaderboard --task arc_challenge,gsm8k",
            lambda: leaderboard(db, tasks=["arc_challenge", "gsm8k"]),
        ),
        timed(f"lineage model-{deep} (merge of merges)", lambda: lineage(db, f"model-{deep}")),
        timed(f"lineage model-{base} (base, 99 descendants)", lambda: lineage(db, f"model-{base}")),
    ]
    print(f"worst median: {max(results):.1f} ms (target < 200 ms)")


if __name__ == "__main__":
    main()
