"""The guarded merge: audit every input before any weight is read, refuse contamination, record everything.

This is the flow `mergeguard merge` runs (see the README's Architecture section):

    config ─► audit the inputs (or reuse a stored audit of the same inputs) ─► refuse if contaminated
           ─► family check ─► merge ─► record the merge, its lineage and the verdict it inherits

The auditor, the merge engine and the database stay unaware of each other; this module is the only place
that knows all three.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergeguard import __version__
from mergeguard.auditor.report import CLEAN, CONTAMINATED, INCOMPLETE, UNDECLARED, UNREAD, UNREADABLE
from mergeguard.errors import MergeguardError, RefusalError

UNAUDITED = "unaudited"  # a merge's verdict under --no-audit (the auditor's verdicts are in auditor.report)


@dataclass
class GuardOptions:
    """What the guard checks and what the user chose to override."""

    audit: Any = None  # mergeguard.auditor.AuditOptions; None: the defaults
    no_audit: bool = False
    allow_contaminated: bool = False
    allow_unrelated: bool = False
    db_path: Path | None = None
    probe: Any = None  # auditor.probe.ProbeOptions (None: no probe), for the inputs `probe_scope` names
    probe_scope: str = "missing"  # "missing": inputs with no declared data (undeclared); "all": every input
    allow_suspect: bool = False


@dataclass
class InputAudit:
    """The audit of a merge's inputs: the report as JSON, where it is stored, and whether it was reused."""

    report: dict[str, Any]
    audit_id: int | None
    reused: bool

    def verdicts(self) -> dict[str, str]:
        return {m["model"]: m["verdict"] for m in self.report.get("models", []) if m.get("kind") == "model"}

    @property
    def contaminated(self) -> list[str]:
        return [model for model, verdict in self.verdicts().items() if verdict == CONTAMINATED]

    @property
    def undeclared(self) -> list[str]:
        return [model for model, verdict in self.verdicts().items() if verdict == UNDECLARED]

    @property
    def unread(self) -> list[str]:
        """Inputs whose declared data could not be read completely: the audit cannot vouch for them."""
        return [model for model, verdict in self.verdicts().items() if verdict in UNREAD]


@dataclass
class GuardedMerge:
    """Everything a guarded merge did: the audit it passed, the family check, the merge, the records."""

    audit: InputAudit | None
    family: Any  # mergeguard.merge.family.FamilyReport, or None when it could not run
    result: Any  # mergeguard.merge.MergeResult
    verdict: str  # the merged model's: clean | contaminated | undeclared | unaudited
    merge_id: int
    model_id: int
    warnings: list[str] = field(default_factory=list)


class ContaminatedInputsError(RefusalError):
    """A merge refused because an input (or its lineage) was fine-tuned on benchmark test items."""

    def __init__(self, audit: InputAudit) -> None:
        self.audit = audit
        names = ", ".join(audit.contaminated)
        super().__init__(
            f"refusing to merge: contaminated input(s) {names}",
            hint="remove them from the config, or pass --allow-contaminated to merge anyway "
            "(the merge is then marked contaminated)",
        )


class SuspectInputsError(RefusalError):
    """A merge refused because the model-side probe found an input `suspect` (it links benchmark questions
    to their answers more than its base does): refused like a contaminated input."""

    def __init__(self, suspects: dict[str, list[str]]) -> None:
        self.suspects = suspects
        names = ", ".join(f"{model} ({', '.join(benches)})" for model, benches in suspects.items())
        super().__init__(
            f"refusing to merge: the probe finds suspect input(s) {names}",
            hint="remove them from the config, or pass --allow-suspect to merge anyway",
        )


def probe_inputs(models: list[str], audit: InputAudit | None, guard: GuardOptions, db: Any) -> list[Any]:
    """Run the model-side probe on the inputs `guard.probe_scope` names, record each report, return them."""
    from mergeguard.auditor.probe import probe_models
    from mergeguard.db import record_probe

    undeclared = set(audit.undeclared) if audit is not None else set()
    targets = [m for m in dict.fromkeys(models) if guard.probe_scope == "all" or m in undeclared]
    reports = probe_models(targets, guard.probe) if targets else []
    for report in reports:
        record_probe(db, report.to_dict())
    return reports


