"""`mergeguard leaderboard`, `lineage`, `history`: the questions over the local database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from mergeguard.cli.app import app
from mergeguard.cli.evaluate import DB_OPTION, split_tasks
from mergeguard.errors import UsageError

TABLE_FORMATS = ("table", "json", "csv", "markdown")
LINEAGE_FORMATS = ("tree", "json", "mermaid", "dot")


def _check(fmt: str, allowed: tuple[str, ...]) -> str:
    if fmt not in allowed:
        raise UsageError(f"unknown format {fmt!r}", hint=f"use one of {', '.join(allowed)}")
    return fmt


def _emit(rendered: Any) -> None:
    """Text formats go to stdout verbatim (pipe-safe); rich renderables through a console."""
    if isinstance(rendered, str):
        typer.echo(rendered, nl=not rendered.endswith("\n"))
        return
    import shutil

    from rich.console import Console

    # tables are wide (a column per benchmark); never squeeze model names into ellipses on a narrow pipe
    Console(highlight=False, width=max(shutil.get_terminal_size().columns, 160)).print(rendered)


@app.command("leaderboard")
def leaderboard_command(
    suite: str | None = typer.Option(None, "--suite", help="v1 (plain mean) or v2 (normalized scores)."),
    clean_only: bool = typer.Option(
        False, "--clean-only", help="Only models audited clean, ancestors included."
    ),
    task: list[str] | None = typer.Option(
        None, "--task", help="Only these benchmarks (repeat or comma separate)."
    ),
    limit: int = typer.Option(50, "--limit", help="Rows to show (0: all)."),
    fmt: str = typer.Option("table", "--format", help="table, json, csv or markdown."),
    db: Path | None = DB_OPTION,
) -> None:
    """Rank your models by benchmark average, with their contamination verdicts."""
    from mergeguard.db import leaderboard, open_db, render_leaderboard

    _check(fmt, TABLE_FORMATS)
    tasks = [t for entry in task or [] for t in split_tasks(entry) or []]
    board = leaderboard(
        open_db(db, write=False), suite=suite, clean_only=clean_only, tasks=tasks or None, limit=limit
    )
    _emit(render_leaderboard(board, fmt))


@app.command("lineage")
def lineage_command(
    model: str = typer.Argument(..., help="A model in the database (path, hub id or name)."),
    suite: str | None = typer.Option(None, "--suite", help="Average over v1 or v2 only."),
    fmt: str = typer.Option("tree", "--format", help="tree, json, mermaid or dot."),
    db: Path | None = DB_OPTION,
) -> None:
    """Show a model's ancestors and descendants."""
    from mergeguard.db import lineage, open_db, render_lineage

    _check(fmt, LINEAGE_FORMATS)
    _emit(render_lineage(lineage(open_db(db, write=False), model, suite=suite), fmt))


@app.command("history")
def history_command(
    model: str | None = typer.Argument(None, help="Only this model."),
    since: str | None = typer.Option(None, "--since", help="Only events on or after this date (ISO)."),
    limit: int = typer.Option(100, "--limit", help="Events to show (0: all)."),
    fmt: str = typer.Option("table", "--format", help="table, json, csv or markdown."),
    db: Path | None = DB_OPTION,
) -> None:
    """What happened, newest first: merges, audits, evaluations."""
    from mergeguard.db import history, open_db, render_history

    _check(fmt, TABLE_FORMATS)
    _emit(render_history(history(open_db(db, write=False), model, since=since, limit=limit), fmt))
