"""The questions a report asks: a model's latest audit (the stored report, findings with item text), the
merge that made it, the audit of a merge config's inputs, the audits that read a dataset, and scores.

Read-only, like `queries`; user values are bound parameters. Reports render what these return.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlite_utils import Database


@dataclass
class StoredAudit:
    """One recorded audit: its id, time and the auditor's report as `to_json()` gave it."""

    audit_id: int
    created_at: str
    report: dict[str, Any]


def audit_by_id(db: Database, audit_id: int | None) -> StoredAudit | None:
    """A recorded audit by id (None when absent or stored without its report)."""
    if audit_id is None:
        return None
    row = db.execute("SELECT id, created_at, report FROM audits WHERE id = ?", [audit_id]).fetchone()
    if row is None or not row[2]:
        return None
    return StoredAudit(int(row[0]), row[1], json.loads(row[2]))


def latest_audit(db: Database, model_id: int) -> StoredAudit | None:
    """The newest audit with a verdict on this model (and a stored report), or None."""
    row = db.execute(
        "SELECT max(v.audit_id) FROM audit_verdicts v JOIN audits a ON a.id = v.audit_id "
        "WHERE v.model_id = ? AND a.report IS NOT NULL",
        [model_id],
    ).fetchone()
    return audit_by_id(db, row[0] if row else None)


def audit_covering(db: Database, refs: Sequence[str]) -> StoredAudit | None:
    """The newest audit with a verdict on every one of these models (e.g. a merge config's inputs, which
    the guard audits and records even when it refuses the merge)."""
    if not refs:
        return None
    marks = ", ".join("?" for _ in refs)
    row = db.execute(
        f"SELECT v.audit_id FROM audit_verdicts v JOIN models m ON m.id = v.model_id "
        f"JOIN audits a ON a.id = v.audit_id WHERE m.ref IN ({marks}) AND a.report IS NOT NULL "
        f"GROUP BY v.audit_id HAVING count(DISTINCT m.ref) = ? ORDER BY v.audit_id DESC LIMIT 1",
        [*refs, len(set(refs))],
    ).fetchone()
    return audit_by_id(db, row[0] if row else None)


def audit_of_dataset(db: Database, ref: str) -> StoredAudit | None:
    """The newest audit that read dataset `ref` (as stored: the reference the card or user gave)."""
    pattern = json.dumps(ref)  # the quoted string, as it appears in the stored report
    row = db.execute(
        "SELECT id FROM audits WHERE report IS NOT NULL AND instr(report, ?) > 0 ORDER BY id DESC LIMIT 1",
        [pattern],
    ).fetchone()
    return audit_by_id(db, row[0] if row else None)


@dataclass
class StoredMerge:
    """A recorded merge: its method, config as given, status, time, and the guard's decisions."""

    merge_id: int
    output_ref: str
    method: str | None
    config_text: str
    status: str
    created_at: str
    audit_id: int | None
    guard: dict[str, Any]


def _merge(db: Database, where: str, value: Any) -> StoredMerge | None:
    row = db.execute(
        "SELECT g.id, m.ref, g.method, g.config_text, g.status, g.created_at, g.audit_id, g.guard "
        f"FROM merges g JOIN models m ON m.id = g.output_model_id WHERE {where} ORDER BY g.id DESC LIMIT 1",
        [value],
    ).fetchone()
    if row is None:
        return None
    return StoredMerge(*row[:7], guard=json.loads(row[7]) if row[7] else {})


def merge_of(db: Database, model_id: int) -> StoredMerge | None:
    """The newest merge whose output is this model."""
    return _merge(db, "g.output_model_id = ?", model_id)


def merge_by_config(db: Database, config_text: str, *, written: bool = False) -> StoredMerge | None:
    """The newest merge recorded for exactly this config text (`written`: only one that wrote its output,
    not one the guard refused)."""
    where = "g.config_hash = ?" + (" AND g.status = 'ok'" if written else "")
    return _merge(db, where, hashlib.sha256(config_text.encode()).hexdigest())


def scores_of(db: Database, model_ids: Sequence[int]) -> dict[int, dict[str, tuple[float, float]]]:
    """Each model's primary score per benchmark: (value, v2-normalized), both 0..1."""
    out: dict[int, dict[str, tuple[float, float]]] = {i: {} for i in model_ids}
    if not model_ids:
        return out
    marks = ", ".join("?" for _ in model_ids)
    for model_id, benchmark, value, normalized in db.execute(
        f"SELECT model_id, benchmark, value, normalized FROM model_scores WHERE model_id IN ({marks})",
        list(model_ids),
    ):
        out[model_id][benchmark] = (value, normalized)
    return out


@dataclass
class ScoreDetail:
    """What a model card's `model-index` needs for one benchmark."""

    benchmark: str
    task: str
    metric: str
    value: float
    num_fewshot: int | None
    split: str | None = None


def score_details(db: Database, model_id: int) -> list[ScoreDetail]:
    """The evaluation behind each of a model's leaderboard scores (task, metric, few-shot count)."""
    rows = db.execute(
        "SELECT s.benchmark, e.task, e.metric, s.value, e.num_fewshot FROM model_scores s "
        "JOIN evaluations e ON e.id = s.evaluation_id WHERE s.model_id = ? ORDER BY s.benchmark",
        [model_id],
    ).fetchall()
    return [ScoreDetail(*row) for row in rows]
