"""`mergeguard import PATH...` (filled in by the leaderboard issue)."""

from __future__ import annotations

from pathlib import Path

import typer

from mergeguard.cli.app import app
from mergeguard.errors import MergeguardError


@app.command("import")
def import_command(paths: list[Path] = typer.Argument(..., help="lm-eval results files or folders.")) -> None:
    """Import lm-eval results files into the leaderboard."""
    raise MergeguardError("import is not implemented yet", hint="see the project's open issues")
