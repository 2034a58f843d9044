"""mergeguard.db: the local leaderboard, one SQLite file of models, lineage, merges, audits and scores.

It keeps the schema and its migrations, writes in transactions and answers queries; what it records comes
from the other pieces (lm-eval runs and results files: `mergeguard.evaluation`).

db = open_db()                       # --db PATH, else $MERGEGUARD_DB, else the user data folder
record_merge(db, output=..., config_text=..., method="ties", parents=[(ref, "merge", 0.5)])
record_audit(db, report.to_json())
leaderboard(db, suite="v2", clean_only=True)
lineage(db, "my-merge"); history(db, since="2026-01-01")
"""

from __future__ import annotations

from mergeguard.lazy import lazy_exports

_HOME = {  # public name -> its module, imported on first use (a merge needs records, not queries)
    "open_db": "connection",
    "transaction": "writes",
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
    "ProbeGain": "queries",
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
    "EvaluationRow",
    "HistoryEvent",
    "Leaderboard",
    "LeaderboardRow",
    "LineageEdge",
    "LineageGraph",
    "LineageNode",
    "MergeRecord",
    "ProbeGain",
    "ResultsFile",
    "add_edge",
    "apply_migrations",
    "canonical_ref",
    "contamination",
    "find_model",
    "history",
    "leaderboard",
    "latest_checks",
    "lineage",
    "open_db",
    "parents_of",
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
    "schema_version",
    "transaction",
    "upsert_model",
]
