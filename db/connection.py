"""Opening the database file: where it is, the pragmas every connection needs, and refusing files that are
not mergeguard's (or not SQLite at all) before anything is written to them.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mergeguard.db.migrations import APPLICATION_ID, MIGRATIONS, apply_migrations, schema_version
from mergeguard.db.writes import now_iso, transaction
from mergeguard.errors import DatabaseError
from mergeguard.paths import db_path

if TYPE_CHECKING:
    from sqlite_utils import Database

__all__ = ["APPLICATION_ID", "now_iso", "open_db", "transaction"]  # now_iso, transaction: their old home
BUSY_TIMEOUT_MS = 30_000
QUICK_CHECK_MAX_BYTES = 32 * 2**20  # quick_check reads every page: only on files small enough to be instant


def _refuse(path: Path, problem: str) -> DatabaseError:
    return DatabaseError(
        f"{path} {problem}",
        hint="give another file with --db or MERGEGUARD_DB, or move this one away",
    )


def _check_file(conn: sqlite3.Connection, path: Path) -> bool:
    """True when the file is empty (a new database); raise when it is corrupt or someone else's."""
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        small = path.exists() and path.stat().st_size <= QUICK_CHECK_MAX_BYTES
        quick = conn.execute("PRAGMA quick_check(1)").fetchone()[0] if tables and small else "ok"
    except sqlite3.OperationalError:  # cannot open or lock it (a read-only folder): not the file's fault
        raise
    except sqlite3.DatabaseError as error:
        raise _refuse(path, f"is not a SQLite database or is corrupt ({error})") from error
    if quick != "ok":
        raise _refuse(path, f"is corrupt (integrity check: {quick})")
    if not tables:
        return app_id in (0, APPLICATION_ID)
    if app_id != APPLICATION_ID or "mergeguard_migrations" not in tables:
        raise _refuse(path, "is a SQLite database but not a mergeguard one")
    return False


def sqlite_utils_database() -> type[Database]:
    """sqlite_utils' `Database`, imported without pandas unless pandas is already loaded.

    sqlite_utils imports pandas when it can, only to accept DataFrames, which mergeguard never passes;
    pandas (with pyarrow) adds time and memory to every command that opens the database (README,
    "Start-up"). For this one import `pandas` is made unimportable; the previous state is restored at once,
    so the rest of the process (and the user's notebook) imports pandas as usual.
    """
    if "sqlite_utils.db" in sys.modules or "pandas" in sys.modules:
        from sqlite_utils import Database
    else:
        sys.modules["pandas"] = None  # type: ignore[assignment]  # `import pandas` raises ImportError
        try:
            from sqlite_utils import Database
        finally:
            del sys.modules["pandas"]
    return Database


def open_db(
    path: str | os.PathLike[str] | None = None, *, migrate: bool = True, write: bool = True
) -> Database:
    """Open (creating on first use) the mergeguard database: `path`, else $MERGEGUARD_DB, else the user's
    data folder. WAL journal, foreign keys on, a 30 s busy timeout; migrations applied once each.

    `write=False` is for commands that only read (leaderboard, lineage, history): the file must exist, so a
    mistyped --db is an error rather than a new empty database, and a read-only file is opened read-only.
    Every SQLite or file-system failure becomes one `DatabaseError` naming the file.
    """
    Database = sqlite_utils_database()
    file = db_path(path)
    try:
        _require_usable(file, write)
        read_only = file.exists() and not write and not os.access(file, os.W_OK)
    except OSError as error:  # a name too long, a folder in the path that is a file
        raise _refuse(file, f"cannot be used ({error.strerror or error})") from error
    try:
        conn = (
            sqlite3.connect(f"{file.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
            if read_only
            else sqlite3.connect(str(file), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        )
    except sqlite3.Error as error:
        raise _refuse(file, f"cannot be opened ({error})") from error
    try:
        _check_file(conn, file)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        if not read_only:
            _use_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")
        db = Database(conn, execute_plugins=False)
        if migrate:
            _migrate(db, file, read_only)
    except sqlite3.Error as error:
        conn.close()
        raise _unusable(file, error) from error
    except BaseException:
        conn.close()
        raise
    return db


def _require_usable(file: Path, write: bool) -> None:
    """Refuse, before SQLite touches it, a path that cannot hold the database (or, to read, does not)."""
    if file.is_dir():
        raise _refuse(file, "is a folder, not a database file")
    if file.exists() and not file.is_file():  # /dev/null, a FIFO: SQLite would fail on the first write
        raise _refuse(file, "is not a regular file")
    if not file.exists() and not write:
        raise DatabaseError(
            f"no database at {file}",
            hint="check --db or MERGEGUARD_DB (merge, eval and import create the database)",
        )
    if not write:
        return
    if file.exists() and not os.access(file, os.W_OK):
        raise DatabaseError(
            f"{file} is read-only", hint="make it writable, or give another file with --db or MERGEGUARD_DB"
        )
    file.parent.mkdir(parents=True, exist_ok=True)


def _migrate(db: Database, file: Path, read_only: bool) -> None:
    """Bring the schema up to date; a read-only file must already be (it cannot be upgraded in place)."""
    if not read_only:
        apply_migrations(db)
    elif schema_version(db) < len(MIGRATIONS):
        raise DatabaseError(
            f"{file} is read-only and its schema is older than this mergeguard's",
            hint="make it writable once so mergeguard can upgrade it",
        )


def _unusable(file: Path, error: sqlite3.Error) -> DatabaseError:
    """One line for whatever SQLite says about a file it cannot use (read-only, disk I/O, locked)."""
    if "readonly" in str(error):
        return DatabaseError(
            f"{file} is read-only ({error})",
            hint="make the file and its folder writable, or give another file with --db or MERGEGUARD_DB",
        )
    if "unable to open" in str(error):
        return DatabaseError(
            f"{file} cannot be opened ({error}): SQLite keeps {file.name}-wal and -shm files beside it",
            hint="make its folder writable, or copy the file to a writable folder",
        )
    return _refuse(file, f"cannot be used ({error})")


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch the file to WAL. While another process is creating the same file, SQLite can answer
    "database is locked" at once, without waiting on the busy timeout, so retry until that timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) and "busy" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
