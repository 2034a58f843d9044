"""The guarded merge: audit every input before any weight is read, refuse contamination, record everything.

This is the flow `mergeguard merge` runs (see the README's Architecture section), one phase per function,
each taking and returning plain data, in the order `_guarded_merge` calls them:

    validate ─► audit (or reuse a stored audit of the same inputs; probe) ─► decide (refuse, recorded)
             ─► merge, with the family check running while it computes ─► record the merge and its verdict

The auditor, the merge engine and the database stay unaware of each other; this module is the only place
that knows all three. The caller's options are copied (`dataclasses.replace`), never changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from mergeguard import __version__, auditor  # auditor: its modules load when an audit runs
from mergeguard.audit_reuse import audit_key
from mergeguard.auditor.options import AuditOptions
from mergeguard.auditor.report import (
    CONTAMINATED,
    UNAUDITED,
    AuditReport,
    ModelVerdict,
    ProbeVerdict,
    Verdict,
)
from mergeguard.db.connection import open_db
from mergeguard.db.queries import parents_of
from mergeguard.db.records import (
    record_audit,
    record_merge,
    record_probe,
    record_refusal,
    register_model,
    reusable_audit,
    set_merge_guard,
)
from mergeguard.errors import MergeguardError, RefusalError
from mergeguard.merge.config import MergeConfig, config_models, load_config
from mergeguard.merge.engine import preflight, run_merge
from mergeguard.merge.family import FamilyReport, config_family_check
from mergeguard.merge.numpy_stream import workers_help_early
from mergeguard.merge.options import MergeOptions, MergeResult
from mergeguard.merge.workers import WorkerPool
from mergeguard.reports.card import contamination_section
from mergeguard.reports.gather import inputs_report

if TYPE_CHECKING:
    from mergeguard.auditor.probe import ProbeOptions, ProbeReport

__all__ = [
    "UNAUDITED",
    "ContaminatedInputsError",
    "GuardOptions",
    "GuardedMerge",
    "InputAudit",
    "SuspectInputsError",
    "UnreadableInputsError",
    "audit_inputs",
    "audit_key",
    "card_section",
    "guarded_merge",
    "inherited_report",
    "merged_verdict",
    "probe_inputs",
]


@dataclass
class GuardOptions:
    """What the guard checks and what the user chose to override."""

    audit: AuditOptions | None = None  # None: the defaults
    no_audit: bool = False
    allow_contaminated: bool = False
    allow_unrelated: bool = False
    db_path: Path | None = None
    probe: ProbeOptions | None = None  # None: no probe, for the inputs `probe_scope` names
    probe_scope: str = "missing"  # "missing": inputs with no declared data (undeclared); "all": every input
    allow_suspect: bool = False


@dataclass
class InputAudit:
    """The audit of a merge's inputs: the report, where it is stored, and whether it was reused. A report
    given as its JSON (`AuditReport.to_json()`, as the database stores it) is read back into the class."""

    report: AuditReport
    audit_id: int | None
    reused: bool

    def __post_init__(self) -> None:
        if isinstance(self.report, dict):
            self.report = AuditReport.from_json(self.report)

    def verdicts(self) -> dict[str, str]:
        return self.report.verdicts()

    @property
    def contaminated(self) -> list[str]:
        return [model for model, verdict in self.verdicts().items() if verdict == Verdict.CONTAMINATED]

    @property
    def undeclared(self) -> list[str]:
        return [model for model, verdict in self.verdicts().items() if verdict == Verdict.UNDECLARED]

    @property
    def unread(self) -> list[str]:
        """Inputs whose declared data could not be read completely: the audit cannot vouch for them."""
        return [model for model in self.report.unread if model in self.verdicts()]


@dataclass
class GuardedMerge:
    """Everything a guarded merge did: the audit it passed, the family check, the merge, the records."""

    audit: InputAudit | None
    family: FamilyReport | None  # None when it could not run
    result: MergeResult
    verdict: str  # the merged model's: clean | contaminated | undeclared | unaudited (a Verdict)
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


# ---------------------------------------------------------------- what the phases hand on


@dataclass(frozen=True)
class MergeRequest:
    """`validate`'s output: the parsed config, its inputs, and copies of the options with defaults set."""

    config: MergeConfig
    models: list[str]
    out_dir: Path
    merge: MergeOptions
    guard: GuardOptions
    audit: AuditOptions


