"""`mergeguard serve`: browse the database in Datasette, with titles, descriptions, facets and the
leaderboard and findings queries (extra `mergeguard[serve]`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mergeguard.cli.common import DB, QUIET, app
from mergeguard.cli.report import write_atomically
from mergeguard.db import open_db
from mergeguard.paths import db_path
from mergeguard.reports.datasette import datasette_metadata, make_datasette


@app.command("serve")
def serve_command(
    db: Path | None = DB,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8001, "--port", help="Port to listen on."),
    metadata_out: Path | None = typer.Option(
        None, "--metadata-out", help="Only write the metadata file (for `datasette DB -m FILE`) and exit."
    ),
    quiet: bool = QUIET,
) -> None:
    """Browse the database in Datasette, with mergeguard's metadata (-q: without the lines saying where).

    Exit status: 0 stopped (Ctrl-C) or metadata written, 2 an error (no database, datasette not installed).

    Example: mergeguard serve --db ./mergeguard.db --port 8001
    """

    path = db_path(db)
    open_db(path, write=False).conn.close()  # a missing or foreign file: one error line, no new database
    if metadata_out is not None:
        write_atomically(metadata_out, json.dumps(datasette_metadata(path), indent=2) + "\n")
        if not quiet:
            typer.echo(f"wrote {metadata_out}; run: datasette {path} -m {metadata_out}")
        return
    import uvicorn

    server = make_datasette(path)
    if not quiet:
        typer.echo(f"Datasette on http://{host}:{port}/{path.stem} (Ctrl-C stops it)", err=True)
    uvicorn.run(server.app(), host=host, port=port, log_level="warning")
