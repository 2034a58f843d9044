"""`mergeguard audit`: contamination audit of models' declared datasets (or datasets alone) against the
benchmark test sets. Exit status: 0 clean, 1 contaminated, 2 on any error, including declared data that
could not be read completely (`incomplete`/`unreadable`: the audit fails closed)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import typer

from mergeguard import __version__, auditor  # auditor: its scanning modules load when an audit runs
from mergeguard.auditor.options import EMBEDDING_DTYPES, AuditOptions
from mergeguard.auditor.report import CLEAN, SEVERITY_RANK, UNDECLARED, UNREAD, ProbeVerdict, Verdict
from mergeguard.cli import probe as probe_cli
from mergeguard.cli.check import render_family
from mergeguard.cli.common import (
    DB,
    JSON_ALIAS,
    QUIET,
    OptionTable,
    app,
    command_with,
    emit_rows,
    format_option,
    options_of,
    output_format,
    print_error,
    split_names,
    table_options,
)
from mergeguard.cli.progress_view import progress_view
from mergeguard.db import open_db, record_audit, register_model
from mergeguard.db.render import rounded
from mergeguard.errors import MergeguardError, UsageError
from mergeguard.merge.config import load_config
from mergeguard.merge.family import config_family_check
from mergeguard.progress import ProgressCallback

TOP_EVIDENCE = 3

# The audit's options, shared with `merge` (which audits its inputs first).
TEXT_FIELD = typer.Option(
    None, "--text-field", help="A field to read besides the defaults (every string field), dotted for nested."
)
ONLY_TEXT_FIELD = typer.Option(
    None, "--only-text-field", help="Read only this field's strings as an example's text (dotted for nested)."
)
BENCHMARKS_DIR = typer.Option(None, "--benchmarks-dir", help="Local benchmark test sets.")
BENCHMARK = typer.Option(
    [], "--benchmark", "-b", help="Audit against these benchmarks only (repeat or comma separate)."
)
BENCHMARK_SPEC = typer.Option([], "--benchmark-spec", help="A custom benchmark YAML spec.")
THRESHOLD_RATE = typer.Option(0.01, "--threshold-rate", help="Share of a benchmark's items that fails.")
ALLOW_VERBATIM = typer.Option(
    False, "--allow-verbatim", help="Do not fail on a single verbatim finding (only on the rate)."
)
CACHE_DIR = typer.Option(None, "--cache-dir", help="Where the benchmark index is cached.")
SKIP_BAD_ROWS = typer.Option(
    False,
    "--skip-bad-rows",
    help="Skip unreadable rows and files of a dataset (counted in the report) instead of failing.",
)
SEMANTIC = typer.Option(
    False, "--semantic", help="Also look for paraphrased and translated items (embeddings + evidence)."
)
EMBEDDING_MODEL = typer.Option(
    None, "--embedding-model", help="sentence-transformers model (folder or hub id) for --semantic."
)
EMBEDDING_DTYPE = typer.Option(
    "auto", "--embedding-dtype", help="auto (bfloat16 where the hardware has it), float32 or bfloat16."
)
JUDGE = typer.Option(None, "--judge", help="A local causal LM that confirms close --semantic candidates.")
SEMANTIC_MIN_CHARS = typer.Option(30, "--semantic-min-chars", help="Shorter examples are not embedded.")
WORKERS = typer.Option(None, "--workers", help="Processes that scan the datasets (default: all cores).")
ENGINE = typer.Option("local", "--engine", help="Where the scans run: local (this machine) or ray.")
RAY_ADDRESS = typer.Option(None, "--ray-address", help="A Ray cluster to join (implies --engine ray).")
AUDIT_FLAGS: OptionTable = {  # `audit_options`' keywords: the audit's options, shared with `merge`
    "text_field": (str | None, TEXT_FIELD),
    "benchmarks_dir": (Path | None, BENCHMARKS_DIR),
    "benchmark": (list[str], BENCHMARK),
    "benchmark_spec": (list[Path], BENCHMARK_SPEC),
    "threshold_rate": (float, THRESHOLD_RATE),
    "allow_verbatim": (bool, ALLOW_VERBATIM),
    "cache_dir": (Path | None, CACHE_DIR),
    "skip_bad_rows": (bool, SKIP_BAD_ROWS),
    "semantic": (bool, SEMANTIC),
    "embedding_model": (str | None, EMBEDDING_MODEL),
    "embedding_dtype": (str, EMBEDDING_DTYPE),
    "judge": (str | None, JUDGE),
    "semantic_min_chars": (int, SEMANTIC_MIN_CHARS),
}
VERDICT_COLOURS = {CLEAN: "green", UNDECLARED: "yellow"}  # the others are red


class AuditError(MergeguardError):
    """Any audit failure exits 2, so that CI can tell an error from contamination (1)."""

    exit_code = 2


def split_dataset_options(values: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """`--dataset REF` (audited alone) versus `--dataset MODEL=REF` (an override for MODEL)."""
    plain: list[str] = []
    overrides: dict[str, list[str]] = {}
    for value in values:
        model, sep, ref = value.partition("=")
        if sep and model and ref and not Path(value).exists():
            overrides.setdefault(model, []).append(ref)
        elif sep and not (model and ref):
            raise UsageError(f"--dataset {value!r} is malformed", hint="use --dataset REF or MODEL=REF")
        else:
            plain.append(value)
    return plain, overrides


def audit_options(
    dataset: list[str],
    *,
    text_field: str | None = None,
    benchmarks_dir: Path | None = None,
    benchmark: list[str] | None = None,
    benchmark_spec: list[Path] | None = None,
    threshold_rate: float = 0.01,
    allow_verbatim: bool = False,
    cache_dir: Path | None = None,
    progress: ProgressCallback | None = None,
    skip_bad_rows: bool = False,
    only_text_field: str | None = None,
    semantic: bool = False,
    embedding_model: str | None = None,
    embedding_dtype: str = "auto",
    judge: str | None = None,
    device: str = "cpu",
    semantic_min_chars: int = 30,
) -> tuple[list[str], Any]:
    """The AuditOptions that `audit` and `merge` build from the same flags; also the `--dataset REF`
    values that name no model (audited alone by `audit`, an error for `merge`)."""
    if not 0.0 <= threshold_rate <= 1.0:
        raise UsageError(f"--threshold-rate {threshold_rate} is not a rate", hint="give a number in 0..1")
    if not semantic and (embedding_model or judge or embedding_dtype != "auto"):
        flag = "--embedding-model" if embedding_model else "--judge" if judge else "--embedding-dtype"
        raise UsageError(f"{flag} is for the semantic stage", hint="add --semantic")
    if embedding_dtype not in EMBEDDING_DTYPES:
        raise UsageError(
            f"--embedding-dtype {embedding_dtype!r} is unknown", hint="use auto, float32 or bfloat16"
        )
    if semantic_min_chars < 0:
        raise UsageError(f"--semantic-min-chars {semantic_min_chars} is negative", hint="give 0 or more")
    plain, overrides = split_dataset_options(dataset)
    options = AuditOptions(
        benchmarks=split_names(benchmark) or None,
        benchmarks_dir=benchmarks_dir,
        custom_specs=list(benchmark_spec or []),
        cache_dir=cache_dir,
        threshold_rate=threshold_rate,
        fail_on_verbatim=not allow_verbatim,
        text_field=text_field,
        only_text_field=only_text_field,
        dataset_overrides=overrides,
        progress=progress,
        skip_bad_rows=skip_bad_rows,
        semantic=semantic,
        embedding_model=embedding_model,
        embedding_dtype=embedding_dtype,
        judge=judge,
        device=device,
        semantic_min_chars=semantic_min_chars,
    )
    return plain, options


def parse_show(text: str) -> int | None:
    """`--show N|all`: how many findings to print per model (None: all of them)."""
    if text.strip().lower() == "all":
        return None
    if not text.strip().isdigit():
        raise UsageError(f"--show {text!r} is not a count", hint="give a number or `all`")
    return int(text)


def print_report(report: Any, console: Any, show: int | None = TOP_EVIDENCE) -> None:
    """The audit for the terminal: per model its rates, datasets and strongest findings, then the totals."""
    for verdict in report.models:
        _print_model(report, verdict, console, show)
    _print_totals(report, console)


def _rates_table(verdict: Any) -> Any:
    """One model's per-benchmark rates, titled with its verdict."""
    from rich.markup import escape  # rich: imported when drawing (mergeguard.lazy)
    from rich.table import Table

    colour = VERDICT_COLOURS.get(verdict.verdict, "red")
    title = f"{verdict.kind} {escape(verdict.model)}: [bold {colour}]{verdict.verdict}[/]"
    table = Table(title=title, title_justify="left")
    for column in ("benchmark", "items", "contaminated items", "rate", "worst severity", "verdict"):
        table.add_column(
            column,
            justify="right" if column in ("items", "contaminated items", "rate") else "left",
            overflow="fold",  # a benchmark's name wraps at 80 columns, never ends in an ellipsis
            no_wrap=column == "benchmark",
        )
    for rate in verdict.rates:
        style = "red" if rate.verdict == Verdict.CONTAMINATED else None
        table.add_row(
            rate.benchmark,
            str(rate.items),
            str(rate.contaminated),
            f"{rate.rate:.2%}",
            rate.worst or "-",
            rate.verdict,
            style=style,
        )
    return table


