"""The `mergeguard` command: a thin typer layer over the library.

Importing this module must stay fast (`mergeguard --help` in well under a second): command modules import
torch, datasets and lm_eval inside the functions that need them, never at the top.
"""

from __future__ import annotations

import gc
import os
import sys

if sys.argv[1:2] == ["merge"]:  # before numpy loads (the command modules import it): its BLAS threads
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # would spin on the cores the merge's workers need

from mergeguard.cli import (  # noqa: E402, F401  (each module registers its commands on `app`)
    audit,
    benchmarks,
    card,
    check,
    demo,
    evaluate,
    importer,
    merge,
    probe,
    report,
    reports,
    serve,
)
from mergeguard.cli.app import app


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit status (the console script calls this, with no `argv`)."""
    try:
        app(args=argv if argv is not None else sys.argv[1:], prog_name="mergeguard", standalone_mode=True)
        code: int = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    if argv is None:  # the process ends now: spare its exit a full garbage collection of every module
        gc.freeze()  # the objects are freed with the process (README, "Start-up")
    return code


__all__ = ["app", "main"]
