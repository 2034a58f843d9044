"""What every write shares: one timestamp format, and write transactions that queue instead of failing."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from mergeguard.errors import DatabaseError

if TYPE_CHECKING:
    from sqlite_utils import Database


def now_iso() -> str:
    """The current UTC time as ISO 8601 with seconds, the one timestamp format in the database."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def transaction(db: Database) -> Iterator[Database]:
    """One write transaction, taken with BEGIN IMMEDIATE so concurrent writers queue on the busy timeout
    instead of failing on a lock upgrade. Nested use joins the outer transaction.
    """
    conn = db.conn
    if conn.in_transaction:
        yield db
        return
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as error:
        raise DatabaseError(
            f"the database is busy ({error})", hint="another mergeguard is writing; try again"
        ) from error
    try:
        yield db
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")
