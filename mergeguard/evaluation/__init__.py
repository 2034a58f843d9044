"""mergeguard.evaluation: scores for the leaderboard, from lm-eval runs, lm-eval results files and the
weights they belong to. It reads models and results; `mergeguard.db` only records what it finds.

summary = run_eval(db, "out/my-merge", suite="v2", benchmarks_dir="benchmarks/")   # lm-eval, offline
import_results(db, ["lm-eval-out/"])                  # results_*.json files lm-eval wrote elsewhere
parse_results_file("results.json")                    # the same file as records, no database
weights_info("out/my-merge")                          # fingerprint, parameter count, dtype
"""

from __future__ import annotations

from mergeguard.lazy import lazy_exports

_HOME = {  # public name -> its module, imported on first use (an import needs no lm-eval run)
    "WeightsInfo": "fingerprint",
    "weights_info": "fingerprint",
    "GroupPlan": "groups",
    "aggregate_group": "groups",
    "ImportSummary": "importing",
    "import_results": "importing",
    "LmEvalExtras": "options",
    "parse_key_values": "options",
    "parse_seed": "options",
    "parse_results_file": "results_file",
    "results_files": "results_file",
    "EvalSummary": "run",
    "run_eval": "run",
    "task_config": "tasks",
    "task_configs": "tasks",
    "load_task_yaml": "task_yaml",
    "custom_task_config": "custom_task",
}

__getattr__ = lazy_exports(__name__, _HOME)


__all__ = sorted(_HOME)
