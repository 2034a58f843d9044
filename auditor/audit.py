"""The audit entry points: models (with their lineage), datasets alone, or a merge config's inputs.

Each dataset is scanned once per audit however many models declare it; findings carry the model and the
ancestor they came through. Nothing here prints: long steps report to `options.progress`. The scans run
on the engine the options name (`mergeguard.auditor.engines`): this process, worker processes, or Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mergeguard.auditor.engines import Engine, open_engine, scan_dataset
from mergeguard.auditor.engines.reading import Scanned
from mergeguard.auditor.index import BenchmarkIndex, build_index
from mergeguard.auditor.lineage import Lineage, config_inputs, resolve_lineage
from mergeguard.auditor.options import AuditOptions
from mergeguard.auditor.report import (
    CLEAN,
    CONTAMINATED,
    INCOMPLETE,
    PARAPHRASE,
    UNDECLARED,
    UNREADABLE,
    AuditReport,
    Finding,
    ModelVerdict,
    benchmark_rates,
)
from mergeguard.auditor.semantic import open_stage
from mergeguard.auditor.semantic import scan_dataset as semantic_scan
from mergeguard.benchmarks.loading import load_benchmarks
from mergeguard.errors import BenchmarkError, MergeguardError
from mergeguard.paths import benchmarks_dir, cache_dir
from mergeguard.progress import ProgressCallback, step

__all__ = ["Scanned", "audit_config", "audit_datasets", "audit_models", "load_benchmark_index"]

EVIDENCE_CHARS = 600


def _callback(options: AuditOptions) -> ProgressCallback | None:
    """The caller's progress callback (None, or a bare True from an older caller: report nothing)."""
    return options.progress if callable(options.progress) else None


def load_benchmark_index(
    options: AuditOptions, progress: ProgressCallback | None = None
) -> tuple[BenchmarkIndex, list[str]]:
    """Load the benchmarks and their index (from the cache when it is warm). Progress goes to `progress`,
    else to the options' callback."""
    loaded, problems = load_benchmarks(
        options.benchmarks, benchmarks_dir(options.benchmarks_dir), list(options.custom_specs)
    )
    if not loaded:
        raise BenchmarkError(
            "no benchmark test set could be loaded" + (f" ({problems[0]})" if problems else ""),
            hint="pass --benchmarks-dir with the test sets, or make the hub reachable",
        )
    index = build_index(
        loaded,
        cache_dir(options.cache_dir),
        options.num_perm,
        ngram=options.ngram,
        progress=progress or _callback(options),
    )
    return index, problems


def _scan(
    ref: str, index: BenchmarkIndex, options: AuditOptions, engine: Engine, stage: Any = None
) -> Scanned:
    """One dataset's scan by the engine, then (when asked) the semantic stage on what it left unexplained."""
    scanned = scan_dataset(ref, index, options, engine, _callback(options))
    if stage is not None:
        explained = {match.example for match in scanned.matches}
        with step(_callback(options), f"semantic {ref}") as counter:
            scanned.paraphrases, stats = semantic_scan(stage, ref, options, explained, counter.advance)
        scanned.semantic = stats.to_json()
    return scanned


def _stage(index: BenchmarkIndex, options: AuditOptions) -> Any:
    """The semantic stage when asked for (its modules, torch included, are imported only then)."""
    if not options.semantic:
        return None
    return open_stage(index, options)


def _semantic_report(scans: list[Scanned], options: AuditOptions) -> dict[str, Any] | None:
    """The stage's model and cost per dataset, and in all (None when it did not run)."""
    if not options.semantic:
        return None
    per = {scan.ref: scan.semantic for scan in scans if scan.semantic is not None}
    return {
        "model": options.embedding_model or "default",
        "judge": options.judge,
        "seconds": round(sum(s["seconds"] for s in per.values()), 3),
        "datasets": per,
    }


