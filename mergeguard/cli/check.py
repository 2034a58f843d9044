"""`mergeguard check MODEL [--against PARENT ...]`: the post-merge sanity check.

Exit status: 0 ok, 3 degraded, 4 broken, 2 an error (bad input, a model that cannot load), so a script can
tell "could not check" from "checked, and it is broken".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

from mergeguard.cli.common import DB, JSON_ALIAS, QUIET, app, console, format_option, output_format
from mergeguard.cli.progress_view import progress_view
from mergeguard.db import open_db, parents_of, record_check
from mergeguard.db.queries import base_of
from mergeguard.errors import UsageError
from mergeguard.merge.sanity import sanity_check
from mergeguard.refs import resolve_model

DEVICES = ("cpu", "cuda")
STYLE = {"ok": "bold green", "degraded": "bold yellow", "broken": "bold red"}


def _number(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else "inf"


def render(report: Any) -> Any:
    """A rich table of one report: the model and each parent, then the verdict, reasons and samples."""
    from rich.console import Group  # rich: imported when drawing (mergeguard.lazy)
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"sanity check of {report.model}", title_justify="left")
    table.add_column("model", overflow="fold")  # a long parent path wraps, never ends in an ellipsis
    table.add_column("perplexity", justify="right")
    table.add_column("repetition", justify="right")
    table.add_row("this model", _number(report.perplexity), f"{report.repetition:.2f}")
    for parent, value in report.parent_perplexities.items():
        rep = report.parent_repetitions.get(parent, 0.0)
        table.add_row(f"parent {parent}", _number(value), f"{rep:.2f}")
    parts: list[Any] = [table, Text.assemble("verdict: ", (report.verdict, STYLE[report.verdict]))]
    parts += [Text(f"  - {reason}") for reason in report.reasons]
    if report.samples:
        parts.append(Text("greedy samples:"))
        parts += [Text(f"  {sample!r}") for sample in report.samples]
    return Group(*parts)


def render_family(report: Any) -> Any:
    """A rich table of a FamilyReport (for `audit` and `merge`): each pair, its similarity, its verdict."""
    from rich.table import Table

    table = Table(title=f"family check (related at similarity >= {report.threshold:g})", title_justify="left")
    for column in ("model", "compared with", "similarity", "family"):
        table.add_column(column, justify="right" if column == "similarity" else "left", overflow="fold")
    for pair in report.pairs:
        verdict = "[green]related[/]" if pair.related else "[bold red]unrelated[/]"
        table.add_row(
            pair.b, pair.a, f"{pair.similarity:.3f}", verdict + (f" ({pair.note})" if pair.note else "")
        )
    return table


def check_merge(
    out_dir: Any,
    parents: list[Any],
    device: str,
    quiet: bool,
    *,
    trust_remote_code: bool = False,
    base: Any = None,
) -> Any:
    """After `merge --check`: sanity-check the output against its inputs and its base; print the verdict."""
    with progress_view(not quiet) as progress:
        report = sanity_check(
            out_dir,
            list(dict.fromkeys(parents)),
            device=device,
            progress=progress,
            trust_remote_code=trust_remote_code,
            base=base,
        )
    console().print(render(report))
    return report


@app.command("check")
def check_command(
    model: str = typer.Argument(..., help="A model folder or hub id to check."),
    against: list[str] | None = typer.Option(
        None, "--against", help="A parent to compare with (repeat for each parent)."
    ),
    base: str | None = typer.Option(
        None, "--base", help="The merge's base model (default: its `base` parent in the database)."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    max_tokens: int = typer.Option(512, "--max-tokens", help="Tokens of the text sample to score."),
    fmt: str = format_option(choices=("table", "json")),
    as_json: bool = JSON_ALIAS,
    quiet: bool = QUIET,
    db: Path | None = DB,
    trust_remote_code: bool = typer.Option(
        False, "--trust-remote-code", help="Let a model's own code (auto_map) run: only code you trust."
    ),
) -> None:
    """Sanity-check a model: NaN/inf weights, perplexity and repetition against its parents and its base.

    Without --against, the parents (and the base) come from the model's lineage in the database. The
    verdict is stored. Exit status: 0 ok, 3 degraded, 4 broken, 2 an error (the check could not run).

    Example: mergeguard check ./merged --against ./ft-math --against ./ft-code --base ./base
    """
    fmt = output_format(fmt, as_json, ("table", "json"))
    if device.split(":")[0] not in DEVICES:
        raise UsageError(f"unknown device {device!r}", hint="use --device cpu or --device cuda")
    folder = resolve_model(model)
    store = open_db(db)
    parent_refs = list(against or []) or parents_of(store, str(folder))
    base_ref = base or base_of(store, str(folder))
    with progress_view(not (quiet or fmt == "json")) as progress:
        report = sanity_check(
            folder,
            [resolve_model(p) for p in parent_refs],
            device=device,
            max_tokens=max_tokens,
            progress=progress,
            trust_remote_code=trust_remote_code,
            base=resolve_model(base_ref) if base_ref else None,
        )
    record_check(store, folder, report.verdict, report.summary())
    if fmt == "json":
        typer.echo(report.to_json())
    else:
        console().print(render(report))
    raise typer.Exit(report.exit_code)
