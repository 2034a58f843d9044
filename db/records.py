"""Writing what mergeguard did: models, lineage, merges, datasets, audits, evaluations, checks.

Every function that writes more than one row does it in one transaction, and user values reach SQL only as
bound parameters. Functions take plain values (paths, dicts, tuples) so that the merge engine, the auditor
and the CLI call them without sharing classes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergeguard.auditor.report import VERDICTS, AuditReport, Finding, ModelVerdict, ProbeVerdict, Verdict
from mergeguard.db.scores import refresh_model_scores
from mergeguard.db.writes import now_iso, transaction
from mergeguard.errors import DatabaseError
from mergeguard.evaluation.fingerprint import weights_info
from mergeguard.refs import looks_local, read_config, read_model_card

if TYPE_CHECKING:
    from sqlite_utils import Database

RELATIONS = ("merge", "finetune", "base")
CHECK_VERDICTS = ("ok", "degraded", "broken")


def canonical_ref(ref: str | Path) -> str:
    """The stored form of a model reference: an absolute resolved path for local folders, else the hub id."""
    text = str(ref).strip()
    if not text:
        raise DatabaseError("empty model reference", hint="give a model folder or a hub id")
    if looks_local(text):
        return str(Path(text).expanduser().resolve())
    return text


def _describe(ref: str) -> dict[str, Any]:
    """Architecture, parameter count, dtype and fingerprint of a local folder (empty for hub ids)."""
    folder = Path(ref)
    if not folder.is_absolute() or not folder.is_dir():
        return {}
    try:
        config = read_config(folder)
    except Exception:  # an unreadable config still leaves a model worth recording
        config = {}
    archs = config.get("architectures") or []
    out: dict[str, Any] = {
        "architecture": archs[0] if archs else config.get("model_type"),
        "dtype": config.get("torch_dtype") or config.get("dtype"),
    }
    try:
        info = weights_info(folder)
    except (OSError, ValueError):
        info = None
    if info is not None:
        out.update(fingerprint=info.fingerprint, param_count=info.param_count)
        out["dtype"] = out["dtype"] or info.dtype
    return out


def upsert_model(db: Database, ref: str | Path, *, name: str | None = None) -> int:
    """The id of model `ref`, inserting it on first sight; a local folder's facts are refreshed each time."""
    key = canonical_ref(ref)
    facts = _describe(key)
    with transaction(db):
        row = db.execute("SELECT id FROM models WHERE ref = ?", [key]).fetchone()
        if row is None:
            display = name or (Path(key).name if Path(key).is_absolute() else key)
            cursor = db.execute(
                "INSERT INTO models (ref, name, fingerprint, architecture, param_count, dtype, first_seen) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    key,
                    display,
                    facts.get("fingerprint"),
                    facts.get("architecture"),
                    facts.get("param_count"),
                    facts.get("dtype"),
                    now_iso(),
                ],
            )
            return int(cursor.lastrowid)
        model_id = int(row[0])
        if facts:
            db.execute(
                "UPDATE models SET fingerprint = ?, architecture = coalesce(?, architecture), "
                "param_count = coalesce(?, param_count), dtype = coalesce(?, dtype) WHERE id = ?",
                [
                    facts.get("fingerprint"),
                    facts.get("architecture"),
                    facts.get("param_count"),
                    facts.get("dtype"),
                    model_id,
                ],
            )
        if name:
            db.execute("UPDATE models SET name = ? WHERE id = ?", [name, model_id])
        return model_id


def find_model(db: Database, text: str | Path) -> dict[str, Any]:
    """The stored model that `text` names (its ref, its folder, or its display name), else DatabaseError."""
    candidates = [str(text).strip()]
    with contextlib.suppress(DatabaseError):
        candidates.append(canonical_ref(text))
    for value in candidates:
        row = db.execute("SELECT * FROM models WHERE ref = ?", [value]).fetchone()
        if row is not None:
            return _row(db, row)
    rows = db.execute("SELECT * FROM models WHERE name = ? LIMIT 3", [candidates[0]]).fetchall()
    if len(rows) == 1:
        return _row(db, rows[0])
    if len(rows) > 1:
        raise DatabaseError(
            f"{candidates[0]!r} names several models", hint="give the model's full path or hub id instead"
        )
    raise DatabaseError(
        f"model {candidates[0]!r} is not in the database",
        hint="evaluate, import, audit or merge it first, or check the name with `mergeguard leaderboard`",
    )


