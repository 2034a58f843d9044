"""`mergeguard import PATH...`: lm-eval results files into the leaderboard."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer

from mergeguard.cli.common import (
    DB,
    FORMATS,
    JSON_ALIAS,
    QUIET,
    app,
    emit,
    emit_rows,
    format_option,
    output_format,
    quiet_stderr,
)
from mergeguard.db import open_db
from mergeguard.db.render import to_json
from mergeguard.evaluation import import_results


@app.command("import")
def import_command(
    paths: list[Path] = typer.Argument(..., help="lm-eval results files or folders."),
    model: str | None = typer.Option(
        None, "--model", help="The model these results are for (default: config.model_args pretrained=)."
    ),
    fmt: str = format_option(),
    as_json: bool = JSON_ALIAS,
    quiet: bool = QUIET,
    db: Path | None = DB,
) -> None:
    """Import lm-eval results files into the leaderboard (a local model is recorded with its card's
    `base_model:` as its parent). Exit status: 0 imported, 2 an error (unreadable or foreign file).

    Example: mergeguard import ./lm-eval-results/ --model ./merged
    """
    fmt = output_format(fmt, as_json, FORMATS)
    with quiet_stderr(quiet):
        summary = import_results(open_db(db), list(paths), model=model)
    if fmt == "json":
        emit(to_json(asdict(summary)) + "\n")
        return
    if fmt in ("csv", "markdown"):
        headers = ["files", "imported", "already_imported", "evaluations", "models"]
        row = [summary.files, summary.imported, summary.already_imported, summary.evaluations]
        emit_rows(None, headers, [[*row, ", ".join(summary.models)]], fmt, keep=("models",))
        return
    already = f", {summary.already_imported} already imported" if summary.already_imported else ""
    emit(
        f"imported {summary.imported} of {summary.files} results files ({summary.evaluations} metrics"
        f"{already}) for {', '.join(summary.models)}\n"
    )
