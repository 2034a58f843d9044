"""`mergeguard report`: a model's, a merge config's or a dataset's audit as one offline HTML page or as
Markdown, for people who were not at the terminal."""

from __future__ import annotations

from pathlib import Path

import typer

from mergeguard.cli.common import DB, QUIET, app
from mergeguard.db import open_db
from mergeguard.errors import MergeguardError, UsageError
from mergeguard.reports import FORMATS, build_report, render
from mergeguard.reports.card import write_text_atomically


def write_atomically(path: Path, text: str) -> None:
    """Write `text` to a user-given `path` (checked first) atomically: a failed run leaves no partial file."""
    path = path.expanduser()
    if path.is_dir():
        raise UsageError(f"--out {path} is a folder", hint="give a file name such as report.html")
    if not path.parent.is_dir():
        raise UsageError(f"folder {path.parent} does not exist", hint="create it or choose another --out")
    write_text_atomically(path, text)


@app.command("report")
def report_command(
    target: str = typer.Argument(..., help="A model in the database, a merge config (.yml), or a dataset."),
    out: Path | None = typer.Option(None, "--out", "-o", help="File to write (default: standard output)."),
    fmt: str | None = typer.Option(
        None, "--format", help="html or markdown (default: from --out's suffix, else html)."
    ),
    suite: str | None = typer.Option(None, "--suite", help="Plot v1 scores or v2 normalized scores."),
    quiet: bool = QUIET,
    db: Path | None = DB,
) -> None:
    """Share an audit: verdict and why, lineage, scores against the parents, every finding. The report is
    a document (--format html or markdown); -q leaves out the `wrote` line.

    Exit status: 0 written, 2 an error (no database, nothing known about TARGET, an unwritable --out).

    Example: mergeguard report ./merged --out report.html
    """

    if fmt is None:
        fmt = "markdown" if out is not None and out.suffix.lower() in (".md", ".markdown") else "html"
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}", hint=f"use one of {', '.join(FORMATS)}")
    try:
        text = render(build_report(open_db(db, write=False), target, suite=suite), fmt)
    except ImportError as error:  # matplotlib is a dependency; a broken install is still one line
        raise MergeguardError(f"cannot draw the report ({error})", hint="pip install matplotlib") from error
    if out is None:
        typer.echo(text, nl=not text.endswith("\n"))
        return
    write_atomically(out, text)
    if not quiet:
        typer.echo(f"wrote {out}", err=True)
