"""mergeguard.db: the local leaderboard, one SQLite file of models, lineage, merges, audits and scores.

db = open_db()                       # --db PATH, else $MERGEGUARD_DB, else the user data folder
record_merge(db, output=..., config_text=..., method="ties", parents=[(ref, "merge", 0.5)])
record_audit(db, report.to_json())
import_results(db, ["results/"])     # lm-eval results files
leaderboard(db, suite="v2", clean_only=True)
lineage(db, "my-merge"); history(db, since="2026-01-01")
"""

from __future__ import annotations

from mergeguard.lazy import lazy_exports

_HOME = {  # public name -> its module, imported on first use (a merge needs records, not lm-eval runs)
    "open_db": "connection",
    "transaction": "connection",
    "EvalSummary": "evaluate",
    "run_eval": "evaluate",
    "task_config": "evaluate",
    "ImportSummary": "lm_eval_import",
    "import_results": "lm_eval_import",
    "parse_results_file": "lm_eval_import",
    "MIGRATIONS": "migrations",
    "apply_migrations": "migrations",
    "schema_version": "migrations",
    "Contamination": "queries",
    "HistoryEvent": "queries",
    "Leaderboard": "queries",
    "LeaderboardRow": "queries",
    "LineageEdge": "queries",
    "LineageGraph": "queries",
    "LineageNode": "queries",
    "contamination": "queries",
    "history": "queries",
    "latest_checks": "queries",
    "leaderboard": "queries",
    "lineage": "queries",
    "parents_of": "queries",
    "EvaluationRow": "records",
    "MergeRecord": "records",
    "ResultsFile": "records",
    "add_edge": "records",
    "canonical_ref": "records",
    "find_model": "records",
    "record_audit": "records",
    "record_check": "records",
    "record_evaluations": "records",
    "record_probe": "records",
    "record_merge": "records",
    "register_model": "records",
    "reusable_audit": "records",
    "set_merge_guard": "records",
    "upsert_model": "records",
    "render_history": "render",
    "render_leaderboard": "render",
    "render_lineage": "render",
}

__getattr__ = lazy_exports(__name__, _HOME)


__all__ = [
    "MIGRATIONS",
    "Contamination",
    "EvalSummary",
    "EvaluationRow",
    "HistoryEvent",
    "ImportSummary",
    "Leaderboard",
    "LeaderboardRow",
    "LineageEdge",
    "LineageGraph",
    "LineageNode",
    "MergeRecord",
    "ResultsFile",
    "add_edge",
    "apply_migrations",
    "canonical_ref",
    "contamination",
    "find_model",
    "history",
    "import_results",
    "leaderboard",
    "latest_checks",
    "lineage",
    "open_db",
    "parents_of",
    "parse_results_file",
    "record_audit",
    "record_check",
    "record_evaluations",
    "record_probe",
    "record_merge",
    "register_model",
    "reusable_audit",
    "set_merge_guard",
    "render_history",
    "render_leaderboard",
    "render_lineage",
    "run_eval",
    "schema_version",
    "task_config",
    "transaction",
    "upsert_model",
]