def _row(db: Database, row: Sequence[Any]) -> dict[str, Any]:
    columns = [d[0] for d in db.execute("SELECT * FROM models LIMIT 0").description]
    return dict(zip(columns, row, strict=True))


def add_edge(
    db: Database,
    child_id: int,
    parent_id: int,
    relation: str,
    *,
    method: str | None = None,
    weight: float | None = None,
    merge_id: int | None = None,
) -> None:
    """Record that `parent` is a `relation` ('merge', 'finetune' or 'base') of `child` (idempotent)."""
    if relation not in RELATIONS:
        raise DatabaseError(
            f"unknown lineage relation {relation!r}", hint=f"use one of {', '.join(RELATIONS)}"
        )
    if child_id == parent_id:
        raise DatabaseError("a model cannot be its own parent", hint="check the merge's inputs")
    db.execute(
        "INSERT INTO lineage_edges (child_id, parent_id, relation, method, weight, merge_id) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (child_id, parent_id, relation) DO UPDATE SET "
        "method = coalesce(excluded.method, method), weight = coalesce(excluded.weight, weight), "
        "merge_id = coalesce(excluded.merge_id, merge_id)",
        [child_id, parent_id, relation, method, weight, merge_id],
    )


def _dataset_id(db: Database, name: str) -> int:
    db.execute("INSERT OR IGNORE INTO datasets (name) VALUES (?)", [name])
    return int(db.execute("SELECT id FROM datasets WHERE name = ?", [name]).fetchone()[0])


def declare_datasets(db: Database, model_id: int, datasets: Iterable[str]) -> None:
    """The datasets on a model's own card (declared=1)."""
    for name in datasets:
        db.execute(
            "INSERT INTO model_datasets (model_id, dataset_id, declared, inherited_from_id) "
            "VALUES (?, ?, 1, NULL) "
            "ON CONFLICT (model_id, dataset_id) DO UPDATE SET declared = 1, inherited_from_id = NULL",
            [model_id, _dataset_id(db, name)],
        )


def inherit_datasets(db: Database, child_id: int, parent_id: int) -> None:
    """Give `child` every dataset `parent` has, marked inherited from the model that declared it."""
    db.execute(
        "INSERT OR IGNORE INTO model_datasets (model_id, dataset_id, declared, inherited_from_id) "
        "SELECT ?, dataset_id, 0, coalesce(inherited_from_id, model_id) FROM model_datasets "
        "WHERE model_id = ?",
        [child_id, parent_id],
    )


def register_model(
    db: Database,
    ref: str | Path,
    *,
    name: str | None = None,
    parents: Sequence[tuple[str | Path, str]] = (),
    datasets: Sequence[str] | None = None,
) -> int:
    """Record a model with its parents [(ref, relation)] and declared datasets; a local folder's card fills
    in whatever is not given (`base_model` as fine-tune parents, `datasets`)."""
    key = canonical_ref(ref)
    if Path(key).is_dir() and (datasets is None or not parents):
        card = read_model_card(Path(key))
        if datasets is None:
            datasets = card.datasets
        if not parents:
            relation = "merge" if card.base_model_relation == "merge" else "finetune"
            parents = [(base, relation) for base in card.base_model]
    with transaction(db):
        model_id = upsert_model(db, key, name=name)
        declare_datasets(db, model_id, datasets or [])
        for parent_ref, relation in parents:
            parent_id = upsert_model(db, parent_ref)
            add_edge(db, model_id, parent_id, relation)
            inherit_datasets(db, model_id, parent_id)
    return model_id


@dataclass(frozen=True)
class MergeRecord:
    merge_id: int
    model_id: int
    created: bool


