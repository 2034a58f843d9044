"""`mergeguard demo` (filled in by the guardrails issue)."""

from __future__ import annotations

from mergeguard.cli.app import app
from mergeguard.errors import MergeguardError


@app.command("demo")
def demo_command() -> None:
    """Show the whole story offline: fine-tune, audit, refuse, merge, evaluate, rank."""
    raise MergeguardError("demo is not implemented yet", hint="see the project's open issues")