class UnreadableInputsError(MergeguardError):
    """A merge refused because an input's declared data could not be read completely: the audit cannot
    say it is clean (fail closed). Exit status 2, as `audit` gives for the same inputs."""

    exit_code = 2

    def __init__(self, audit: InputAudit) -> None:
        self.audit = audit
        verdicts = audit.verdicts()
        names = ", ".join(f"{model} ({verdicts[model]})" for model in audit.unread)
        super().__init__(
            f"refusing to merge: the declared training data of {names} could not be read completely",
            hint="repair the dataset files named above, or pass --skip-bad-rows to audit the readable rows "
            "(recorded with the audit)",
        )


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stat_tree(root: Path, limit: int = 5000) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime) of the files under `root`: cheap evidence that nothing changed."""
    out = []
    for path in sorted(root.rglob("*"))[:limit]:
        if path.is_file():
            stat = path.stat()
            out.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return out


def _dataset_state(ref: str, declared_by: Path | None) -> Any:
    """What a dataset reference points at now: a file's hash, a folder's listing, or the bare hub id."""
    for candidate in (Path(ref).expanduser(), (declared_by / ref) if declared_by else None):
        if candidate is None or not candidate.exists():
            continue
        if candidate.is_file():
            return ["file", str(candidate.resolve()), _sha256_file(candidate)]
        return ["dir", str(candidate.resolve()), _stat_tree(candidate)]
    return ["ref", ref]


def _benchmark_state(audit_options: Any) -> Any:
    """The benchmark data an audit would index: local files by listing, custom specs by content."""
    from mergeguard.paths import benchmarks_dir

    folder = benchmarks_dir(audit_options.benchmarks_dir)
    state: dict[str, Any] = {
        "names": audit_options.benchmarks,
        "dir": [str(folder.resolve()), _stat_tree(folder)] if folder and folder.is_dir() else None,
        "custom": [],
    }
    for spec in audit_options.custom_specs or []:
        spec = Path(spec)
        state["custom"].append(
            [str(spec.resolve()), _sha256_file(spec), _stat_tree(spec.parent)]
            if spec.is_file()
            else str(spec)
        )
    return state


def audit_key(models: list[str], audit_options: Any) -> str:
    """A hash of everything an audit of `models` reads: each model's weights fingerprint and card, every
    dataset in its lineage, the benchmark data and the thresholds. Equal keys, equal audits."""
    from mergeguard.auditor import resolve_lineage
    from mergeguard.db.fingerprint import weights_info

    parts: list[Any] = [__version__, audit_options.thresholds, audit_options.text_field]
    if audit_options.only_text_field:
        parts.append(audit_options.only_text_field)
    parts.append(_benchmark_state(audit_options))
    for ref in models:
        lineage = resolve_lineage(ref, audit_options.dataset_overrides)
        folder = lineage.folder
        info = weights_info(folder) if folder is not None else None
        card = folder / "README.md" if folder is not None else None
        parts.append(
            [
                ref,
                info.fingerprint if info else None,
                _sha256_file(card) if card is not None and card.is_file() else None,
                lineage.ancestors,
                [[d.ref, d.declared_by, _dataset_state(d.ref, folder)] for d in lineage.datasets],
            ]
        )
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def audit_inputs(config_path: Path, models: list[str], options: GuardOptions, db: Any) -> InputAudit:
    """Audit the merge's inputs, or hand back the stored audit of exactly the same inputs."""
    from mergeguard.auditor import audit_config
    from mergeguard.db import record_audit, reusable_audit

    key = audit_key(models, options.audit)
    stored = reusable_audit(db, key)
    if stored is not None:
        return InputAudit(report=stored[1], audit_id=stored[0], reused=True)
    report = audit_config(config_path, options.audit).to_json()
    audit_id = record_audit(db, report, tool_version=__version__, input_key=key)
    return InputAudit(report=report, audit_id=audit_id, reused=False)