def _sha256(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def record_merge(
    db: Database,
    *,
    output: str | Path,
    config_text: str,
    method: str | None,
    parents: Sequence[tuple[str | Path, str, float | None]],
    seed: int | None = None,
    status: str = "ok",
    seconds: float | None = None,
    timings: dict[str, float] | None = None,
    tool_version: str | None = None,
    name: str | None = None,
) -> MergeRecord:
    """Record a merge, its output model and one lineage edge per parent [(ref, 'merge'|'base', weight or t)].

    The same config merged into the same output again updates the one row (status, timings) instead of
    adding a second; the output inherits its parents' datasets.
    """
    config_hash = _sha256(config_text)
    with transaction(db):
        model_id = upsert_model(db, output, name=name)
        existing = db.execute(
            "SELECT id FROM merges WHERE output_model_id = ? AND config_hash = ?", [model_id, config_hash]
        ).fetchone()
        values = [method, tool_version, seed, str(output), status, seconds, json.dumps(timings or {})]
        if existing:
            merge_id = int(existing[0])
            db.execute(
                "UPDATE merges SET method = ?, tool_version = ?, seed = ?, out_path = ?, status = ?, "
                "seconds = ?, timings = ? WHERE id = ?",
                [*values, merge_id],
            )
        else:
            merge_id = int(
                db.execute(
                    "INSERT INTO merges (method, tool_version, seed, out_path, status, seconds, timings, "
                    "output_model_id, config_hash, config_text, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [*values, model_id, config_hash, config_text, now_iso()],
                ).lastrowid
            )
        for parent_ref, relation, weight in parents:
            parent_id = upsert_model(db, parent_ref)
            add_edge(db, model_id, parent_id, relation, method=method, weight=weight, merge_id=merge_id)
            inherit_datasets(db, model_id, parent_id)
    return MergeRecord(merge_id=merge_id, model_id=model_id, created=existing is None)


def record_refusal(
    db: Database,
    *,
    output: str | Path,
    config_text: str,
    method: str | None,
    inputs: Sequence[str],
    reason: str,
    audit_id: int | None = None,
    tool_version: str | None = None,
) -> int:
    """A merge the guard refused (status 'refused', nothing written): the tool's key moment belongs in
    `history`. No lineage edges are added, so the unwritten output never shows as anyone's child."""
    record = record_merge(
        db,
        output=output,
        config_text=config_text,
        method=method,
        parents=[],
        status="refused",
        tool_version=tool_version,
    )
    guard = {"refused": reason, "inputs": [canonical_ref(ref) for ref in inputs]}
    set_merge_guard(db, record.merge_id, audit_id, guard)
    return record.merge_id


def _text(value: Any) -> str | None:
    if value is None or value == [] or value == "":
        return None
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _contamination_origins(findings: list[Finding]) -> dict[str, tuple[bool, set[str]]]:
    """model -> (has findings in its own data, ancestors its inherited findings came from)."""
    out: dict[str, tuple[bool, set[str]]] = {}
    for finding in findings:
        own, via = out.get(str(finding.model), (False, set()))
        inherited = finding.inherited_from
        if inherited:
            via |= set(inherited) if isinstance(inherited, (list, tuple)) else {str(inherited)}
        out[str(finding.model)] = (own or not inherited, via)
    return out


def _via(entry: ModelVerdict, origins: dict[str, tuple[bool, set[str]]]) -> str | None:
    """Whose data made a contaminated model so: None for its own, else the ancestors (from its findings
    when the report has them, else from the verdict's `inherited_from`)."""
    if str(entry.model) in origins:
        own, via = origins[str(entry.model)]
        return None if own else _text(sorted(via))
    return _text(entry.inherited_from)


def record_audit(
    db: Database,
    report: AuditReport | dict[str, Any],
    *,
    tool_version: str | None = None,
    input_key: str | None = None,
) -> int:
    """Record an audit report (an `AuditReport`, or its `to_json()` dict): verdicts per model and findings.

    Recording the same report twice returns the first audit's id and writes nothing. `input_key` (a hash of
    everything the audit read) lets `reusable_audit` hand the report back instead of auditing again.
    """
    if isinstance(report, AuditReport):
        report = report.to_json()
    parsed = _parsed_report(report)
    report_text = json.dumps(report, sort_keys=True, default=str)
    report_hash = _sha256(report_text)
    with transaction(db):
        existing = db.execute("SELECT id FROM audits WHERE report_hash = ?", [report_hash]).fetchone()
        if existing:
            if input_key:
                db.execute("UPDATE audits SET input_key = ? WHERE id = ?", [input_key, existing[0]])
            return int(existing[0])
        audit_id = _insert_audit(db, report, report_text, report_hash, tool_version, input_key)
        _insert_verdicts(db, audit_id, parsed)
        _insert_findings(db, audit_id, parsed.findings)
    return audit_id


def _parsed_report(report: Any) -> AuditReport:
    """The report read back into the auditor's classes (which the verdicts and findings are read from)."""
    if not isinstance(report, dict) or not isinstance(report.get("models", []), list):
        raise DatabaseError("not an audit report", hint="pass the auditor's AuditReport or its to_json()")
    try:
        return AuditReport.from_json(report)
    except (TypeError, AttributeError) as error:
        raise DatabaseError(f"not an audit report ({error})", hint="pass an AuditReport") from error


def _insert_audit(
    db: Database,
    report: dict[str, Any],
    report_text: str,
    report_hash: str,
    tool_version: str | None,
    input_key: str | None,
) -> int:
    """The audit's own row (the whole report kept as text, so a report can be shown or reused later)."""
    return int(
        db.execute(
            "INSERT INTO audits (created_at, index_hash, thresholds, benchmark_rates, tool_version, "
            "report_hash, input_key, report) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                report.get("created_at") or now_iso(),
                report.get("index_hash"),
                json.dumps(report.get("thresholds") or {}, default=str),
                json.dumps(report.get("benchmark_rates") or {}, default=str),
                tool_version,
                report_hash,
                input_key,
                report_text,
            ],
        ).lastrowid
    )


