"""`mergeguard leaderboard`, `lineage`, `history` (filled in by the leaderboard issue)."""

from __future__ import annotations

import typer

from mergeguard.cli.app import app
from mergeguard.errors import MergeguardError


@app.command("leaderboard")
def leaderboard_command() -> None:
    """Rank your models by benchmark average, with their contamination verdicts."""
    raise MergeguardError("leaderboard is not implemented yet", hint="see the project's open issues")


@app.command("lineage")
def lineage_command(model: str = typer.Argument(..., help="A model in the database.")) -> None:
    """Show a model's ancestors and descendants."""
    raise MergeguardError("lineage is not implemented yet", hint="see the project's open issues")


@app.command("history")
def history_command(model: str | None = typer.Argument(None, help="Only this model.")) -> None:
    """What happened, newest first: merges, audits, evaluations."""
    raise MergeguardError("history is not implemented yet", hint="see the project's open issues")
