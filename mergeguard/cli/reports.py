"""`mergeguard leaderboard`, `lineage`, `history`: the questions over the local database (opened read-only;
a database that does not exist is an error, never created)."""

from __future__ import annotations

from pathlib import Path

import typer

from mergeguard.cli.common import (
    DB,
    FORMATS,
    JSON_ALIAS,
    QUIET,
    app,
    emit,
    format_option,
    output_format,
    quiet_stderr,
    split_names,
)
from mergeguard.db import (
    history,
    leaderboard,
    lineage,
    open_db,
    render_history,
    render_leaderboard,
    render_lineage,
)

LINEAGE_FORMATS = ("tree", "json", "mermaid", "dot")


@app.command("leaderboard")
def leaderboard_command(
    suite: str | None = typer.Option(None, "--suite", help="v1 (plain mean) or v2 (normalized scores)."),
    clean_only: bool = typer.Option(
        False, "--clean-only", help="Only models audited clean, ancestors included."
    ),
    benchmark: list[str] | None = typer.Option(
        None,
        "--benchmark",
        "-b",
        "--task",
        help="Only these benchmarks (repeat or comma separate; --task is an alias).",
    ),
    limit: int = typer.Option(50, "--limit", help="Models (rows) to show; 0: all."),
    fmt: str = format_option(),
    as_json: bool = JSON_ALIAS,
    quiet: bool = QUIET,
    db: Path | None = DB,
) -> None:
    """Rank your models by benchmark average, with their contamination verdicts. Merges not yet scored
    are listed after the ranked models, marked `unscored`.

    Exit status: 0 shown, 2 an error (no database, unknown suite or benchmark).

    Example: mergeguard leaderboard --suite v2 --clean-only --format markdown
    """
    fmt = output_format(fmt, as_json, FORMATS)
    with quiet_stderr(quiet):
        board = leaderboard(
            open_db(db, write=False),
            suite=suite,
            clean_only=clean_only,
            tasks=split_names(benchmark) or None,
            limit=limit,
        )
    emit(render_leaderboard(board, fmt))


@app.command("lineage")
def lineage_command(
    model: str = typer.Argument(..., help="A model in the database (path, hub id or name)."),
    suite: str | None = typer.Option(None, "--suite", help="Average over v1 or v2 only."),
    fmt: str = format_option("tree", LINEAGE_FORMATS),
    as_json: bool = JSON_ALIAS,
    quiet: bool = QUIET,
    db: Path | None = DB,
) -> None:
    """Show a model's ancestors (card `base_model:` and merge inputs) and descendants.

    Exit status: 0 shown, 2 an error (no database, a model not in it).

    Example: mergeguard lineage ./merged --format mermaid
    """
    fmt = output_format(fmt, as_json, LINEAGE_FORMATS)
    with quiet_stderr(quiet):
        graph = lineage(open_db(db, write=False), model, suite=suite)
    emit(render_lineage(graph, fmt))


@app.command("history")
def history_command(
    model: str | None = typer.Argument(None, help="Only this model."),
    since: str | None = typer.Option(None, "--since", help="Only events on or after this date (ISO)."),
    limit: int = typer.Option(100, "--limit", help="Events (rows) to show; 0: all."),
    fmt: str = format_option(),
    as_json: bool = JSON_ALIAS,
    quiet: bool = QUIET,
    db: Path | None = DB,
) -> None:
    """What happened, newest first: merges (refused ones too), audits, evaluations, checks.

    Exit status: 0 shown, 2 an error (no database, a model not in it, a bad date).

    Example: mergeguard history --since 2026-01-01 --format csv
    """
    fmt = output_format(fmt, as_json, FORMATS)
    with quiet_stderr(quiet):
        events = history(open_db(db, write=False), model, since=since, limit=limit)
    emit(render_history(events, fmt))
