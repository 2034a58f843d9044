"""`mergeguard audit` (filled in by the auditor issue)."""

from __future__ import annotations

import typer

from mergeguard.cli.app import app
from mergeguard.errors import MergeguardError


@app.command("audit")
def audit_command(
    config: str | None = typer.Argument(None, help="A merge config whose models to audit."),
) -> None:
    """Audit models' declared fine-tune datasets against benchmark test sets."""
    raise MergeguardError("audit is not implemented yet", hint="see the project's open issues")
