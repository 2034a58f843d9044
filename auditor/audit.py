"""The audit entry points: models (with their lineage), datasets alone, or a merge config's inputs.

Each dataset is scanned once per audit however many models declare it; findings carry the model and the
ancestor they came through. Nothing here prints except an optional progress bar on stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mergeguard.auditor.datasets import dataset_texts
from mergeguard.auditor.detect import Match, scan_examples
from mergeguard.auditor.index import BenchmarkIndex, build_index
from mergeguard.auditor.lineage import config_inputs, resolve_lineage
from mergeguard.auditor.options import AuditOptions
from mergeguard.auditor.report import (
    CLEAN,
    CONTAMINATED,
    UNDECLARED,
    AuditReport,
    Finding,
    ModelVerdict,
    benchmark_rates,
)
from mergeguard.errors import BenchmarkError, MergeguardError
from mergeguard.progress import progress_bar

EVIDENCE_CHARS = 600


def load_benchmark_index(options: AuditOptions, bar: Any = None) -> tuple[BenchmarkIndex, list[str]]:
    """Load the benchmarks and their index (from the cache when it is warm)."""
    from mergeguard.benchmarks.loading import load_benchmarks
    from mergeguard.paths import benchmarks_dir, cache_dir

    loaded, problems = load_benchmarks(
        options.benchmarks, benchmarks_dir(options.benchmarks_dir), list(options.custom_specs)
    )
    if not loaded:
        raise BenchmarkError(
            "no benchmark test set could be loaded" + (f" ({problems[0]})" if problems else ""),
            hint="pass --benchmarks-dir with the test sets, or make the hub reachable",
        )
    task = bar.add_task("indexing benchmarks", total=sum(len(b.items) for b in loaded)) if bar else None

    def advance(n: int) -> None:
        if bar is not None:
            bar.advance(task, n)

    index = build_index(
        loaded, cache_dir(options.cache_dir), options.num_perm, ngram=options.ngram, progress=advance
    )
    return index, problems


def _scan(ref: str, index: BenchmarkIndex, options: AuditOptions, bar: Any) -> list[Match]:
    task = bar.add_task(f"hashing {ref}", total=None) if bar else None

    def advance(n: int) -> None:
        if bar is not None:
            bar.advance(task, n)

    result = scan_examples(
        dataset_texts(ref, options.text_field), index, containment=options.containment, progress=advance
    )
    return result.matches


def _findings(
    matches: list[Match], dataset: str, model: str | None, inherited_from: str | None, index: BenchmarkIndex
) -> list[Finding]:
    out = []
    for match in matches:
        ref = index.refs[match.item]
        before, span, after = match.evidence()
        item = index.items[match.item] if index.items else None
        out.append(
            Finding(
                model=model,
                dataset=dataset,
                example=match.example,
                benchmark=ref.benchmark,
                split=ref.split,
                item=ref.index,
                item_id=ref.item_id,
                score=round(match.score, 4),
                severity=match.severity,
                inherited_from=inherited_from,
                evidence=span[:EVIDENCE_CHARS],
                subset=ref.subset,
                item_text=item.text() if item is not None else "",
                context_before=before,
                context_after=after,
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


def _verdict(rates: list[Any]) -> str:
    return CONTAMINATED if any(r.verdict == CONTAMINATED for r in rates) else CLEAN


def audit_datasets(dataset_refs: list[str], options: AuditOptions) -> AuditReport:
    """Audit datasets alone (no model): one verdict per dataset, findings with `model` null."""
    if not dataset_refs:
        raise MergeguardError("nothing to audit", hint="give --dataset REF, --model REF or a merge config")
    with progress_bar(options.progress) as bar:
        index, problems = load_benchmark_index(options, bar)
        findings: list[Finding] = []
        verdicts = []
        for ref in dataset_refs:
            own = _findings(_scan(ref, index, options, bar), ref, None, None, index)
            findings.extend(own)
            rates = benchmark_rates(own, _sizes(index), options.thresholds)
            verdicts.append(
                ModelVerdict(
                    model=ref,
                    verdict=_verdict(rates),
                    rates=rates,
                    kind="dataset",
                    datasets=[{"ref": ref, "declared_by": None, "inherited_from": None}],
                )
            )
    return AuditReport(
        findings=findings,
        models=verdicts,
        benchmark_rates=_overall_rates(findings, index, options),
        index_hash=index.index_hash,
        thresholds=options.thresholds,
        problems=problems,
    )


def audit_models(model_refs: list[str], options: AuditOptions) -> AuditReport:
    """Audit models: each model's declared datasets and its ancestors' (findings marked with the ancestor).

    A model with no declared dataset anywhere in its lineage (or none that could be read) is `undeclared`.
    """
    if not model_refs:
        raise MergeguardError("nothing to audit", hint="give --model REF, --dataset REF or a merge config")
    lineages = [resolve_lineage(ref, options.dataset_overrides) for ref in model_refs]
    problems: list[str] = [p for lineage in lineages for p in lineage.problems]
    findings: list[Finding] = []
    verdicts: list[ModelVerdict] = []
    scanned: dict[str, list[Match] | None] = {}
    with progress_bar(options.progress) as bar:
        index, bench_problems = load_benchmark_index(options, bar)
        problems.extend(bench_problems)
        for lineage in lineages:
            own: list[Finding] = []
            read = 0
            model_problems = []
            for dataset in lineage.datasets:
                if dataset.ref not in scanned:
                    try:
                        scanned[dataset.ref] = _scan(dataset.ref, index, options, bar)
                    except MergeguardError as error:
                        scanned[dataset.ref] = None
                        problems.append(f"dataset {dataset.ref} (declared by {dataset.declared_by}): {error}")
                matches = scanned[dataset.ref]
                if matches is None:
                    model_problems.append(f"dataset {dataset.ref} could not be read")
                    continue
                read += 1
                own.extend(_findings(matches, dataset.ref, lineage.model, dataset.inherited_from, index))
            findings.extend(own)
            rates = benchmark_rates(own, _sizes(index), options.thresholds)
            verdict = _verdict(rates) if read else UNDECLARED
            verdicts.append(
                ModelVerdict(
                    model=lineage.model,
                    verdict=verdict,
                    datasets=[
                        {
                            "ref": d.ref,
                            "declared_by": d.declared_by,
                            "inherited_from": d.inherited_from,
                            "source": d.source,
                        }
                        for d in lineage.datasets
                    ],
                    rates=rates,
                    inherited_from=sorted({d.inherited_from for d in lineage.datasets if d.inherited_from}),
                    problems=model_problems,
                )
            )
    return AuditReport(
        findings=findings,
        models=verdicts,
        benchmark_rates=_overall_rates(findings, index, options),
        index_hash=index.index_hash,
        thresholds=options.thresholds,
        problems=problems,
    )


def audit_config(config_path: Path, options: AuditOptions) -> AuditReport:
    """Audit every input model of a merge config, base included."""
    path = Path(config_path)
    if not path.is_file():
        raise MergeguardError(f"merge config {path} not found", hint="check the path")
    models = config_inputs(path)
    if not models:
        raise MergeguardError(f"merge config {path} names no models", hint="add models: or slices:")
    return audit_models(models, options)