@dataclass(frozen=True)
class Audited:
    """`audit`'s output: the inputs' audit (None under --no-audit) and the probe reports (if asked)."""

    inputs: InputAudit | None
    probes: list[ProbeReport] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class Decision:
    """`decide`'s output: the verdict the merge will carry, or why it is refused (`refusal` set)."""

    verdict: str
    refusal: MergeguardError | None = None
    reason: str = ""  # the refusal as `history` shows it


@dataclass(frozen=True)
class Checked:
    """`check`'s output, run while the merge computes: the family check (None when it could not run) and
    the database, opened meanwhile when no earlier phase needed it."""

    family: FamilyReport | None
    db: Any
    seconds: float


@dataclass(frozen=True)
class Merged:
    """`merge`'s output: the written merge and what its concurrent check found."""

    result: MergeResult
    checked: Checked


# ---------------------------------------------------------------- the guarded merge, phase by phase


def guarded_merge(
    config: str | Path | MergeConfig,
    out_dir: str | Path,
    merge_options: MergeOptions | None = None,
    guard: GuardOptions | None = None,
) -> GuardedMerge:
    """Audit, check, merge and record `config` (a path, or a config `merge.load_config` parsed) into
    `out_dir` (nothing written when refused). The options are read, never changed."""
    with WorkerPool() as pool:  # started early (`validate`); stopped however the merge ends
        return _guarded_merge(config, out_dir, merge_options, guard, pool)


def _guarded_merge(
    config: str | Path | MergeConfig,
    out_dir: str | Path,
    merge_options: MergeOptions | None,
    guard: GuardOptions | None,
    pool: WorkerPool,
) -> GuardedMerge:
    """The phases in order; each takes and returns plain data."""
    started = time.perf_counter()
    request = validate(config, out_dir, merge_options, guard, pool)
    db = _open_early(request)
    audited = audit(request, db, started)
    decision = decide(request, audited)
    if decision.refusal is not None:
        refuse(db, request, decision, audited)
    merged = merge(request, decision, audited, db, pool)
    return record(request, decision, audited, merged, started)


def validate(
    config: str | Path | MergeConfig,
    out_dir: str | Path,
    merge_options: MergeOptions | None,
    guard: GuardOptions | None,
    pool: WorkerPool,
) -> MergeRequest:
    """The config parsed (unless the caller did) and the output checked before anything slow (preflight:
    the output folder, --strict, the device); the merge's workers start meanwhile."""
    options = merge_options or MergeOptions()
    guard = guard or GuardOptions()
    if not isinstance(config, MergeConfig):
        config = load_config(config, allow_unknown_keys=options.allow_unknown_keys)
    preflight(config, out_dir, options)  # the one --strict check
    if options.backend != "torch" and workers_help_early(config, options.device):
        pool.start()  # the workers start while the database opens
    audit_options = guard.audit or AuditOptions()
    return MergeRequest(
        config=config,
        models=config_models(config),
        out_dir=Path(out_dir),
        merge=options,
        guard=replace(guard, audit=audit_options),
        audit=audit_options,
    )


def _open_early(request: MergeRequest) -> Any:
    """The database, when the audit or the probe needs it; else None (it opens while the merge runs)."""
    needed = not request.guard.no_audit or request.guard.probe is not None
    return open_db(request.guard.db_path) if needed else None


def audit(request: MergeRequest, db: Any, started: float) -> Audited:
    """The inputs' audit (reused when stored for the same inputs); then, unless the audit alone refuses
    the merge, the model-side probe of the inputs `probe_scope` names."""
    if request.guard.no_audit:
        inputs, seconds = None, 0.0
    else:
        inputs = audit_inputs(request.models, request.audit, db)
        seconds = time.perf_counter() - started
    probes: list[ProbeReport] = []
    if request.guard.probe is not None and _audit_refusal(request.guard, inputs) is None:
        probes = probe_inputs(request.models, inputs, request.guard, db)
    return Audited(inputs, probes, seconds)


def decide(request: MergeRequest, audited: Audited) -> Decision:
    """Refuse a contaminated input (unless allowed), unread data, or a suspect one (unless allowed); else
    the verdict the merge inherits from its worst input."""
    refusal = _audit_refusal(request.guard, audited.inputs)
    if refusal is not None:
        return refusal
    suspects = {
        r.model: [b.benchmark for b in r.benchmarks if b.verdict == ProbeVerdict.SUSPECT]
        for r in audited.probes
        if r.verdict == ProbeVerdict.SUSPECT
    }
    if suspects and not request.guard.allow_suspect:
        reason = f"probe suspect {_names(suspects)}"
        return Decision(merged_verdict(audited.inputs), SuspectInputsError(suspects), reason)
    return Decision(merged_verdict(audited.inputs))


