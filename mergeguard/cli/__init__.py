"""The `mergeguard` command: a thin typer layer over the library.

Each command lives in one module beside this file and registers itself on `app` when imported. `main`
imports only the module of the command being run (`COMMAND_MODULES`): a merge does not wait for the
auditor's, the database's or the demo's imports, and `mergeguard --help` stays well under a second.
Heavy libraries (torch, datasets, lm_eval, ...) are imported inside the functions that need them
(`mergeguard.lazy.HEAVY_MODULES`).
"""

from __future__ import annotations

import gc
import importlib
import os
import sys

import typer

if sys.argv[1:2] == ["merge"]:  # before numpy loads (the command modules import it): its BLAS threads
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # would spin on the cores the merge's workers need

from mergeguard.cli.common import COMMAND_MODULES  # noqa: E402
from mergeguard.cli.common import app as _app  # noqa: E402


def load_commands(argv: list[str] | None = None) -> typer.Typer:
    """The application with the module of the command that `argv` names imported, or every command module
    when `argv` is None or names no command (`--help`, a typo: the full list is then needed)."""
    words = [word for word in argv or [] if not word.startswith("-")]
    command = words[0] if words else None
    modules = [COMMAND_MODULES[command]] if command in COMMAND_MODULES else COMMAND_MODULES.values()
    for module in dict.fromkeys(modules):
        importlib.import_module(f"mergeguard.cli.{module}")
    return _app


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status (the console script calls this, with no `argv`)."""
    args = argv if argv is not None else sys.argv[1:]
    try:
        load_commands(args)(args=args, prog_name="mergeguard", standalone_mode=True)
        code: int = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    if argv is None:  # the process ends now: spare its exit a full garbage collection of every module
        gc.freeze()  # the objects are freed with the process (README, "Start-up")
    return code


def __getattr__(name: str) -> typer.Typer:
    """`from mergeguard.cli import app`: the application with every command registered."""
    if name == "app":
        return load_commands()
    raise AttributeError(f"module 'mergeguard.cli' has no attribute {name!r}")


__all__ = ["COMMAND_MODULES", "app", "load_commands", "main"]
