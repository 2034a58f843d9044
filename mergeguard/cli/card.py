"""`mergeguard card MODEL`: rewrite a merged model's Hub card from the database (after `eval`, with its
model-index results; after a new audit, with its contamination section)."""

from __future__ import annotations

from pathlib import Path

import typer

from mergeguard.cli.app import app
from mergeguard.cli.evaluate import DB_OPTION


@app.command("card")
def card_command(
    model: str = typer.Argument(..., help="A merged model in the database (its folder, or its name)."),
    db: Path | None = DB_OPTION,
) -> None:
    """Refresh a merged model's README.md (Hub-ready) from the database.

    Example: mergeguard card ./merged --db ./mergeguard.db
    """
    from mergeguard.db import open_db
    from mergeguard.reports.card import refresh_card

    path = refresh_card(open_db(db, write=False), model)
    typer.echo(f"wrote {path}")