def _audit_refusal(guard: GuardOptions, inputs: InputAudit | None) -> Decision | None:
    """The audit's own refusal: a contaminated input (unless --allow-contaminated), or data not read
    completely (no override but --skip-bad-rows, which the audit itself records)."""
    if inputs is None:
        return None
    verdict = merged_verdict(inputs)
    if inputs.contaminated and not guard.allow_contaminated:
        reason = f"contaminated {_names(inputs.contaminated)}"
        return Decision(verdict, ContaminatedInputsError(inputs), reason)
    if inputs.unread:
        return Decision(verdict, UnreadableInputsError(inputs), f"unreadable data in {_names(inputs.unread)}")
    return None


def refuse(db: Any, request: MergeRequest, decision: Decision, audited: Audited) -> NoReturn:
    """Record the refused merge (status 'refused', so `history` shows the guard's decision) with its inputs'
    lineage (shown in `lineage` and `report`), then raise the refusal."""
    assert decision.refusal is not None
    _register_inputs(db, request.models)
    record_refusal(
        db,
        output=request.out_dir,
        config_text=request.config.text,
        method=request.config.merge_method,
        inputs=[ref.split("+", 1)[0] for ref in request.models],
        reason=decision.reason,
        audit_id=audited.inputs.audit_id if audited.inputs else None,
        tool_version=__version__,
    )
    raise decision.refusal


def merge(request: MergeRequest, decision: Decision, audited: Audited, db: Any, pool: WorkerPool) -> Merged:
    """run_merge on copies of the options that add the card's contamination section and datasets; the
    family check (`check`) runs once the merge's work is under way, overlapping its compute, and raising
    there stops the merge before anything is written. The caller's own `on_started` still runs."""
    found: list[Checked] = []
    callers_hook = request.merge.on_started

    def while_merging() -> None:
        found.append(check(request, db))
        if callers_hook is not None:
            callers_hook()

    options = replace(
        request.merge,
        on_started=while_merging,
        card_section=card_section(decision.verdict, audited.inputs),
        card_datasets=_lineage_datasets(audited.inputs),
    )
    result = run_merge(request.config, request.out_dir, options, pool=pool)
    return Merged(result, found[0] if found else check(request, db))


def check(request: MergeRequest, db: Any) -> Checked:
    """The family check of the inputs (unrelated ones refuse the merge unless --allow-unrelated), and the
    database opened if no earlier phase did."""
    family_started = time.perf_counter()
    try:
        family = config_family_check(request.config, local_files_only=request.merge.local_files_only)
    except MergeguardError:
        family = None  # an unreadable input: the engine reports it with its own message
    if family is not None and not family.related and not request.guard.allow_unrelated:
        family.raise_if_unrelated()
    seconds = time.perf_counter() - family_started
    return Checked(family, db if db is not None else open_db(request.guard.db_path), seconds)


def record(
    request: MergeRequest, decision: Decision, audited: Audited, merged: Merged, started: float
) -> GuardedMerge:
    """The written merge in the database: its lineage, the audit it inherits and the guard's decisions."""
    db, result, inputs = merged.checked.db, merged.result, audited.inputs
    _register_inputs(db, request.models)  # after the merge: reading the cards would delay its start
    timings = {"audit": audited.seconds} if inputs is not None else {}
    timings |= {"family_check": merged.checked.seconds, "merge": result.seconds}
    output = str(result.out_dir)
    entry = record_merge(
        db,
        output=output,
        config_text=request.config.text,
        method=result.method,
        parents=_parents(request.config, result),
        seed=request.merge.random_seed,
        seconds=time.perf_counter() - started,
        timings=timings,
        tool_version=__version__,
    )
    if inputs is not None:
        record_audit(db, inherited_report(output, inputs), tool_version=__version__)
    guard = _guard_record(request, decision, audited, merged)
    set_merge_guard(db, entry.merge_id, inputs.audit_id if inputs else None, guard)
    warnings = list(result.warnings)
    if inputs is not None and inputs.undeclared:
        names = ", ".join(inputs.undeclared)
        warnings.append(f"undeclared training data in {names}: the merge is `undeclared` too")
    family = merged.checked.family
    return GuardedMerge(inputs, family, result, decision.verdict, entry.merge_id, entry.model_id, warnings)


def _guard_record(
    request: MergeRequest, decision: Decision, audited: Audited, merged: Merged
) -> dict[str, Any]:
    """The guard's decisions as the database keeps them beside the merge."""
    family = merged.checked.family
    return {
        "audited": audited.inputs is not None,
        "reused_audit": bool(audited.inputs and audited.inputs.reused),
        "verdict": decision.verdict,
        "allow_contaminated": request.guard.allow_contaminated,
        "allow_unrelated": request.guard.allow_unrelated,
        "family": family.to_dict() if family is not None else None,
    }