def merged_verdict(audit: InputAudit | None) -> str:
    """A merge is as bad as its worst input: contaminated, then unreadable or incomplete data, then
    undeclared, else clean."""
    if audit is None:
        return UNAUDITED
    found = set(audit.verdicts().values())
    return next((v for v in (CONTAMINATED, UNREADABLE, INCOMPLETE, UNDECLARED) if v in found), CLEAN)


def inherited_report(output: str, audit: InputAudit) -> dict[str, Any]:
    """The audit report of the merged model: its inputs' findings, each marked with the input it came
    through, and the verdict it inherits. Recorded so the merge is marked in the database too."""
    findings = []
    for finding in audit.report.get("findings", []):
        if finding.get("model") is None:
            continue
        copy = dict(finding)
        copy["inherited_from"] = finding.get("inherited_from") or finding["model"]
        copy["model"] = output
        findings.append(copy)
    datasets = []
    for entry in audit.report.get("models", []):
        for dataset in entry.get("datasets", []):
            datasets.append({**dataset, "inherited_from": dataset.get("inherited_from") or entry["model"]})
    verdict = merged_verdict(audit)
    sources = audit.contaminated if verdict == CONTAMINATED else audit.undeclared
    return {
        **{k: v for k, v in audit.report.items() if k not in ("findings", "models")},
        "contaminated": verdict == CONTAMINATED,
        "findings": findings,
        "models": [
            {
                "model": output,
                "verdict": verdict,
                "datasets": datasets,
                "rates": [],
                "inherited_from": sources,
                "kind": "model",
                "problems": [],
            }
        ],
    }


def card_section(verdict: str, audit: InputAudit | None) -> str:
    """The contamination section of the merged model's card, rendered as `mergeguard card` renders it, with
    what only the merge knows: undeclared data and rows skipped under --skip-bad-rows."""
    if audit is None:
        return "## Contamination\n\nNot audited (merged with `--no-audit`).\n"
    from mergeguard.reports.card import contamination_section
    from mergeguard.reports.gather import inputs_report

    notes = []
    if audit.undeclared:
        notes.append(f"Undeclared training data (not auditable): {', '.join(audit.undeclared)}.")
    skipped = {
        d["ref"]: d["skipped"]
        for entry in audit.report.get("models", [])
        for d in entry.get("datasets", [])
        if d.get("skipped")
    }
    if skipped:  # the audit saw only the readable rows: say so where the verdict is read
        counts = ", ".join(f"{ref} ({n} skipped)" for ref, n in skipped.items())
        notes.append(f"Audited with `--skip-bad-rows`: unreadable rows or files were skipped in {counts}.")
    return contamination_section(inputs_report(audit.report, verdict), notes)


