"""mergeguard.db: the local leaderboard, one SQLite file of models, lineage, merges, audits and scores.

db = open_db()                       # --db PATH, else $MERGEGUARD_DB, else the user data folder
record_merge(db, output=..., config_text=..., method="ties", parents=[(ref, "merge", 0.5)])
record_audit(db, report.to_json())
import_results(db, ["results/"])     # lm-eval results files
leaderboard(db, suite="v2", clean_only=True)
lineage(db, "my-merge"); history(db, since="2026-01-01")
"""

from mergeguard.db.connection import open_db, transaction
from mergeguard.db.evaluate import EvalSummary, run_eval, task_config
from mergeguard.db.lm_eval_import import ImportSummary, import_results, parse_results_file
from mergeguard.db.migrations import MIGRATIONS, apply_migrations, schema_version
from mergeguard.db.queries import (
    Contamination,
    HistoryEvent,
    Leaderboard,
    LeaderboardRow,
    LineageEdge,
    LineageGraph,
    LineageNode,
    contamination,
    history,
    latest_checks,
    leaderboard,
    lineage,
    parents_of,
)
from mergeguard.db.records import (
    EvaluationRow,
    MergeRecord,
    ResultsFile,
    add_edge,
    canonical_ref,
    find_model,
    record_audit,
    record_check,
    record_evaluations,
    record_merge,
    register_model,
    reusable_audit,
    set_merge_guard,
    upsert_model,
)
from mergeguard.db.render import render_history, render_leaderboard, render_lineage

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