# ---------------------------------------------------------------- the pieces the phases use (public ones too)


def audit_inputs(models: list[str], audit_options: AuditOptions, db: Any) -> InputAudit:
    """Audit the merge's inputs, or hand back the stored audit of exactly the same inputs."""
    key = audit_key(models, audit_options)
    stored = reusable_audit(db, key)
    if stored is not None:
        return InputAudit(report=AuditReport.from_json(stored[1]), audit_id=stored[0], reused=True)
    report = auditor.audit_models(models, audit_options)
    audit_id = record_audit(db, report, tool_version=__version__, input_key=key)
    return InputAudit(report=report, audit_id=audit_id, reused=False)


def probe_inputs(
    models: list[str], audit: InputAudit | None, guard: GuardOptions, db: Any
) -> list[ProbeReport]:
    """Run the model-side probe on the inputs `guard.probe_scope` names, record each report, return them."""
    undeclared = set(audit.undeclared) if audit is not None else set()
    targets = [m for m in dict.fromkeys(models) if guard.probe_scope == "all" or m in undeclared]
    reports = auditor.probe_models(targets, guard.probe) if targets else []
    for report in reports:
        record_probe(db, report.to_dict())
    return reports


def merged_verdict(audit: InputAudit | None) -> str:
    """A merge is as bad as its worst input: contaminated, then unreadable or incomplete data, then
    undeclared, else clean (`unaudited` without an audit)."""
    return UNAUDITED if audit is None else audit.report.merged_verdict()


def inherited_report(output: str, audit: InputAudit) -> AuditReport:
    """The audit report of the merged model: its inputs' findings, each marked with the input it came
    through, and the verdict it inherits. Recorded so the merge is marked in the database too."""
    findings = [
        replace(finding, model=output, inherited_from=finding.inherited_from or finding.model)
        for finding in audit.report.findings
        if finding.model is not None
    ]
    datasets = [
        {**dataset, "inherited_from": dataset.get("inherited_from") or entry.model}
        for entry in audit.report.models
        for dataset in entry.datasets
    ]
    verdict = merged_verdict(audit)
    sources = audit.contaminated if verdict == CONTAMINATED else audit.undeclared
    merged = ModelVerdict(model=output, verdict=verdict, datasets=datasets, inherited_from=sources)
    return replace(audit.report, findings=findings, models=[merged])


def card_section(verdict: str, audit: InputAudit | None) -> str:
    """The contamination section of the merged model's card, rendered as `mergeguard card` renders it, with
    what only the merge knows: undeclared data and rows skipped under --skip-bad-rows."""
    if audit is None:
        return "## Contamination\n\nNot audited (merged with `--no-audit`).\n"
    notes = []
    if audit.undeclared:
        notes.append(f"Undeclared training data (not auditable): {', '.join(audit.undeclared)}.")
    skipped = {
        d["ref"]: d["skipped"] for entry in audit.report.models for d in entry.datasets if d.get("skipped")
    }
    if skipped:  # the audit saw only the readable rows: say so where the verdict is read
        counts = ", ".join(f"{ref} ({n} skipped)" for ref, n in skipped.items())
        notes.append(f"Audited with `--skip-bad-rows`: unreadable rows or files were skipped in {counts}.")
    return contamination_section(inputs_report(audit.report.to_json(), verdict), notes)


def _lineage_datasets(audit: InputAudit | None) -> list[str]:
    """Every dataset the inputs declared or inherited, for the merged model card's `datasets:`."""
    refs = [d.get("ref") for entry in (audit.report.models if audit else []) for d in entry.datasets]
    return list(dict.fromkeys(ref for ref in refs if ref))


def _names(refs: Any) -> str:
    """Models as a refusal reason names them: folder names for local paths."""
    return ", ".join(Path(n).name or n for n in refs)


def _register_inputs(db: Any, models: list[str]) -> None:
    """Record each input with the parents and datasets its card names, so `lineage` shows where the
    inputs came from (fine-tune edges), not only the merge that used them."""
    for ref in models:
        try:
            if not parents_of(db, ref.split("+", 1)[0]):  # a recorded merge already has its edges
                register_model(db, ref.split("+", 1)[0])
        except MergeguardError:
            continue  # an input the database cannot describe still merges; the engine checks it


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


def _parents(config: MergeConfig, result: MergeResult) -> list[tuple[str, str, float | None]]:
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