def _findings(
    scan: Scanned, dataset: str, model: str | None, inherited_from: str | None, index: BenchmarkIndex
) -> list[Finding]:
    """The scan's findings: its lexical matches, then the semantic stage's (severity `paraphrase`, the
    cosine as score, its evidence under `semantic`)."""

    def finding(item: int, **found: Any) -> Finding:
        ref = index.refs[item]
        shown = index.items[item] if index.items else None
        return Finding(
            model=model,
            dataset=dataset,
            benchmark=ref.benchmark,
            split=ref.split,
            item=ref.index,
            item_id=ref.item_id,
            inherited_from=inherited_from,
            subset=ref.subset,
            item_text=shown.text() if shown is not None else "",
            **found,
        )

    out = []
    for match in scan.matches:
        before, span, after = match.evidence()
        out.append(
            finding(
                match.item,
                example=match.example,
                score=round(match.score, 4),
                severity=match.severity,
                evidence=span[:EVIDENCE_CHARS],
                context_before=before,
                context_after=after,
            )
        )
    for match in scan.paraphrases:
        out.append(
            finding(
                match.item,
                example=match.example,
                score=round(match.score, 4),
                severity=PARAPHRASE,
                evidence=match.text[:EVIDENCE_CHARS],
                semantic=match.evidence_json(),
            )
        )
    return out


def _sizes(index: BenchmarkIndex) -> dict[str, tuple[str, int]]:
    if index.benchmarks:
        return {name: (meta["split"], meta["items"]) for name, meta in index.benchmarks.items()}
    sizes: dict[str, tuple[str, int]] = {}
    for ref in index.refs:
        split, count = sizes.get(ref.benchmark, (ref.split, 0))
        sizes[ref.benchmark] = (split, count + 1)
    return sizes


def _overall_rates(findings: list[Finding], index: BenchmarkIndex, options: AuditOptions) -> dict[str, Any]:
    rows = benchmark_rates(findings, _sizes(index), options.thresholds)
    return {
        r.benchmark: {"split": r.split, "items": r.items, "contaminated": r.contaminated, "rate": r.rate}
        for r in rows
    }


def _verdict(rates: list[Any], scans: list[Scanned]) -> str:
    """Contaminated wins (what was read holds test items); then any dataset not read completely fails
    closed (unreadable, then incomplete); else clean. Skipped bad rows (on request) do not count."""
    if any(r.verdict == CONTAMINATED for r in rates):
        return CONTAMINATED
    statuses = {scan.status for scan in scans}
    return UNREADABLE if UNREADABLE in statuses else INCOMPLETE if INCOMPLETE in statuses else CLEAN


def _problem(scan: Scanned, declared_by: str | None) -> str | None:
    """The report's line for a dataset not read completely (None when it was)."""
    if scan.status not in (INCOMPLETE, UNREADABLE):
        return None
    by = f" (declared by {declared_by})" if declared_by else ""
    return f"dataset {scan.ref}{by} is {scan.status}: {(scan.entry()['reasons'] or ['no text'])[-1]}"


def audit_datasets(dataset_refs: list[str], options: AuditOptions) -> AuditReport:
    """Audit datasets alone (no model): one verdict per dataset, findings with `model` null."""
    if not dataset_refs:
        raise MergeguardError("nothing to audit", hint="give --dataset REF, --model REF or a merge config")
    index, problems = load_benchmark_index(options)
    stage = _stage(index, options)
    findings: list[Finding] = []
    verdicts = []
    scans = []
    with open_engine(index, options) as engine:
        for ref in dataset_refs:
            scan = _scan(ref, index, options, engine, stage)
            scans.append(scan)
            own = _findings(scan, ref, None, None, index)
            findings.extend(own)
            rates = benchmark_rates(own, _sizes(index), options.thresholds)
            problem = _problem(scan, None)
            problems.extend([problem] if problem else [])
            verdicts.append(
                ModelVerdict(
                    model=ref,
                    verdict=_verdict(rates, [scan]),
                    rates=rates,
                    kind="dataset",
                    datasets=[{"ref": ref, "declared_by": None, "inherited_from": None, **scan.entry()}],
                    problems=[problem] if problem else [],
                )
            )
    return _report(findings, verdicts, scans, index, options, problems)