def _scalar(value: Any) -> float | None:
    """A parent's weight for the lineage edge: a scalar as is, a gradient by its mean."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, list):
        numbers = [_scalar(v) for v in value]
        numbers = [n for n in numbers if n is not None]
        return sum(numbers) / len(numbers) if numbers else None
    if isinstance(value, dict) and "value" in value:
        return _scalar(value["value"])
    return None


def _parents(config: Any, result: Any) -> list[tuple[str, str, float | None]]:
    parents = []
    for ref, params in result.parents.items():
        relation = "base" if ref == config.base_model else "merge"
        weight = None
        for key in ("weight", "t", "scale"):
            if key in params:
                weight = _scalar(params[key])
                break
        parents.append((ref.split("+", 1)[0], relation, weight))
    return parents


def guarded_merge(
    config_path: str | Path, out_dir: str | Path, merge_options: Any = None, guard: GuardOptions | None = None
) -> GuardedMerge:
    """Audit, check, merge and record `config_path` into `out_dir` (nothing written when refused)."""
    from mergeguard.merge.numpy_stream import release_workers

    try:
        return _guarded_merge(config_path, out_dir, merge_options, guard)
    finally:
        release_workers()  # started early for a merge that was refused or failed before using them


def _guarded_merge(
    config_path: str | Path, out_dir: str | Path, merge_options: Any, guard: GuardOptions | None
) -> GuardedMerge:
    from mergeguard.auditor import AuditOptions
    from mergeguard.merge import MergeOptions

    guard = guard or GuardOptions()
    guard.audit = guard.audit or AuditOptions()
    merge_options = merge_options or MergeOptions()
    config_path = Path(config_path)
    started = time.perf_counter()
    config, models, db = _prepare(config_path, out_dir, merge_options, guard)
    timings: dict[str, float] = {}
    audit = None
    if not guard.no_audit:
        audit = _audit_or_refuse(config_path, config, out_dir, models, guard, db)
        timings["audit"] = time.perf_counter() - started
    if guard.probe is not None:
        if db is None:
            from mergeguard.db import open_db

            db = open_db(guard.db_path)
        _probe_or_refuse(config, out_dir, models, audit, guard, db)
    verdict = merged_verdict(audit)
    result, family, db = _merge_checking_family(
        config, out_dir, merge_options, guard, db, verdict, audit, timings
    )
    timings["merge"] = result.seconds
    _register_inputs(db, models)  # after the merge: reading the cards would delay its start
    record = _record_merge(db, config, result, merge_options, guard, audit, verdict, family, started, timings)
    warnings = list(result.warnings)
    if audit is not None and audit.undeclared:
        warnings.append(
            f"undeclared training data in {', '.join(audit.undeclared)}: the merge is `undeclared` too"
        )
    return GuardedMerge(audit, family, result, verdict, record.merge_id, record.model_id, warnings)


def _prepare(config_path: Path, out_dir: str | Path, merge_options: Any, guard: GuardOptions) -> tuple:
    """The config validated and the output checked before anything slow; the merge's workers start and the
    database opens meanwhile (not under --no-audit: then it opens while the merge runs)."""
    from mergeguard.merge import config_models, load_config
    from mergeguard.merge.engine import preflight
    from mergeguard.merge.numpy_stream import prestart_workers

    config = load_config(
        config_path, strict=merge_options.strict, allow_unknown_keys=merge_options.allow_unknown_keys
    )
    preflight(config, out_dir, merge_options)
    if merge_options.backend != "torch":
        prestart_workers(config, merge_options.device)  # they start while the database opens
    db = None
    if not guard.no_audit:  # else the database code is imported and opened while the merge runs
        from mergeguard.db import open_db

        db = open_db(guard.db_path)
    return config, config_models(config), db


def _audit_or_refuse(
    config_path: Path, config: Any, out_dir: str | Path, models: list[str], guard: GuardOptions, db: Any
) -> InputAudit:
    """The inputs' audit; a contaminated input (unless allowed) or unread data refuses the merge, recorded."""
    audit = audit_inputs(config_path, models, guard, db)
    refusal: MergeguardError | None = None
    if audit.contaminated and not guard.allow_contaminated:
        refusal = ContaminatedInputsError(audit)
    elif audit.unread:  # no override but --skip-bad-rows, which the audit itself records
        refusal = UnreadableInputsError(audit)
    if refusal is not None:
        names = audit.contaminated or audit.unread
        why = "contaminated" if audit.contaminated else "unreadable data in"
        _refuse(db, config, out_dir, models, f"{why} {_names(names)}", refusal, audit.audit_id)
    return audit


def _probe_or_refuse(
    config: Any,
    out_dir: str | Path,
    models: list[str],
    audit: InputAudit | None,
    guard: GuardOptions,
    db: Any,
) -> None:
    """The model-side probe of the inputs `guard.probe_scope` names; a suspect one refuses the merge unless
    --allow-suspect."""
    suspects = {
        r.model: [b.benchmark for b in r.benchmarks if b.verdict == "suspect"]
        for r in probe_inputs(models, audit, guard, db)
        if r.verdict == "suspect"
    }
    if suspects and not guard.allow_suspect:
        _refuse(
            db, config, out_dir, models, f"probe suspect {_names(suspects)}", SuspectInputsError(suspects)
        )


