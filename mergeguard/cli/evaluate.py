"""`mergeguard eval MODEL` (filled in by the leaderboard issue)."""

from __future__ import annotations

import typer

from mergeguard.cli.app import app
from mergeguard.errors import MergeguardError


@app.command("eval")
def eval_command(model: str = typer.Argument(..., help="A local model folder.")) -> None:
    """Evaluate a model with lm-eval and store its scores."""
    raise MergeguardError("eval is not implemented yet", hint="see the project's open issues")
