"""From lm-eval's task names and metrics to the leaderboard's benchmark scores.

lm-eval names a result by task and `metric,filter`; the leaderboard ranks each benchmark by one metric. This
module says which (task, metric, filter) is a benchmark's primary score, normalizes it the way the Open LLM
Leaderboard v2 did, and keeps the derived `model_scores` and `model_averages` tables current.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import TYPE_CHECKING

from mergeguard.benchmarks.registry import REGISTRY
from mergeguard.errors import BenchmarkError

if TYPE_CHECKING:
    from sqlite_utils import Database

FILTER_PREFERENCE = ("none", "strict-match", "flexible-extract")

# Task names of older lm-eval releases and results files: task -> (benchmark, metrics in preference order).
OLDER_TASKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "truthfulqa_mc": ("truthfulqa_mc", ("mc2",)),
    "truthfulqa": ("truthfulqa_mc", ("mc2",)),
    "ai2_arc_challenge": ("arc_challenge", ("acc_norm",)),
    "gsm8k_cot": ("gsm8k", ("exact_match", "acc")),
    "leaderboard_math_hard": ("math_hard", ("exact_match",)),
}
METRIC_FALLBACKS: dict[str, tuple[str, ...]] = {"gsm8k": ("acc",)}


# Custom benchmarks (a team's own eval sets, `--benchmark-spec`) evaluated in this process: name -> metrics.
CUSTOM_TASKS: dict[str, tuple[str, ...]] = {}


def register_custom_task(name: str, metrics: tuple[str, ...] = ("acc",)) -> None:
    """Let a custom benchmark's lm-eval task score a leaderboard column named after it."""
    CUSTOM_TASKS[name] = metrics
    task_map.cache_clear()


@lru_cache(maxsize=1)
def task_map() -> dict[str, tuple[str, tuple[str, ...]]]:
    """lm-eval task name -> (benchmark, metrics to rank by, best first), from the registry plus old names."""
    mapping: dict[str, tuple[str, tuple[str, ...]]] = dict(OLDER_TASKS)
    mapping.update({name: (name, metrics) for name, metrics in CUSTOM_TASKS.items()})
    for spec in REGISTRY.values():
        metrics = (spec.metric, *METRIC_FALLBACKS.get(spec.name, ()))
        mapping[spec.lm_eval_task] = (spec.name, metrics)
        mapping.setdefault(spec.name, (spec.name, metrics))
    return mapping


def benchmark_for_task(task: str) -> str | None:
    """The benchmark an lm-eval task scores, or None for tasks the leaderboard does not rank."""
    entry = task_map().get(task)
    return entry[0] if entry else None


def resolve_benchmarks(names: Iterable[str]) -> list[str]:
    """Benchmark names from what a user typed: registry names or lm-eval task names."""
    out: list[str] = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name in REGISTRY:
            out.append(name)
        elif name in task_map():
            out.append(task_map()[name][0])
        else:
            raise BenchmarkError(f"unknown benchmark or task {name!r}", hint=f"known: {', '.join(REGISTRY)}")
    return list(dict.fromkeys(out))


def primary_metric(task: str, available: Iterable[tuple[str, str]]) -> tuple[str, str] | None:
    """Which (metric, filter) of a task's results is its benchmark's score, or None."""
    entry = task_map().get(task)
    if entry is None:
        return None
    pairs = set(available)

    def filter_rank(name: str) -> tuple[int, str]:
        return (FILTER_PREFERENCE.index(name) if name in FILTER_PREFERENCE else len(FILTER_PREFERENCE), name)

    for metric in entry[1]:
        filters = sorted((f for m, f in pairs if m == metric), key=filter_rank)
        if filters:
            return metric, filters[0]
    return None


def normalize(benchmark: str, value: float) -> float:
    """The v2 normalization: (value - random baseline) / (1 - baseline), floored at 0."""
    spec = REGISTRY.get(benchmark)
    baseline = spec.random_baseline if spec else 0.0
    if baseline >= 1:
        return value
    return max(0.0, (value - baseline) / (1 - baseline))


def suites_of(benchmark: str) -> tuple[str, ...]:
    spec = REGISTRY.get(benchmark)
    return spec.suites if spec else ()


def averages(scores: Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, int]]:
    """suite -> (average, count) from benchmark -> (value, normalized): 'all' and v1 plain, v2 normalized."""
    out: dict[str, tuple[float, int]] = {}
    if scores:
        values = [v for v, _ in scores.values()]
        out["all"] = (sum(values) / len(values), len(values))
    for suite in ("v1", "v2"):
        picked = [(v, n) for b, (v, n) in scores.items() if suite in suites_of(b)]
        if picked:
            column = [n if suite == "v2" else v for v, n in picked]
            out[suite] = (sum(column) / len(column), len(column))
    return out


def refresh_model_scores(db: Database, model_ids: Iterable[int]) -> None:
    """Recompute the derived score tables for these models (call inside the write's transaction).

    A benchmark's score is its latest primary evaluation, a full run outranking one made with --limit.
    """
    for model_id in sorted(set(model_ids)):
        rows = db.execute(
            """
            SELECT benchmark, value, id FROM evaluations
            WHERE model_id = ? AND is_primary = 1 AND benchmark IS NOT NULL AND value IS NOT NULL
            ORDER BY benchmark, sample_limit IS NULL DESC, coalesce(evaluated_at, '') DESC, id DESC
            """,
            [model_id],
        ).fetchall()
        chosen: dict[str, tuple[float, int]] = {}
        for benchmark, value, eval_id in rows:
            chosen.setdefault(benchmark, (float(value), eval_id))
        db.execute("DELETE FROM model_scores WHERE model_id = ?", [model_id])
        db.execute("DELETE FROM model_averages WHERE model_id = ?", [model_id])
        scores: dict[str, tuple[float, float]] = {}
        for benchmark, (value, eval_id) in chosen.items():
            scores[benchmark] = (value, normalize(benchmark, value))
            db.execute(
                "INSERT INTO model_scores (model_id, benchmark, value, normalized, evaluation_id) "
                "VALUES (?, ?, ?, ?, ?)",
                [model_id, benchmark, value, scores[benchmark][1], eval_id],
            )
        for suite, (average, count) in averages(scores).items():
            db.execute(
                "INSERT INTO model_averages (model_id, suite, average, n_scores) VALUES (?, ?, ?, ?)",
                [model_id, suite, average, count],
            )