def _print_model(report: Any, verdict: Any, console: Any, show: int | None) -> None:
    """One model: its rates, the datasets read (and how), warnings, and its first `show` findings."""
    from rich.markup import escape

    console.print(_rates_table(verdict))
    if verdict.datasets:
        for d in verdict.datasets:
            via = f" (inherited from {d['inherited_from']})" if d.get("inherited_from") else ""
            console.print(f"  dataset {escape(d['ref'])}{escape(via)}{_read_status(d)}")
    elif verdict.kind == "model":
        console.print("  no declared datasets in the model's card or lineage: [yellow]undeclared[/]")
    for problem in verdict.problems:
        console.print(f"  [yellow]warning:[/] {escape(problem)}")
    refs = {d["ref"] for d in verdict.datasets} or {verdict.model}
    for row in report.dataset_view():
        if row["dataset"] in refs:
            console.print(f"  {escape(row['dataset'])}: {escape(row['summary'])}")
    mine = [f for f in report.findings if (f.model or f.dataset) == verdict.model]
    for finding in sorted(mine, key=lambda f: (-SEVERITY_RANK[f.severity], -f.score))[:show]:
        _print_finding(finding, console)
    if show is not None and len(mine) > show:
        console.print(f"\n  … {len(mine) - show} more findings (--show all lists them)")
    console.print()


