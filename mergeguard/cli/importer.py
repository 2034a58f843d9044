"""`mergeguard import PATH...`: lm-eval results files into the leaderboard."""

from __future__ import annotations

from pathlib import Path

import typer

from mergeguard.cli.app import app
from mergeguard.cli.evaluate import DB_OPTION


@app.command("import")
def import_command(
    paths: list[Path] = typer.Argument(..., help="lm-eval results files or folders."),
    model: str | None = typer.Option(
        None, "--model", help="The model these results are for (default: config.model_args pretrained=)."
    ),
    db: Path | None = DB_OPTION,
) -> None:
    """Import lm-eval results files into the leaderboard."""
    from rich.console import Console

    from mergeguard.db import import_results, open_db

    summary = import_results(open_db(db), list(paths), model=model)
    Console(highlight=False).print(
        f"imported {summary.imported} of {summary.files} results files ({summary.evaluations} metrics"
        f"{f', {summary.already_imported} already imported' if summary.already_imported else ''}) "
        f"for {', '.join(summary.models)}"
    )