def _model_verdict(
    lineage: Lineage, scanned: dict[str, Scanned], index: BenchmarkIndex, options: AuditOptions
) -> tuple[list[Finding], ModelVerdict]:
    """One model's findings and verdict, from the scans of the datasets its lineage declares."""
    own: list[Finding] = []
    model_problems = []
    for dataset in lineage.datasets:
        scan = scanned[dataset.ref]
        problem = _problem(scan, dataset.declared_by)
        model_problems.extend([problem] if problem else [])
        own.extend(_findings(scan, dataset.ref, lineage.model, dataset.inherited_from, index))
    rates = benchmark_rates(own, _sizes(index), options.thresholds)
    scans = [scanned[d.ref] for d in lineage.datasets]
    verdict = ModelVerdict(
        model=lineage.model,
        verdict=_verdict(rates, scans) if scans else UNDECLARED,
        datasets=[
            {
                "ref": d.ref,
                "declared_by": d.declared_by,
                "inherited_from": d.inherited_from,
                "source": d.source,
                **scanned[d.ref].entry(),
            }
            for d in lineage.datasets
        ],
        rates=rates,
        inherited_from=sorted({d.inherited_from for d in lineage.datasets if d.inherited_from}),
        problems=model_problems,
    )
    return own, verdict


def _report(
    findings: list[Finding],
    verdicts: list[ModelVerdict],
    scans: list[Scanned],
    index: BenchmarkIndex,
    options: AuditOptions,
    problems: list[str],
) -> AuditReport:
    """The report of an audit, models or datasets alike."""
    return AuditReport(
        findings=findings,
        models=verdicts,
        benchmark_rates=_overall_rates(findings, index, options),
        index_hash=index.index_hash,
        thresholds=options.thresholds,
        problems=problems,
        semantic=_semantic_report(scans, options),
    )


def audit_models(model_refs: list[str], options: AuditOptions) -> AuditReport:
    """Audit models: each model's declared datasets and its ancestors' (findings marked with the ancestor).

    A model with no declared dataset anywhere in its lineage is `undeclared`; one whose declared datasets
    could not all be read completely is `unreadable` or `incomplete` (fail closed), unless contaminated.
    Each dataset is scanned once, when the first model declaring it comes.
    """
    if not model_refs:
        raise MergeguardError("nothing to audit", hint="give --model REF, --dataset REF or a merge config")
    lineages = [resolve_lineage(ref, options.dataset_overrides) for ref in model_refs]
    problems: list[str] = [p for lineage in lineages for p in lineage.problems]
    findings: list[Finding] = []
    verdicts: list[ModelVerdict] = []
    scanned: dict[str, Scanned] = {}
    index, bench_problems = load_benchmark_index(options)
    stage = _stage(index, options)
    problems.extend(bench_problems)
    with open_engine(index, options) as engine:
        for lineage in lineages:
            for dataset in lineage.datasets:
                if dataset.ref not in scanned:
                    scanned[dataset.ref] = _scan(dataset.ref, index, options, engine, stage)
                    problem = _problem(scanned[dataset.ref], dataset.declared_by)
                    problems.extend([problem] if problem else [])
            own, verdict = _model_verdict(lineage, scanned, index, options)
            findings.extend(own)
            verdicts.append(verdict)
    return _report(findings, verdicts, list(scanned.values()), index, options, problems)


def audit_config(config_path: Path, options: AuditOptions) -> AuditReport:
    """Audit every input model of a merge config, base included."""
    path = Path(config_path)
    if not path.is_file():
        raise MergeguardError(f"merge config {path} not found", hint="check the path")
    models = config_inputs(path)
    if not models:
        raise MergeguardError(f"merge config {path} names no models", hint="add models: or slices:")
    return audit_models(models, options)
