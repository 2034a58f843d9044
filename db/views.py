"""SQL views that read well in Datasette (`datasette mergeguard.db`): the leaderboard, each model's scores,
lineage edges by name, and each model's latest audit verdict. Scores in views are percentages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlite_utils import Database

VIEWS: dict[str, str] = {
    "latest_verdicts": """
        SELECT m.name AS model, v.verdict, v.inherited_from, a.created_at AS audited_at, v.audit_id
        FROM audit_verdicts v
        JOIN models m ON m.id = v.model_id
        JOIN audits a ON a.id = v.audit_id
        WHERE v.audit_id = (SELECT max(v2.audit_id) FROM audit_verdicts v2 WHERE v2.model_id = v.model_id)
    """,
    "scores": """
        SELECT m.name AS model, s.benchmark, round(s.value * 100, 2) AS score,
               round(s.normalized * 100, 2) AS normalized, e.task, e.metric, e.filter,
               e.num_fewshot, e.sample_limit, e.evaluated_at
        FROM model_scores s
        JOIN models m ON m.id = s.model_id
        JOIN evaluations e ON e.id = s.evaluation_id
    """,
    "leaderboard": """
        SELECT m.name AS model, round(a.average * 100, 2) AS average, a.n_scores AS benchmarks,
               (SELECT v.verdict FROM audit_verdicts v WHERE v.model_id = m.id
                ORDER BY v.audit_id DESC LIMIT 1) AS verdict,
               EXISTS (SELECT 1 FROM merges g WHERE g.output_model_id = m.id) AS is_merge,
               (SELECT group_concat(p.name, ', ') FROM lineage_edges e JOIN models p ON p.id = e.parent_id
                WHERE e.child_id = m.id) AS parents,
               m.ref
        FROM model_averages a
        JOIN models m ON m.id = a.model_id
        WHERE a.suite = 'all'
        ORDER BY a.n_scores DESC, a.average DESC
    """,
    "lineage": """
        SELECT c.name AS child, p.name AS parent, e.relation, e.method, e.weight, e.merge_id
        FROM lineage_edges e
        JOIN models c ON c.id = e.child_id
        JOIN models p ON p.id = e.parent_id
    """,
}


def create_views(db: Database) -> None:
    """(Re)create every view; views hold no data, so replacing them is always safe."""
    for name, sql in VIEWS.items():
        db.execute(f"DROP VIEW IF EXISTS {name}")
        db.execute(f"CREATE VIEW {name} AS {sql.strip()}")
