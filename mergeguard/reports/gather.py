"""What a report shows, read from the database: the subject's verdict (as the auditor and `db` gave it),
per-benchmark counts, findings with the item and the training row, the lineage, scores of the model, its
parents and its base, and the merge config with the guard's decisions.

Nothing here decides a verdict: verdicts come from the stored audit and `db.contamination`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergeguard.auditor.report import PASSAGE, SEVERITY_RANK, UNREAD, AuditReport, Verdict
from mergeguard.benchmarks.registry import suite_names
from mergeguard.db import canonical_ref, contamination, find_model, lineage
from mergeguard.db.evidence import (
    audit_by_id,
    audit_covering,
    audit_of_dataset,
    latest_audit,
    merge_by_config,
    merge_of,
    scores_of,
)
from mergeguard.db.queries import LineageGraph
from mergeguard.errors import DatabaseError, UsageError
from mergeguard.merge.config import config_models, load_config

if TYPE_CHECKING:
    from sqlite_utils import Database


@dataclass
class BenchmarkCount:
    """Distinct items of one benchmark found, their share, the worst severity and the audit's verdict."""

    benchmark: str
    split: str
    items: int
    found: int
    share: float
    worst: str | None
    verdict: str | None


@dataclass
class ScoreSeries:
    """One model's scores in percent per benchmark, and its role beside the subject."""

    model: str
    role: str  # model | parent | base
    scores: dict[str, float]


@dataclass
class Report:
    """Everything `render_html` and `render_markdown` show; plain data a notebook can read too."""

    kind: str  # model | config | dataset
    subject: str
    ref: str
    verdict: str
    verdict_via: str | None
    why: list[str]
    counts: list[BenchmarkCount]
    findings: list[dict[str, Any]]
    audit_id: int | None = None
    audited_at: str | None = None
    lineage: LineageGraph | None = None
    origins: dict[str, int] = field(default_factory=dict)  # model name -> findings that came in there
    scores: list[ScoreSeries] = field(default_factory=list)
    suite: str | None = None
    config_text: str | None = None
    guard: dict[str, Any] = field(default_factory=dict)
    datasets: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    thresholds: dict[str, Any] = field(default_factory=dict)


def _name(ref: str | None) -> str:
    if not ref:
        return ""
    path = Path(ref)
    return path.name if path.is_absolute() else ref


def _counts(report: dict[str, Any], findings: list[dict[str, Any]], rates: list[dict[str, Any]]) -> list:
    """Per benchmark: the audit's own rate rows when it has them, else distinct items in `findings`."""
    sizes = report.get("benchmark_rates") or {}
    by_rate = {r["benchmark"]: r for r in rates}
    out = []
    for name in sorted(set(sizes) | {f["benchmark"] for f in findings}):
        hits = [f for f in findings if f["benchmark"] == name and f.get("severity") != PASSAGE]
        items = int((by_rate.get(name) or sizes.get(name) or {}).get("items", 0))
        found = len({f["item"] for f in hits})
        severities = [f["severity"] for f in hits if f.get("severity") in SEVERITY_RANK]
        out.append(
            BenchmarkCount(
                benchmark=name,
                split=str((sizes.get(name) or {}).get("split") or (by_rate.get(name) or {}).get("split", "")),
                items=items,
                found=found,
                share=found / items if items else 0.0,
                worst=max(severities, key=SEVERITY_RANK.__getitem__) if severities else None,
                verdict=(by_rate.get(name) or {}).get("verdict"),
            )
        )
    return out


