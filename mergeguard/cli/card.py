"""`mergeguard card MODEL`: rewrite a merged model's Hub card from the database (after `eval`, with its
model-index results; after a new audit, with its contamination section)."""

from __future__ import annotations

from pathlib import Path

import typer

from mergeguard.cli.common import DB, QUIET, app
from mergeguard.db import open_db
from mergeguard.reports.card import refresh_card


@app.command("card")
def card_command(
    model: str = typer.Argument(..., help="A merged model in the database (its folder, or its name)."),
    quiet: bool = QUIET,
    db: Path | None = DB,
) -> None:
    """Refresh a merged model's README.md (Hub-ready) from the database (-q: without the `wrote` line).

    Exit status: 0 written, 2 an error (no database, a model not in it, a folder that cannot be written).

    Example: mergeguard card ./merged --db ./mergeguard.db
    """
    path = refresh_card(open_db(db, write=False), model)
    if not quiet:
        typer.echo(f"wrote {path}")