def _print_finding(finding: Any, console: Any) -> None:
    """A finding: the benchmark item, the semantic evidence if any, and the training text highlighted."""
    from rich.markup import escape

    where = f" via {finding.inherited_from}" if finding.inherited_from else ""
    console.print(
        f"\n  [bold]{finding.benchmark}[/] {finding.split} item {finding.item} "
        f"({finding.severity}, score {finding.score:.2f}) in {escape(finding.dataset)} "
        f"example {finding.example}{escape(where)}"
    )
    console.print(f"    benchmark: {escape(finding.item_text[:300])}", highlight=False)
    if finding.semantic:
        shown = escape(_semantic_evidence(finding.semantic))
        console.print(f"    evidence:  {shown}", highlight=False)
    span = f"[black on yellow]{escape(finding.evidence)}[/]"
    before, after = escape(finding.context_before), escape(finding.context_after)
    console.print(f"    training:  …{before}{span}{after}…", highlight=False)


def _print_totals(report: Any, console: Any) -> None:
    """The semantic stage's cost, the report's warnings and the one-line outcome."""
    from rich.markup import escape

    if report.semantic is not None:
        done = report.semantic.get("datasets", {}).values()
        embedded = sum(d["embedded"] for d in done)
        examples = sum(d["examples"] for d in done)
        glossed = sum(d.get("glossed", 0) for d in done)
        console.print(
            f"semantic stage: {examples} examples, {embedded} embedded, "
            + (f"{glossed} read through the Chinese dictionary, " if glossed else "")
            + f"{report.semantic['seconds']:.1f} s (model {escape(str(report.semantic['model']))})"
        )
    for problem in report.problems:  # the first clause; --json has the whole message with its fix
        console.print(f"[yellow]warning:[/] {escape(problem.split(';')[0])}")
    if report.contaminated:
        status = "[bold red]contamination found[/]"
    elif report.unread:
        status = f"[bold red]not auditable[/]: data not read completely ({escape(', '.join(report.unread))})"
    else:
        status = "[bold green]no contamination[/]"
    console.print(f"{status} ({len(report.findings)} findings; threshold {report.thresholds['rate']:.2%})")


