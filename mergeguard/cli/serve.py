"""`mergeguard serve`: browse the database in Datasette, with titles, descriptions, facets and the
leaderboard and findings queries (extra `mergeguard[serve]`)."""

from __future__ import annotations

from pathlib import Path

import typer

from mergeguard.cli.app import app
from mergeguard.cli.evaluate import DB_OPTION


@app.command("serve")
def serve_command(
    db: Path | None = DB_OPTION,
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8001, "--port", help="Port to listen on."),
    metadata_out: Path | None = typer.Option(
        None, "--metadata-out", help="Only write the metadata file (for `datasette DB -m FILE`) and exit."
    ),
) -> None:
    """Browse the database in Datasette, with mergeguard's metadata.

    Example: mergeguard serve --db ./mergeguard.db --port 8001
    """
    from mergeguard.db import open_db
    from mergeguard.paths import db_path
    from mergeguard.reports.datasette import datasette_metadata, make_datasette

    path = db_path(db)
    open_db(path, write=False).conn.close()  # a missing or foreign file: one error line, no new database
    if metadata_out is not None:
        import json

        from mergeguard.cli.report import write_atomically

        write_atomically(metadata_out, json.dumps(datasette_metadata(path), indent=2) + "\n")
        typer.echo(f"wrote {metadata_out}; run: datasette {path} -m {metadata_out}")
        return
    import uvicorn

    server = make_datasette(path)
    typer.echo(f"Datasette on http://{host}:{port}/{path.stem} (Ctrl-C stops it)", err=True)
    uvicorn.run(server.app(), host=host, port=port, log_level="warning")