def _merge_checking_family(
    config: Any,
    out_dir: str | Path,
    merge_options: Any,
    guard: GuardOptions,
    db: Any,
    verdict: str,
    audit: InputAudit | None,
    timings: dict[str, float],
) -> tuple[Any, Any, Any]:
    """run_merge, with the family check and the database open overlapping its compute: (result, family
    report, database). The caller's `on_started` hook still runs and is restored afterwards."""
    from mergeguard.merge import run_merge
    from mergeguard.merge.family import config_family_check

    checked: dict[str, Any] = {}

    def while_merging() -> None:
        """The family check and the database open, overlapping the merge's compute; raising refuses it
        (the merge stops and nothing is written)."""
        family_started = time.perf_counter()
        try:
            family = config_family_check(config, local_files_only=merge_options.local_files_only)
        except MergeguardError:
            family = None  # an unreadable input: the engine reports it with its own message
        if family is not None and not family.related and not guard.allow_unrelated:
            family.raise_if_unrelated()
        checked["family"] = family
        timings["family_check"] = time.perf_counter() - family_started
        from mergeguard.db import open_db, parents_of, record_merge  # noqa: F401  (what the end needs)

        checked["db"] = db or open_db(guard.db_path)
        if callers_hook is not None:
            callers_hook()

    callers_hook = merge_options.on_started
    merge_options.on_started = while_merging
    merge_options.card_section = card_section(verdict, audit)
    merge_options.card_datasets = _lineage_datasets(audit)
    try:
        result = run_merge(config, out_dir, merge_options)
    finally:
        merge_options.on_started = callers_hook
    return result, checked["family"], checked["db"]


def _record_merge(
    db: Any,
    config: Any,
    result: Any,
    merge_options: Any,
    guard: GuardOptions,
    audit: InputAudit | None,
    verdict: str,
    family: Any,
    started: float,
    timings: dict[str, float],
) -> Any:
    """The written merge in the database: its lineage, the audit it inherits and the guard's decisions."""
    from mergeguard.db import record_audit, record_merge, set_merge_guard

    output = str(result.out_dir)
    record = record_merge(
        db,
        output=output,
        config_text=config.text,
        method=result.method,
        parents=_parents(config, result),
        seed=merge_options.random_seed,
        seconds=time.perf_counter() - started,
        timings=timings,
        tool_version=__version__,
    )
    if audit is not None:
        record_audit(db, inherited_report(output, audit), tool_version=__version__)
    set_merge_guard(
        db,
        record.merge_id,
        audit.audit_id if audit else None,
        {
            "audited": audit is not None,
            "reused_audit": bool(audit and audit.reused),
            "verdict": verdict,
            "allow_contaminated": guard.allow_contaminated,
            "allow_unrelated": guard.allow_unrelated,
            "family": family.to_dict() if family is not None else None,
        },
    )
    return record


def _names(refs: Any) -> str:
    """Models as a refusal reason names them: folder names for local paths."""
    return ", ".join(Path(n).name or n for n in refs)


def _refuse(
    db: Any,
    config: Any,
    out_dir: str | Path,
    models: list[str],
    reason: str,
    error: MergeguardError,
    audit_id: int | None = None,
) -> None:
    """Record the refused merge (status 'refused', so `history` shows the guard's decision) with its inputs'
    lineage (shown in `lineage` and `report`), then raise `error`."""
    from mergeguard.db.records import record_refusal

    _register_inputs(db, models)
    record_refusal(
        db,
        output=out_dir,
        config_text=config.text,
        method=getattr(config, "merge_method", None),
        inputs=[ref.split("+", 1)[0] for ref in models],
        reason=reason,
        audit_id=audit_id,
        tool_version=__version__,
    )
    raise error


def _register_inputs(db: Any, models: list[str]) -> None:
    """Record each input with the parents and datasets its card names, so `lineage` shows where the
    inputs came from (fine-tune edges), not only the merge that used them."""
    from mergeguard.db import parents_of, register_model

    for ref in models:
        try:
            if not parents_of(db, ref.split("+", 1)[0]):  # a recorded merge already has its edges
                register_model(db, ref.split("+", 1)[0])
        except MergeguardError:
            continue  # an input the database cannot describe still merges; the engine checks it


def _lineage_datasets(audit: InputAudit | None) -> list[str]:
    """Every dataset the inputs declared or inherited, for the merged model card's `datasets:`."""
    out: list[str] = []
    for entry in audit.report.get("models", []) if audit else []:
        for dataset in entry.get("datasets", []):
            if dataset.get("ref") and dataset["ref"] not in out:
                out.append(dataset["ref"])
    return out