def _insert_verdicts(db: Database, audit_id: int, report: AuditReport) -> None:
    """One verdict row per audited model; an unknown verdict refuses the whole audit (the caller's
    transaction rolls back), since the leaderboard and the guard read these verdicts."""
    origins = _contamination_origins(report.findings)
    for entry in report.models:
        if entry.kind != "model":
            continue  # `audit --dataset` verdicts are about datasets, not models
        verdict = entry.verdict
        if verdict not in VERDICTS:
            raise DatabaseError(
                f"audit verdict {verdict!r} for {entry.model!r} is unknown",
                hint=f"verdicts are {', '.join(VERDICTS)}",
            )
        model_id = upsert_model(db, entry.model)
        db.execute(
            "INSERT OR REPLACE INTO audit_verdicts "
            "(audit_id, model_id, verdict, inherited_from, datasets) "
            "VALUES (?, ?, ?, ?, ?)",
            [
                audit_id,
                model_id,
                verdict,
                _via(entry, origins) if verdict == Verdict.CONTAMINATED else None,
                json.dumps(entry.datasets or [], default=str),
            ],
        )


def _insert_findings(db: Database, audit_id: int, findings: list[Finding]) -> None:
    """One row per finding; list-valued fields (datasets, ids, ancestors) are stored as comma-joined text."""
    for finding in findings:
        model_id = upsert_model(db, finding.model) if finding.model else None
        db.execute(
            "INSERT INTO findings (audit_id, model_id, dataset, example, benchmark, split, item, "
            "item_id, score, severity, inherited_from, evidence) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                audit_id,
                model_id,
                _text(finding.dataset),
                _text(finding.example),
                finding.benchmark,
                finding.split,
                finding.item,
                _text(finding.item_id),
                finding.score,
                finding.severity,
                _text(finding.inherited_from),
                _text(finding.evidence),
            ],
        )


@dataclass
class EvaluationRow:
    """One lm-eval metric of one task."""

    task: str
    metric: str
    value: float | None
    filter: str = "none"
    stderr: float | None = None
    num_fewshot: int | None = None
    n_samples: int | None = None
    benchmark: str | None = None
    is_primary: bool = False


@dataclass
class ResultsFile:
    """Where a batch of evaluations came from: the results file, its hash and the run's facts."""

    path: str
    sha256: str
    model_ref: str
    rows: list[EvaluationRow] = field(default_factory=list)
    harness_version: str | None = None
    evaluated_at: str | None = None
    sample_limit: float | None = None
    source: str = "import"


