"""The audit entry points: models (with their lineage), datasets alone, or a merge config's inputs.

Each dataset is scanned once per audit however many models declare it; findings carry the model and the
ancestor they came through. Nothing here prints except an optional progress bar on stderr.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergeguard.auditor.datasets import ReadLog, dataset_texts
from mergeguard.auditor.detect import Match, scan_examples
from mergeguard.auditor.index import BenchmarkIndex, build_index
from mergeguard.auditor.lineage import Lineage, config_inputs, resolve_lineage
from mergeguard.auditor.options import AuditOptions
from mergeguard.auditor.report import (
    CLEAN,
    COMPLETE,
    CONTAMINATED,
    INCOMPLETE,
    PARAPHRASE,
    SKIPPED,
    UNDECLARED,
    UNREADABLE,
    AuditReport,
    Finding,
    ModelVerdict,
    benchmark_rates,
)
from mergeguard.errors import BenchmarkError, DatasetError, MergeguardError
from mergeguard.progress import progress_bar

EVIDENCE_CHARS = 600


def _ticker(bar: Any, description: str, total: int | None = None) -> Callable[[int], None]:
    """A `progress` callback that advances a new task of `bar` (nothing to advance without a bar)."""
    if bar is None:
        return lambda n: None
    task = bar.add_task(description, total=total)
    return lambda n: bar.advance(task, n)


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
    advance = _ticker(bar, "indexing benchmarks", sum(len(b.items) for b in loaded))
    index = build_index(
        loaded, cache_dir(options.cache_dir), options.num_perm, ngram=options.ngram, progress=advance
    )
    return index, problems


@dataclass
class Scanned:
    """One dataset's scan: its matches and how much of it was read (the verdict fails closed on the rest)."""

    ref: str
    log: ReadLog
    matches: list[Match] = field(default_factory=list)
    examples: int = 0  # rows read
    texts: int = 0  # rows that hold text
    error: str | None = None  # what stopped the read
    paraphrases: list[Any] = field(default_factory=list)  # the semantic stage's matches (when asked)
    semantic: dict[str, Any] | None = None  # its cost on this dataset

    @property
    def status(self) -> str:
        if not self.texts:
            return UNREADABLE  # nothing read, or nothing with text: not clean
        if self.error is not None:
            return INCOMPLETE
        return SKIPPED if self.log.skipped else COMPLETE

    def entry(self) -> dict[str, Any]:
        """What the report says about the read, beside the dataset's ref."""
        reasons = [*self.log.reasons, *([self.error] if self.error else [])]
        return {
            "status": self.status,
            "examples": self.examples,
            "files": self.log.files,  # data files read (0 for a hub id or a save_to_disk folder)
            "skipped": self.log.skipped,
            "reasons": reasons,
        }


def _texts(scanned: Scanned, options: AuditOptions) -> Iterator[str]:
    """The dataset's texts for the scanner. A read error ends the stream (recorded, not raised) so that
    the part read is still scanned; an over-long text is a bad row (yielded empty: numbering holds)."""
    try:
        for text in dataset_texts(
            scanned.ref, options.text_field, log=scanned.log, only_text_field=options.only_text_field
        ):
            scanned.examples += 1
            if len(text) > options.max_line:
                scanned.log.bad(
                    DatasetError(
                        f"dataset {scanned.ref} example {scanned.examples} holds {len(text)} characters "
                        f"(more than {options.max_line})",
                        hint="split it, or pass --skip-bad-rows to skip it",
                    )
                )
                text = ""
            if text and not text.isspace():
                scanned.texts += 1
            yield text
    except DatasetError as error:
        scanned.error = str(error)
        return
    except RecursionError:  # a row nested deeper than Python recurses
        scanned.error = f"dataset {scanned.ref} example {scanned.examples + 1} is nested too deeply"
        return
    if not scanned.texts and not scanned.log.skipped:
        scanned.error = f"dataset {scanned.ref} holds no text ({scanned.examples} rows, none with a string)"


def _scan(ref: str, index: BenchmarkIndex, options: AuditOptions, bar: Any, stage: Any = None) -> Scanned:
    advance = _ticker(bar, f"hashing {ref}")
    scanned = Scanned(ref, ReadLog(ref, skip_bad_rows=options.skip_bad_rows, max_line=options.max_line))
    result = scan_examples(_texts(scanned, options), index, containment=options.containment, progress=advance)
    scanned.matches = result.matches
    if stage is not None:  # the semantic stage, on what the lexical one did not explain
        from mergeguard.auditor.semantic import scan_dataset

        explained = {match.example for match in result.matches}
        semantic_advance = _ticker(bar, f"semantic {ref}")
        scanned.paraphrases, stats = scan_dataset(stage, ref, options, explained, semantic_advance)
        scanned.semantic = stats.to_json()
    return scanned


def _stage(index: BenchmarkIndex, options: AuditOptions) -> Any:
    """The semantic stage when asked for (its modules, torch included, are imported only then)."""
    if not options.semantic:
        return None
    from mergeguard.auditor.semantic import open_stage

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
                score=round(match.cosine, 4),
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
    with progress_bar(options.progress) as bar:
        index, problems = load_benchmark_index(options, bar)
        stage = _stage(index, options)
        findings: list[Finding] = []
        verdicts = []
        scans = []
        for ref in dataset_refs:
            scan = _scan(ref, index, options, bar, stage)
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
    with progress_bar(options.progress) as bar:
        index, bench_problems = load_benchmark_index(options, bar)
        stage = _stage(index, options)
        problems.extend(bench_problems)
        for lineage in lineages:
            for dataset in lineage.datasets:
                if dataset.ref not in scanned:
                    scanned[dataset.ref] = _scan(dataset.ref, index, options, bar, stage)
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
