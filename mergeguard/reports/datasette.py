"""Datasette that explains itself: the metadata file (`datasette-metadata.yaml`) put under the database's
name, and a Datasette instance on a mergeguard database (what `mergeguard serve` runs and tests query)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mergeguard.errors import MergeguardError

if TYPE_CHECKING:
    from datasette.app import Datasette

METADATA = Path(__file__).with_name("datasette-metadata.yaml")
TEMPLATE_NAME = "mergeguard"


def datasette_metadata(db_path: Path) -> dict[str, Any]:
    """The metadata for `db_path`: Datasette names a database after its file's stem."""
    data = yaml.safe_load(METADATA.read_text(encoding="utf-8"))
    data["databases"] = {Path(db_path).stem: data["databases"][TEMPLATE_NAME]}
    return data


def make_datasette(db_path: Path) -> Datasette:
    """A Datasette app on `db_path` (opened read-only by Datasette) with mergeguard's metadata."""
    try:
        from datasette.app import Datasette
    except ImportError as error:
        raise MergeguardError(
            "Datasette is not installed", hint="pip install 'mergeguard[serve]' (or pip install datasette)"
        ) from error
    return Datasette([str(db_path)], metadata=datasette_metadata(db_path))