@app.command("audit", cls=command_with(table_options("audit", AUDIT_FLAGS)))
def audit_command(
    ctx: typer.Context,
    config: Path | None = typer.Argument(None, help="A merge config: audit every input model and the base."),
    model: list[str] = typer.Option([], "--model", "-m", help="A model (folder or hub id) to audit."),
    dataset: list[str] = typer.Option(
        [], "--dataset", "-d", help="A dataset to audit alone (REF), or MODEL=REF to set a model's datasets."
    ),
    only_text_field: str | None = ONLY_TEXT_FIELD,
    fmt: str = format_option(),
    as_json: bool = JSON_ALIAS,
    show: str = typer.Option("3", "--show", help="Findings to print per model: a number, or all."),
    quiet: bool = QUIET,
    db: Path | None = DB,
    device: str = typer.Option("cpu", "--device", help="Device of the --semantic models (cpu, cuda)."),
    probe: str | None = probe_cli.PROBE,
    probe_limit: int | None = probe_cli.PROBE_LIMIT,
    probe_heldout: list[str] = probe_cli.PROBE_HELDOUT,
    workers: int | None = WORKERS,
    engine: str = ENGINE,
    ray_address: str | None = RAY_ADDRESS,
) -> None:
    """Audit models' declared fine-tune datasets against benchmark test sets; the audit is stored in the
    database, with each model's card `base_model:` as its parent.

    Exit status: 0 clean; 1 contaminated, or suspect to --probe (a refusal); 2 an error, or a declared
    dataset not read completely (the audit fails closed).

    Example: mergeguard audit --model ./ft-math --benchmark gsm8k,arc_challenge --show all
    """
    fmt = output_format(fmt, as_json)
    shown = parse_show(show)
    flags = {**options_of(ctx, "audit"), "only_text_field": only_text_field, "device": device}
    try:
        plain, options = audit_options(dataset, **flags)
        engine = "ray" if ray_address else engine
        options = replace(options, workers=workers, engine=engine, ray_address=ray_address)
        with progress_view(not (quiet or fmt != "table")) as callback:
            report = _audit(config, list(model), plain, replace(options, progress=callback))
    except MergeguardError as error:
        if error.exit_code == 2:
            raise
        raise AuditError(error.message, hint=error.hint) from error
    record_report(db, report)
    probes = probe_cli.audit_probe(probe, report, options, device, db, probe_limit, probe_heldout)
    family = _family(config) if config is not None else None
    _show(report, family, probes if probe is not None else None, fmt, shown)
    status = exit_status(report)
    if status == 2:
        print_error(unread_error(report))
    suspect = any(r.verdict == ProbeVerdict.SUSPECT for r in probes)
    raise typer.Exit(1 if suspect and status == 0 else status)


def _semantic_evidence(evidence: dict[str, Any]) -> str:
    """One line: why a paraphrase finding was confirmed."""
    cosine = evidence.get("cosine")
    parts = [str(evidence.get("reason"))]
    if isinstance(cosine, (int, float)):
        parts[0] += f", cosine {cosine:.2f}"
    if isinstance(evidence.get("coverage"), (int, float)):
        parts.append(f"coverage {evidence['coverage']:.2f}")
    if evidence.get("numbers"):
        total = evidence.get("item_numbers")
        of = f" of {total}" if isinstance(total, int) and total > len(evidence["numbers"]) else ""
        parts.append(f"numbers {', '.join(evidence['numbers'])}{of}")  # "of 4": the item holds more
    if evidence.get("answer"):
        parts.append(f"final answer {evidence['answer']}")
    if evidence.get("choices"):
        gold = "gold + " if evidence.get("gold_choice") else ""
        parts.append(f"choices {gold}{len(evidence['choices'])}")
    if evidence.get("rare_words"):
        parts.append(f"rare words {', '.join(evidence['rare_words'][:6])}")
    if evidence.get("judge") is not None:
        parts.append(f"judge {evidence['judge']:.2f}")
    return "; ".join(parts)


