"""`mergeguard leaderboard`, `lineage`, `history`: the questions over the local database (opened read-only;
a database that does not exist is an error, never created)."""

from __future__ import annotations

from pathlib import Path

import typer

from mergeguard.cli.app import DB, FORMATS, JSON_ALIAS, app, emit, format_option, output_format, split_names

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
    db: Path | None = DB,
) -> None:
    """Rank your models by benchmark average, with their contamination verdicts. Merges not yet scored
    are listed after the ranked models, marked `unscored`.

    Example: mergeguard leaderboard --suite v2 --clean-only --format markdown
    """
    from mergeguard.db import leaderboard, open_db, render_leaderboard

    fmt = output_format(fmt, as_json, FORMATS)
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
    db: Path | None = DB,
) -> None:
    """Show a model's ancestors (card `base_model:` and merge inputs) and descendants.

    Example: mergeguard lineage ./merged --format mermaid
    """
    from mergeguard.db import lineage, open_db, render_lineage

    fmt = output_format(fmt, as_json, LINEAGE_FORMATS)
    emit(render_lineage(lineage(open_db(db, write=False), model, suite=suite), fmt))


@app.command("history")
def history_command(
    model: str | None = typer.Argument(None, help="Only this model."),
    since: str | None = typer.Option(None, "--since", help="Only events on or after this date (ISO)."),
    limit: int = typer.Option(100, "--limit", help="Events (rows) to show; 0: all."),
    fmt: str = format_option(),
    as_json: bool = JSON_ALIAS,
    db: Path | None = DB,
) -> None:
    """What happened, newest first: merges (refused ones too), audits, evaluations, checks.

    Example: mergeguard history --since 2026-01-01 --format csv
    """
    from mergeguard.db import history, open_db, render_history

    fmt = output_format(fmt, as_json, FORMATS)
    emit(render_history(history(open_db(db, write=False), model, since=since, limit=limit), fmt))
