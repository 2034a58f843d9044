"""`mergeguard merge CONFIG OUT_DIR` (filled in by the merge engine issue)."""

from __future__ import annotations

from pathlib import Path

import typer

from mergeguard.cli.app import app
from mergeguard.errors import MergeguardError


@app.command("merge")
def merge_command(
    config: Path = typer.Argument(..., help="A mergekit YAML config."),
    out_dir: Path = typer.Argument(..., help="Folder to write the merged model into."),
) -> None:
    """Merge models from a mergekit YAML config (audits the inputs first)."""
    raise MergeguardError("merge is not implemented yet", hint="see the project's open issues")
