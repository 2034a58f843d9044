"""Where mergeguard keeps the user's files: the database, the cache, the benchmark data folder.

Each location has one precedence order: the explicit argument, then an environment variable, then a
per-user default under the XDG folders.
"""

from __future__ import annotations

import os
from pathlib import Path

DB_ENV = "MERGEGUARD_DB"
CACHE_ENV = "MERGEGUARD_CACHE"
BENCHMARKS_DIR_ENV = "MERGEGUARD_BENCHMARKS_DIR"


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else Path.home() / fallback


def db_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The database file: `explicit`, else $MERGEGUARD_DB, else ~/.local/share/mergeguard/mergeguard.db."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(DB_ENV):
        return Path(os.environ[DB_ENV]).expanduser()
    return user_db_path()


def user_db_path() -> Path:
    """The user-wide default database, ~/.local/share/mergeguard/mergeguard.db (under $XDG_DATA_HOME)."""
    return _xdg("XDG_DATA_HOME", ".local/share") / "mergeguard" / "mergeguard.db"


def cache_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder (benchmark indexes): `explicit`, else $MERGEGUARD_CACHE, else ~/.cache/mergeguard."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return _xdg("XDG_CACHE_HOME", ".cache") / "mergeguard"


def benchmarks_dir(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """A local folder of benchmark test sets (`<benchmark>/<split>.jsonl`), or None to use the hub."""
    if explicit:
        return Path(explicit).expanduser()
    value = os.environ.get(BENCHMARKS_DIR_ENV)
    return Path(value).expanduser() if value else None
