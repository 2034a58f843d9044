"""`mergeguard benchmarks list|show` (filled in by the benchmark registry issue)."""

from __future__ import annotations

from mergeguard.cli.app import new_group
from mergeguard.errors import MergeguardError

group = new_group("benchmarks", "The benchmark test sets mergeguard guards against.")


@group.command("list")
def list_command() -> None:
    """List the known benchmarks and where their data loads from."""
    raise MergeguardError("benchmarks list is not implemented yet", hint="see the project's open issues")