def record_report(db: Path | None, report: Any) -> None:
    """Store the audit, and each audited model with the parents and datasets its card names (so
    `leaderboard` and `lineage` show where a fine-tune came from)."""
    store = open_db(db)
    for verdict in report.models:
        if verdict.kind == "model":
            register_model(store, verdict.model.split("+", 1)[0])
    record_audit(store, report, tool_version=__version__)


def rate_rows(report: Any) -> tuple[list[str], list[list[Any]]]:
    """The audit as one table, a row per model and benchmark (for --format csv and markdown)."""
    headers = ["model", "kind", "benchmark", "items", "contaminated", "rate", "worst", "verdict"]
    rows = [
        [v.model, v.kind, r.benchmark, r.items, r.contaminated, round(r.rate, 6), r.worst, r.verdict]
        for v in report.models
        for r in v.rates
    ]
    return headers, rows


def exit_status(report: Any) -> int:
    """1 contaminated (the evidence matters most), 2 data not read completely (fail closed), else 0."""
    return 1 if report.contaminated else 2 if report.unread else 0


def unread_error(report: Any) -> AuditError:
    """The one-line error for an audit that could not read its data completely: the first problem."""
    problem = next((p for m in report.models if m.verdict in UNREAD for p in m.problems), "")
    message, _, hint = problem.partition("; ")
    return AuditError(
        f"cannot audit {', '.join(report.unread)}: {message or 'data not read completely'}",
        hint=hint or "repair the data, or pass --skip-bad-rows to audit the readable rows",
    )


def _read_status(dataset: dict[str, Any]) -> str:
    """How much of a dataset was read, for the text report (nothing when all of it was)."""
    from rich.markup import escape

    status = dataset.get("status")
    if status in (None, "complete"):
        return ""
    reasons = dataset.get("reasons") or []
    why = f": {escape(reasons[-1])}" if reasons else ""
    if status == "skipped":
        return f" ({dataset.get('examples', 0)} rows read, [yellow]{dataset['skipped']} skipped[/]{why})"
    return f" [bold red]{status}[/] ({dataset.get('examples', 0)} rows read; the warning below says why)"


def _audit(config: Path | None, models: list[str], plain: list[str], options: Any) -> Any:
    """The one audit the arguments ask for: a merge config's inputs, models, or datasets alone."""
    if config is not None and (models or plain):
        raise UsageError("give a merge config or --model/--dataset, not both", hint="run two audits")
    if config is not None:
        return auditor.audit_config(config, options)
    if models:
        if plain:
            raise UsageError(
                "--dataset REF with --model audits nothing for the model",
                hint="write --dataset MODEL=REF to give a model's datasets",
            )
        return auditor.audit_models(models, options)
    if plain:
        return auditor.audit_datasets(plain, options)
    raise UsageError("nothing to audit", hint="give a merge config, --model REF or --dataset REF")


def _show(report: Any, family: Any, probes: list[Any] | None, fmt: str, shown: int | None) -> None:
    """The audit on stdout in `fmt`, with the config's family check and the probe (None: not asked for)."""
    from rich.console import Console

    if fmt in ("csv", "markdown"):
        emit_rows(None, *rate_rows(report), fmt)
    elif fmt == "json":
        payload = report.to_json()
        if family is not None:
            payload["family"] = family.to_dict()
        if probes is not None:
            payload["probe"] = [r.to_dict() for r in probes]
        typer.echo(json.dumps(rounded(payload), ensure_ascii=False))
    else:
        console = Console(highlight=False)
        print_report(report, console, shown)
        if family is not None:
            console.print(render_family(family))
        if probes:
            console.print(probe_cli.render(probes))


def _family(config: Path) -> Any:
    """The family check of a merge config's inputs (shown beside the audit); None when it cannot run."""
    try:
        return config_family_check(load_config(config, allow_unknown_keys=True))
    except MergeguardError:
        return None  # an unreadable input or config: the audit already said what it could