def record_evaluations(db: Database, results: ResultsFile) -> tuple[int, bool]:
    """Store one results file's evaluations; (results_file_id, created). A file already imported (same
    hash) is not stored twice."""
    with transaction(db):
        existing = db.execute("SELECT id FROM results_files WHERE sha256 = ?", [results.sha256]).fetchone()
        if existing:
            return int(existing[0]), False
        model_id = upsert_model(db, results.model_ref)
        file_id = int(
            db.execute(
                "INSERT INTO results_files (sha256, path, model_id, source, harness_version, evaluated_at, "
                "imported_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    results.sha256,
                    results.path,
                    model_id,
                    results.source,
                    results.harness_version,
                    results.evaluated_at,
                    now_iso(),
                ],
            ).lastrowid
        )
        db.conn.executemany(
            "INSERT INTO evaluations (model_id, results_file_id, task, benchmark, metric, filter, value, "
            "stderr, is_primary, num_fewshot, sample_limit, n_samples, harness_version, evaluated_at, "
            "source_file, source_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                [
                    model_id,
                    file_id,
                    row.task,
                    row.benchmark,
                    row.metric,
                    row.filter,
                    row.value,
                    row.stderr,
                    int(row.is_primary),
                    row.num_fewshot,
                    results.sample_limit,
                    row.n_samples,
                    results.harness_version,
                    results.evaluated_at,
                    results.path,
                    results.sha256,
                ]
                for row in results.rows
            ],
        )
        refresh_model_scores(db, [model_id])
    return file_id, True


def record_check(db: Database, model: str | Path, verdict: str, detail: str | None = None) -> int:
    """A sanity check's verdict on a model ('ok', 'degraded' or 'broken')."""
    if verdict not in CHECK_VERDICTS:
        raise DatabaseError(
            f"unknown check verdict {verdict!r}", hint=f"use one of {', '.join(CHECK_VERDICTS)}"
        )
    with transaction(db):
        model_id = upsert_model(db, model)
        return int(
            db.execute(
                "INSERT INTO checks (model_id, verdict, detail, created_at) VALUES (?, ?, ?, ?)",
                [model_id, verdict, detail, now_iso()],
            ).lastrowid
        )


def reusable_audit(db: Database, input_key: str) -> tuple[int, dict[str, Any]] | None:
    """The newest stored audit made from exactly these inputs (`record_audit(..., input_key=)`), if any."""
    row = db.execute(
        "SELECT id, report FROM audits WHERE input_key = ? AND report IS NOT NULL ORDER BY id DESC LIMIT 1",
        [input_key],
    ).fetchone()
    return (int(row[0]), json.loads(row[1])) if row else None


def set_merge_guard(db: Database, merge_id: int, audit_id: int | None, guard: dict[str, Any]) -> None:
    """Attach to a recorded merge the audit it passed and the guard decisions (overrides, family check)."""
    with transaction(db):
        db.execute(
            "UPDATE merges SET audit_id = ?, guard = ? WHERE id = ?",
            [audit_id, json.dumps(guard, sort_keys=True, default=str), merge_id],
        )


def record_probe(db: Database, report: dict[str, Any]) -> list[int]:
    """A probe report (`ProbeReport.to_dict()`): one row per benchmark, in one transaction."""
    rows = report.get("benchmarks") or []
    for row in rows:
        if row.get("verdict") not in tuple(ProbeVerdict):
            raise DatabaseError(
                f"unknown probe verdict {row.get('verdict')!r}",
                hint=f"use one of {', '.join(ProbeVerdict)}",
            )
    ids: list[int] = []
    with transaction(db):
        model_id = upsert_model(db, report["model"])
        for row in rows:
            cursor = db.execute(
                "INSERT INTO probes (model_id, reference, benchmark, split, verdict, p_value, effect, items, "
                "alpha, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    model_id,
                    report.get("reference"),
                    row["benchmark"],
                    row.get("split"),
                    row["verdict"],
                    row.get("p_value"),
                    row.get("effect"),
                    int(row.get("n_items") or 0),
                    float(report.get("alpha") or 0.0),
                    now_iso(),
                ],
            )
            ids.append(int(cursor.lastrowid))
    return ids
