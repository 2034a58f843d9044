"""`mergeguard probe MODEL... --benchmark B`: did a model see a benchmark's test set? (the model-side probe)

Exit status: 0 no signal, 1 suspect on some benchmark, 2 any error, and `inconclusive` too (no reference
model, too few items): like `audit`, the probe fails closed, a script never reads "could not test" as clean.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from mergeguard import auditor  # its probe module (numpy, the benchmarks) loads when a probe runs
from mergeguard.auditor.report import AuditReport, ProbeVerdict, Verdict
from mergeguard.cli.common import (
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
    quiet_stderr,
    split_names,
    table_options,
)
from mergeguard.db import open_db, record_probe
from mergeguard.errors import MergeguardError, ProbeError

if TYPE_CHECKING:
    from mergeguard.auditor.probe import ProbeReport

STYLE = {
    ProbeVerdict.SUSPECT: "bold red",
    ProbeVerdict.NO_SIGNAL: "green",
    ProbeVerdict.INCONCLUSIVE: "yellow",
}
SCOPES = ("missing", "all")


# `audit --probe` and `merge --probe`: the probe of the inputs, on the audit's benchmarks.
def _scope(value: str | None) -> str | None:
    """Check `--probe SCOPE` while parsing, before any audit or merge work starts."""
    if value is not None and value not in SCOPES:
        raise ProbeError(f"--probe {value!r} is not a scope", hint="use --probe missing or --probe all")
    return value


PROBE = typer.Option(
    None,
    "--probe",
    callback=_scope,
    help="Also run the model-side probe: `missing` (models with no declared data) or `all` models.",
)
PROBE_LIMIT = typer.Option(None, "--probe-limit", min=1, help="Probe each benchmark's first N items.")
PROBE_HELDOUT = typer.Option(
    [],
    "--probe-heldout",
    help="BENCH=SPLIT or BENCH=FILE: held-out items as the probe's second control (probe --heldout).",
)
ALLOW_SUSPECT = typer.Option(False, "--allow-suspect", help="Merge inputs the probe finds suspect anyway.")


def parse_sources(values: Sequence[str]) -> dict[str, str]:
    """`BENCH=SOURCE` strings (the repeated --heldout / --probe-heldout) as {benchmark: source}."""
    sources: dict[str, str] = {}
    for value in values:
        name, sep, source = value.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise ProbeError(
                f"--heldout {value!r} is not BENCH=SOURCE",
                hint="use e.g. --heldout gsm8k=train (a split) or --heldout gsm8k=rows.jsonl (a file)",
            )
        sources[name.strip()] = source.strip()
    return sources


def guard_probe_options(
    scope: str | None, audit_options: Any, device: str, limit: int | None = None, heldout: Sequence[str] = ()
) -> Any:
    """ProbeOptions for `--probe SCOPE` (None without it), on the benchmarks the audit reads."""
    if scope is None:
        if heldout:
            raise ProbeError("--probe-heldout needs --probe", hint="add --probe missing (or all)")
        return None
    if scope not in SCOPES:
        raise ProbeError(f"--probe {scope!r} is not a scope", hint="use --probe missing or --probe all")
    if not audit_options.benchmarks:
        raise ProbeError("--probe needs the benchmarks to probe", hint="pass --benchmark NAME (repeatable)")
    return auditor.ProbeOptions(
        benchmarks=list(audit_options.benchmarks),
        benchmarks_dir=audit_options.benchmarks_dir,
        benchmark_specs=list(audit_options.custom_specs or []),
        device=device,
        limit=limit,
        heldout=parse_sources(heldout),
    )


def audit_probe(
    scope: str | None,
    report: AuditReport,
    audit_options: Any,
    device: str,
    db: Path | None,
    limit: int | None = None,
    heldout: Sequence[str] = (),
) -> list[ProbeReport]:
    """`audit --probe SCOPE`: probe the audited models with no declared data (`missing`) or all of them;
    stored when the audit has a database."""
    options = guard_probe_options(scope, audit_options, device, limit, heldout)
    if options is None:
        return []
    models = [
        model
        for model, verdict in report.verdicts().items()
        if model and (scope == "all" or verdict == Verdict.UNDECLARED)
    ]
    reports = auditor.probe_models(models, options) if models else []
    if db is not None and reports:
        store = open_db(db)
        for item in reports:
            record_probe(store, item.to_dict())
    return reports


def exit_status(reports: list[Any]) -> int:
    """1 when any model is suspect (the evidence matters most), 2 when any is inconclusive, else 0."""
    verdicts = {report.verdict for report in reports}
    return 1 if ProbeVerdict.SUSPECT in verdicts else 2 if ProbeVerdict.INCONCLUSIVE in verdicts else 0


def render(reports: list[Any]) -> Any:
    """One rich table: model, benchmark, items, verdict, p-value (and the tests' behind it), effect,
    the answer window it came from (tokens), reference."""
    from rich.table import Table  # rich: imported when drawing (mergeguard.lazy)

    table = Table(
        title="model-side probe (gain over the reference, against borrowed questions)", title_justify="left"
    )
    numeric = ("items", "p-value", "as is / amplified / held-out", "effect", "window")
    for column in (
        "model",
        "benchmark",
        "items",
        "verdict",
        "p-value",
        "as is / amplified / held-out",
        "effect",
        "window",
        "reference",
    ):
        table.add_column(column, justify="right" if column in numeric else "left")
    for report in reports:
        for probe in report.benchmarks:
            verdict = f"[{STYLE[probe.verdict]}]{probe.verdict}[/]" + (
                f" ({probe.reason})" if probe.reason else ""
            )
            table.add_row(
                Path(report.model).name,
                probe.benchmark,
                str(probe.n_items),
                verdict,
                _p(probe.p_value),
                f"{_p(probe.p_plain)} / {_p(probe.p_amplified)} / {_p(probe.p_heldout)}",
                "—" if probe.effect is None else f"{probe.effect:+.2f}",
                "—" if probe.window is None else str(probe.window),
                f"{report.reference} ({report.reference_source})" if report.reference else "none",
            )
    return table


def _p(value: float | None) -> str:
    return "—" if value is None else f"{value:.2g}"


PROBE_FLAGS: OptionTable = {  # ProbeOptions fields, under the same names
    "reference": (
        str | None,
        typer.Option(
            None, "--reference", help="The reference model (default: the base from the model's card/lineage)."
        ),
    ),
    "limit": (int | None, typer.Option(None, "--limit", min=1, help="Probe each benchmark's first N items.")),
    "alpha": (float, typer.Option(0.001, "--alpha", help="Significance level of the benchmark test.")),
    "min_items": (int, typer.Option(20, "--min-items", min=2, help="Fewer items scored: inconclusive.")),
    "dtype": (str, typer.Option("auto", "--dtype", help="auto, float32, bfloat16 or float16.")),
    "batch_size": (
        int,
        typer.Option(
            8,
            "--batch-size",
            min=1,
            help="Items per forward pass (their controls follow on its key-value cache).",
        ),
    ),
    "max_tokens": (int, typer.Option(512, "--max-tokens", min=8, help="Tokens kept per item.")),
    "controls": (
        int,
        typer.Option(4, "--controls", min=1, help="Borrowed questions per item (the control)."),
    ),
    "seed": (int, typer.Option(0, "--seed", help="Seed of the controls' shuffle.")),
    "amplify": (
        float,
        typer.Option(
            2.0,
            "--amplify",
            min=1.0,
            help="Also test reference + FACTOR x (model - reference): undoes a merge's dilution (1: off).",
        ),
    ),
    "threads": (
        int | None,
        typer.Option(None, "--threads", min=1, help="CPU threads for torch (default: all)."),
    ),
    "trust_remote_code": (
        bool,
        typer.Option(
            False, "--trust-remote-code", help="Let a model's own code (auto_map) run: only code you trust."
        ),
    ),
}
ROW_HEADERS = [
    "model",
    "benchmark",
    "items",
    "verdict",
    "reason",
    "p_value",
    "effect",
    "reference",
    "p_plain",
    "p_amplified",
    "window",
    "p_heldout",
    "heldout_items",
]


@app.command("probe", cls=command_with(table_options("probe", PROBE_FLAGS)))
def probe_command(
    ctx: typer.Context,
    model: list[str] = typer.Argument(..., help="Model folders or hub ids to probe."),
    benchmark: list[str] = typer.Option(
        [], "--benchmark", "-b", help="Benchmarks or suites to probe (repeat or comma separate)."
    ),
    benchmarks_dir: Path | None = typer.Option(None, "--benchmarks-dir", help="Local benchmark test sets."),
    benchmark_spec: list[Path] = typer.Option([], "--benchmark-spec", help="A custom benchmark YAML spec."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
    heldout: list[str] = typer.Option(
        [],
        "--heldout",
        help="BENCH=SPLIT or BENCH=FILE: items of another split as a second control (repeatable).",
    ),
    db: Path | None = typer.Option(
        None, "--db", help="Store the results in this database (else not stored)."
    ),
    fmt: str = format_option(),
    as_json: bool = JSON_ALIAS,
    quiet: bool = QUIET,
) -> None:
    """Test whether models were trained on benchmark test items, from the models themselves.

    Exit status: 0 no signal; 1 suspect on some benchmark; 2 an error, or inconclusive (no reference model,
    too few items: the probe fails closed).

    Example: mergeguard probe ./ft-math --benchmark gsm8k --reference ./base --heldout gsm8k=train
    """
    fmt = output_format(fmt, as_json)
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise ProbeError(f"unknown device {device!r}", hint="use --device cpu or --device cuda")
    flags = options_of(ctx, "probe")
    if not 0 < flags["alpha"] < 1:
        raise ProbeError(f"--alpha {flags['alpha']} is outside (0, 1)", hint="use a level such as 0.001")
    options = auditor.ProbeOptions(
        **flags,
        benchmarks=split_names(benchmark),
        benchmarks_dir=benchmarks_dir,
        benchmark_specs=list(benchmark_spec),
        device=device,
        heldout=parse_sources(heldout),
    )
    try:
        with quiet_stderr(quiet):
            reports = auditor.probe_models(list(model), options)
    except MergeguardError as error:
        if error.exit_code == 2:
            raise
        raise ProbeError(error.message, hint=error.hint) from error
    if db is not None:
        store = open_db(db)
        for report in reports:
            record_probe(store, report.to_dict())
    _show(reports, fmt)
    if not quiet:
        for report in reports:
            for problem in report.problems:
                typer.echo(f"note: {Path(report.model).name}: {problem}", err=True)
    raise typer.Exit(_exit_status_said(reports))


def _show(reports: list[ProbeReport], fmt: str) -> None:
    """The reports on stdout: the rich table, `reports_json`'s document, or a row per model and benchmark."""
    from rich.console import Console

    if fmt == "json":
        typer.echo(auditor.reports_json(reports))
    elif fmt in ("csv", "markdown"):
        emit_rows(None, ROW_HEADERS, rows(reports), fmt)
    else:
        Console(highlight=False, soft_wrap=True).print(render(reports))


def rows(reports: list[ProbeReport]) -> list[list[Any]]:
    """One row per model and benchmark, for --format csv and markdown (ROW_HEADERS)."""
    return [
        [r.model, p.benchmark, p.n_items, p.verdict, p.reason, p.p_value, p.effect, r.reference, p.p_plain]
        + [p.p_amplified, p.window, p.p_heldout, p.heldout_items]
        for r in reports
        for p in r.benchmarks
    ]


def _exit_status_said(reports: list[ProbeReport]) -> int:
    """The exit status; an inconclusive probe (2) says why on stderr, in the one error line."""
    status = exit_status(reports)
    if status == 2:
        reasons = sorted(
            {p.reason for r in reports for p in r.benchmarks if p.verdict == ProbeVerdict.INCONCLUSIVE}
        )
        print_error(
            ProbeError(
                f"probe inconclusive ({'; '.join(reasons)})", hint="pass --reference REF or more items"
            )
        )
    return status