def _ordered(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Worst first, then by benchmark and item, so the page opens on the strongest evidence."""
    return sorted(
        findings,
        key=lambda f: (
            -SEVERITY_RANK.get(f.get("severity", ""), -1),
            -float(f.get("score") or 0),
            f.get("benchmark", ""),
            f.get("item", 0),
        ),
    )


def _why(verdict: str, via: str | None, counts: list[BenchmarkCount], thresholds: dict[str, Any]) -> list:
    """Sentences that explain the stored verdict from the stored counts and thresholds."""
    lines = []
    if via:
        lines.append(f"An ancestor, {via}, was audited contaminated; every descendant inherits its findings.")
    for count in counts:
        if count.found:
            lines.append(
                f"{count.benchmark}: {count.found} of {count.items} test items ({count.share:.1%}) found in "
                f"declared training data, worst severity {count.worst}."
            )
    if verdict == Verdict.CONTAMINATED and thresholds:
        rule = f"at least {float(thresholds.get('rate', 0.01)):.0%} of a benchmark's items"
        if thresholds.get("fail_on_verbatim", True):
            rule += " or any verbatim copy"
        lines.append(f"The audit fails a model on {rule}.")
    if verdict == Verdict.CLEAN:
        lines.append("No benchmark test items were found in any declared dataset of its lineage.")
    if verdict == Verdict.UNDECLARED:
        lines.append("No training data is declared anywhere in its lineage: nothing could be audited.")
    if verdict in UNREAD:
        lines.append("A declared dataset could not be read completely, so the audit cannot call it clean.")
    if verdict == Verdict.UNAUDITED:
        lines.append("This model has not been audited (merged with --no-audit, or only evaluated).")
    return lines


def _entry(report: dict[str, Any], ref: str) -> dict[str, Any]:
    return next((m for m in report.get("models", []) if m.get("model") == ref), {})


def _scores(db: Database, model: dict[str, Any], graph: LineageGraph, suite: str | None) -> list[ScoreSeries]:
    """The subject's scores beside its direct parents' and base's (v2: normalized against chance)."""
    names = {node.model: node.id for node in graph.nodes}
    series: list[tuple[int, str, str]] = [(model["id"], model["name"], "model")]
    for edge in graph.edges:
        if edge.child == model["name"] and edge.parent in names:
            role = "base" if edge.relation == "base" else "parent"
            series.append((names[edge.parent], edge.parent, role))
    only = set(suite_names(suite)) if suite else None
    stored = scores_of(db, [s[0] for s in series])
    out = []
    for model_id, name, role in series:
        values = {
            b: (v[1] if suite == "v2" else v[0]) * 100
            for b, v in stored[model_id].items()
            if only is None or b in only
        }
        out.append(ScoreSeries(name, role, values))
    return out if any(s.scores for s in out) else []


def _unique_datasets(datasets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each dataset once (a merge's report lists the base's data once per input that inherits it)."""
    seen: dict[str, dict[str, Any]] = {}
    for entry in datasets:
        seen.setdefault(str(entry.get("ref")), entry)
    return list(seen.values())


def _origins(findings: list[dict[str, Any]], subject: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for finding in findings:
        where = _name(finding.get("inherited_from")) or _name(finding.get("model")) or subject
        out[where] = out.get(where, 0) + 1
    return out


def inputs_report(report: dict[str, Any], verdict: str) -> Report:
    """A merge's inputs' audit as a Report, before anything is stored: what the merge's card shows."""
    findings = [f for f in report.get("findings", []) if f.get("model") is not None]
    return Report(
        kind="config",
        subject="",
        ref="",
        verdict=verdict,
        verdict_via=None,
        why=[],
        counts=_counts(report, findings, []),
        findings=_ordered(findings),
        origins=_origins(findings, ""),
        thresholds=report.get("thresholds") or {},
    )


def model_report(db: Database, model: str, suite: str | None = None) -> Report:
    """The report of a model in the database: its latest audit (or its contaminated ancestor's)."""
    row = find_model(db, model)
    verdict = contamination(db, [row["id"]])[row["id"]]
    graph = lineage(db, row["ref"], suite=suite)
    stored = latest_audit(db, row["id"])
    report = stored.report if stored else {}
    findings = [f for f in report.get("findings", []) if f.get("model") == row["ref"]]
    if not findings and verdict.via:  # an inherited verdict: show the ancestor's evidence
        ancestor = next((n for n in graph.nodes if verdict.via in (n.model, n.ref)), None)
        if ancestor is not None:
            found = latest_audit(db, ancestor.id)
            if found is not None:
                report, stored = found.report, found
                findings = [
                    {**f, "inherited_from": f.get("inherited_from") or ancestor.ref}
                    for f in report.get("findings", [])
                    if f.get("model") == ancestor.ref
                ]
    entry = _entry(report, row["ref"])
    counts = _counts(report, findings, entry.get("rates") or [])
    merge = merge_of(db, row["id"])
    via = ", ".join(_name(v) for v in verdict.via.split(", ")) if verdict.via else None
    return Report(
        kind="model",
        subject=row["name"],
        ref=row["ref"],
        verdict=verdict.verdict,
        verdict_via=via,
        why=_why(verdict.verdict, via, counts, report.get("thresholds") or {}),
        counts=counts,
        findings=_ordered(findings),
        audit_id=stored.audit_id if stored else None,
        audited_at=stored.created_at if stored else None,
        lineage=graph,
        origins=_origins(findings, row["name"]),
        scores=_scores(db, row, graph, suite),
        suite=suite,
        config_text=merge.config_text if merge else None,
        guard=merge.guard if merge else {},
        datasets=_unique_datasets(entry.get("datasets") or []),
        problems=list(entry.get("problems") or []) + list(report.get("problems") or []),
        thresholds=report.get("thresholds") or {},
    )


def config_report(db: Database, path: Path, suite: str | None = None) -> Report:
    """A merge config: the report of the model it made when it was merged, else of its inputs' audit
    (the guard records that audit even when it refuses the merge)."""
    config = load_config(path, allow_unknown_keys=True)  # a merge may have accepted unknown keys
    merge = merge_by_config(db, config.text, written=True)
    if merge is not None:
        out = model_report(db, merge.output_ref, suite)
        out.kind, out.config_text, out.guard = "config", config.text, merge.guard
        out.subject, out.ref = path.name, str(path.resolve())
        out.why.insert(0, f"{path.name} was merged into {_name(merge.output_ref)} ({merge.status}).")
        return out
    refs = [canonical_ref(ref.split("+", 1)[0]) for ref in config_models(config)]
    refused = merge_by_config(db, config.text)  # the guard records what it refused, with its audit
    stored = (audit_by_id(db, refused.audit_id) if refused else None) or audit_covering(db, refs)
    if stored is None:
        raise DatabaseError(
            f"no audit of the inputs of {path} is in the database",
            hint=f"run `mergeguard merge {path} OUT` (it audits and records the inputs) with this --db",
        )
    report = stored.report
    entries = [_entry(report, ref) for ref in refs]
    verdicts = [e.get("verdict", Verdict.UNAUDITED) for e in entries]
    verdict = AuditReport.from_json(report).merged_verdict()
    findings = [f for f in report.get("findings", []) if f.get("model") in refs]
    counts = _counts(report, findings, [])
    why = [f"{path.name} was not merged: the guard's audit of its inputs is shown."]
    if refused is not None and refused.guard.get("refused"):
        why[0] = f"{path.name} was refused by the guard ({refused.guard['refused']}); its inputs' audit:"
    why += [f"{_name(ref)}: {v}" for ref, v in zip(refs, verdicts, strict=True)]
    cut = -1 if verdict == Verdict.CLEAN else None
    why += _why(verdict, None, counts, report.get("thresholds") or {})[:cut]
    return Report(
        kind="config",
        subject=path.name,
        ref=str(path.resolve()),
        verdict=verdict,
        verdict_via=None,
        why=why,
        counts=counts,
        findings=_ordered(findings),
        audit_id=stored.audit_id,
        audited_at=stored.created_at,
        origins=_origins(findings, path.name),
        config_text=config.text,
        guard=refused.guard if refused else {},
        datasets=_unique_datasets([d for e in entries for d in e.get("datasets") or []]),
        problems=list(report.get("problems") or []),
        thresholds=report.get("thresholds") or {},
    )


def dataset_report(db: Database, ref: str) -> Report:
    """A dataset: its findings in the newest audit that read it, and the verdict of the subject that
    declared it (the dataset itself for `audit --dataset`)."""
    candidates = [ref]
    if Path(ref).expanduser().exists():
        candidates.insert(0, str(Path(ref).expanduser().resolve()))
    stored = next((s for s in map(lambda r: audit_of_dataset(db, r), candidates) if s), None)
    if stored is None:
        raise DatabaseError(
            f"dataset {ref!r} is not in any audit in the database",
            hint="audit a model that declares it through `mergeguard merge`, or check the path",
        )
    report = stored.report
    key = next(r for r in candidates if audit_of_dataset(db, r) is not None)
    findings = [f for f in report.get("findings", []) if f.get("dataset") == key]
    seen: set[tuple[Any, ...]] = set()
    unique = []
    for f in findings:  # one finding per (row, item) even when several models declare the dataset
        mark = (f.get("example"), f.get("benchmark"), f.get("item"))
        if mark not in seen:
            seen.add(mark)
            unique.append(f)
    owners = [
        m
        for m in report.get("models", [])
        if m.get("model") == key or any(d.get("ref") == key for d in m.get("datasets") or [])
    ]
    own = next((m for m in owners if m.get("model") == key), None)
    declared_by = {
        d.get("declared_by") for m in owners for d in m.get("datasets") or [] if d.get("ref") == key
    }
    declarer = own or next((m for m in owners if m.get("model") in declared_by), None)
    holder = declarer or (owners[0] if owners else {})
    verdict = holder.get("verdict", Verdict.UNAUDITED)
    counts = _counts(report, unique, (own or {}).get("rates") or [])
    if own:
        why = []
    elif declarer:
        why = [f"Verdict of {_name(declarer.get('model'))}, which declares this dataset."]
    else:
        why = [f"Verdict of {_name(holder.get('model'))}, whose lineage includes this dataset."]
    return Report(
        kind="dataset",
        subject=_name(key),
        ref=key,
        verdict=verdict,
        verdict_via=None,
        why=why + _why(verdict, None, counts, report.get("thresholds") or {}),
        counts=counts,
        findings=_ordered(unique),
        audit_id=stored.audit_id,
        audited_at=stored.created_at,
        problems=list(report.get("problems") or []),
        thresholds=report.get("thresholds") or {},
    )


def build_report(db: Database, target: str, suite: str | None = None) -> Report:
    """A model in the database, a merge config (.yml/.yaml file), or a dataset that an audit read."""
    if suite is not None and suite not in ("v1", "v2"):
        raise UsageError(f"unknown suite {suite!r}", hint="use v1 or v2")
    path = Path(target).expanduser()
    if path.suffix in (".yml", ".yaml") and path.is_file():
        return config_report(db, path, suite)
    try:
        find_model(db, target)
    except DatabaseError as error:
        if path.exists() and not (path / "config.json").is_file():
            return dataset_report(db, target)
        if "not in the database" not in error.message:
            raise
        try:
            return dataset_report(db, target)
        except DatabaseError:
            raise error from None
    return model_report(db, target, suite)
