"""The schema, as an append-only list of small named migrations applied once each.

Add a change by writing a new `mNNN_what(db)` function below the last one and decorating it with
`@migration`; never edit or reorder an applied one. Each runs in its own transaction and is recorded in
`mergeguard_migrations`, so a newer mergeguard opens an older file and brings it up to date.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mergeguard.db.views import create_views
from mergeguard.db.writes import now_iso, transaction
from mergeguard.errors import DatabaseError

if TYPE_CHECKING:
    from sqlite_utils import Database

APPLICATION_ID = 0x4D475244  # "MGRD": marks a SQLite file as mergeguard's (PRAGMA application_id)

Migration = Callable[["Database"], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    """Register `fn` as the next migration (its name is its identity in the migrations table)."""
    MIGRATIONS.append(fn)
    return fn


def schema_version(db: Database) -> int:
    """How many migrations this file has had applied."""
    if "mergeguard_migrations" not in db.table_names():
        return 0
    return db.execute("SELECT count(*) FROM mergeguard_migrations").fetchone()[0]


def apply_migrations(db: Database) -> list[str]:
    """Apply every migration not yet recorded; return the names applied. Safe against concurrent openers."""
    known = [fn.__name__ for fn in MIGRATIONS]
    if "mergeguard_migrations" in db.table_names():
        done = {r[0] for r in db.execute("SELECT name FROM mergeguard_migrations")}
        if done - set(known):
            raise DatabaseError(
                "the database was written by a newer mergeguard "
                f"(unknown migrations: {', '.join(sorted(done - set(known)))})",
                hint="upgrade mergeguard",
            )
        if set(known) <= done:
            return []
    applied: list[str] = []
    with transaction(db):  # one writer migrates; the others wait and then find nothing to do
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute(
            "CREATE TABLE IF NOT EXISTS mergeguard_migrations "
            "(name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        done = {r[0] for r in db.execute("SELECT name FROM mergeguard_migrations")}
        for fn in MIGRATIONS:
            if fn.__name__ not in done:
                fn(db)
                db.execute(
                    "INSERT INTO mergeguard_migrations (name, applied_at) VALUES (?, ?)",
                    [fn.__name__, now_iso()],
                )
                applied.append(fn.__name__)
    return applied


def _script(db: Database, sql: str) -> None:
    """Run `sql` statement by statement inside the caller's transaction (executescript would commit)."""
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)


M001_SQL = """
CREATE TABLE models (
    id INTEGER PRIMARY KEY,
    ref TEXT NOT NULL UNIQUE,            -- absolute folder path or hub id
    name TEXT NOT NULL,                  -- what tables show
    fingerprint TEXT,                    -- sampled content hash of the weights
    architecture TEXT,
    param_count INTEGER,
    dtype TEXT,
    first_seen TEXT NOT NULL
);
CREATE INDEX models_name ON models(name);
CREATE INDEX models_fingerprint ON models(fingerprint);

CREATE TABLE merges (
    id INTEGER PRIMARY KEY,
    output_model_id INTEGER NOT NULL REFERENCES models(id),
    config_hash TEXT NOT NULL,
    config_text TEXT NOT NULL,
    method TEXT,
    tool_version TEXT,
    seed INTEGER,
    out_path TEXT,
    status TEXT NOT NULL DEFAULT 'ok',
    seconds REAL,
    timings TEXT,                        -- JSON object of phase -> seconds
    created_at TEXT NOT NULL,
    UNIQUE (output_model_id, config_hash)
);
CREATE INDEX merges_created ON merges(created_at);

CREATE TABLE lineage_edges (
    id INTEGER PRIMARY KEY,
    child_id INTEGER NOT NULL REFERENCES models(id),
    parent_id INTEGER NOT NULL REFERENCES models(id),
    relation TEXT NOT NULL CHECK (relation IN ('merge', 'finetune', 'base')),
    method TEXT,
    weight REAL,                         -- the parent's weight, or SLERP's t
    merge_id INTEGER REFERENCES merges(id),
    CHECK (child_id != parent_id),
    UNIQUE (child_id, parent_id, relation)
);
CREATE INDEX lineage_edges_parent ON lineage_edges(parent_id);

CREATE TABLE datasets (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE model_datasets (
    model_id INTEGER NOT NULL REFERENCES models(id),
    dataset_id INTEGER NOT NULL REFERENCES datasets(id),
    declared INTEGER NOT NULL DEFAULT 1, -- 1: on the model's own card, 0: inherited
    inherited_from_id INTEGER REFERENCES models(id),
    PRIMARY KEY (model_id, dataset_id)
);

CREATE TABLE audits (
    id INTEGER PRIMARY KEY,
    created_at TEXT NOT NULL,
    index_hash TEXT,
    thresholds TEXT,                     -- JSON
    benchmark_rates TEXT,                -- JSON
    tool_version TEXT,
    report_hash TEXT NOT NULL UNIQUE
);
CREATE INDEX audits_created ON audits(created_at);
CREATE TABLE audit_verdicts (
    audit_id INTEGER NOT NULL REFERENCES audits(id) ON DELETE CASCADE,
    model_id INTEGER NOT NULL REFERENCES models(id),
    verdict TEXT NOT NULL CHECK (verdict IN ('clean', 'contaminated', 'undeclared')),
    inherited_from TEXT,
    datasets TEXT,                       -- JSON list
    PRIMARY KEY (audit_id, model_id)
);
CREATE INDEX audit_verdicts_model ON audit_verdicts(model_id, audit_id);
CREATE TABLE findings (
    id INTEGER PRIMARY KEY,
    audit_id INTEGER NOT NULL REFERENCES audits(id) ON DELETE CASCADE,
    model_id INTEGER REFERENCES models(id),
    dataset TEXT,
    example TEXT,
    benchmark TEXT,
    split TEXT,
    item INTEGER,
    item_id TEXT,
    score REAL,
    severity TEXT,
    inherited_from TEXT,
    evidence TEXT
);
CREATE INDEX findings_audit ON findings(audit_id);
CREATE INDEX findings_model ON findings(model_id);

CREATE TABLE results_files (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL,
    model_id INTEGER NOT NULL REFERENCES models(id),
    source TEXT NOT NULL DEFAULT 'import', -- 'import' or 'eval'
    harness_version TEXT,
    evaluated_at TEXT,
    imported_at TEXT NOT NULL
);
CREATE INDEX results_files_model ON results_files(model_id);
CREATE TABLE evaluations (
    id INTEGER PRIMARY KEY,
    model_id INTEGER NOT NULL REFERENCES models(id),
    results_file_id INTEGER REFERENCES results_files(id),
    task TEXT NOT NULL,                  -- lm-eval's task name
    benchmark TEXT,                      -- mergeguard's benchmark name, when the task scores one
    metric TEXT NOT NULL,
    filter TEXT NOT NULL DEFAULT 'none',
    value REAL,
    stderr REAL,
    is_primary INTEGER NOT NULL DEFAULT 0, -- the metric the leaderboard ranks this benchmark by
    num_fewshot INTEGER,
    sample_limit REAL,
    n_samples INTEGER,
    harness_version TEXT,
    evaluated_at TEXT,
    source_file TEXT,
    source_hash TEXT
);
CREATE INDEX evaluations_model ON evaluations(model_id, benchmark);
CREATE INDEX evaluations_file ON evaluations(results_file_id);

-- derived, kept current in the same transaction as each evaluation write
CREATE TABLE model_scores (
    model_id INTEGER NOT NULL REFERENCES models(id),
    benchmark TEXT NOT NULL,
    value REAL NOT NULL,                 -- the primary metric, 0..1
    normalized REAL NOT NULL,            -- v2: (value - baseline) / (1 - baseline), floored at 0
    evaluation_id INTEGER NOT NULL REFERENCES evaluations(id),
    PRIMARY KEY (model_id, benchmark)
) WITHOUT ROWID;
CREATE INDEX model_scores_benchmark ON model_scores(benchmark, value DESC);
CREATE TABLE model_averages (
    model_id INTEGER NOT NULL REFERENCES models(id),
    suite TEXT NOT NULL,                 -- 'all', 'v1' or 'v2'
    average REAL NOT NULL,
    n_scores INTEGER NOT NULL,
    PRIMARY KEY (model_id, suite)
) WITHOUT ROWID;
CREATE INDEX model_averages_rank ON model_averages(suite, n_scores DESC, average DESC);

CREATE TABLE checks (
    id INTEGER PRIMARY KEY,
    model_id INTEGER NOT NULL REFERENCES models(id),
    verdict TEXT NOT NULL CHECK (verdict IN ('ok', 'degraded', 'broken')),
    detail TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX checks_model ON checks(model_id);
"""


@migration
def m001_initial(db: Database) -> None:
    """Models, lineage, merges, datasets, audits and findings, lm-eval results, scores, checks."""
    _script(db, M001_SQL)


@migration
def m002_views(db: Database) -> None:
    """Datasette-friendly views: leaderboard, scores, lineage, latest_verdicts."""
    create_views(db)


@migration
def m003_guardrails(db: Database) -> None:
    """Audit reuse (a key over everything an audit read, and the report itself) and each merge's guard
    decisions (the audit it passed, what was overridden)."""
    _script(
        db,
        """
        ALTER TABLE audits ADD COLUMN input_key TEXT;
        ALTER TABLE audits ADD COLUMN report TEXT;
        CREATE INDEX audits_input_key ON audits(input_key);
        ALTER TABLE merges ADD COLUMN audit_id INTEGER REFERENCES audits(id);
        ALTER TABLE merges ADD COLUMN guard TEXT
        """,
    )


@migration
def m004_unread_verdicts(db: Database) -> None:
    """Audit verdicts `incomplete` and `unreadable` (declared data not read completely: the audit fails
    closed). SQLite cannot change a CHECK constraint, so the table is rebuilt; views are made again."""
    views = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'view'").fetchall()]
    for name in views:
        db.execute(f'DROP VIEW "{name}"')
    _script(
        db,
        """
        CREATE TABLE audit_verdicts_new (
            audit_id INTEGER NOT NULL REFERENCES audits(id) ON DELETE CASCADE,
            model_id INTEGER NOT NULL REFERENCES models(id),
            verdict TEXT NOT NULL
                CHECK (verdict IN ('clean', 'contaminated', 'undeclared', 'incomplete', 'unreadable')),
            inherited_from TEXT,
            datasets TEXT,
            PRIMARY KEY (audit_id, model_id)
        );
        INSERT INTO audit_verdicts_new SELECT audit_id, model_id, verdict, inherited_from, datasets
            FROM audit_verdicts;
        DROP TABLE audit_verdicts;
        ALTER TABLE audit_verdicts_new RENAME TO audit_verdicts;
        CREATE INDEX audit_verdicts_model ON audit_verdicts(model_id, audit_id)
        """,
    )
    create_views(db)


@migration
def m005_probes(db: Database) -> None:
    """Model-side probe results (`mergeguard probe`, `audit --probe`): one row per model and benchmark."""
    _script(
        db,
        """
        CREATE TABLE probes (
            id INTEGER PRIMARY KEY,
            model_id INTEGER NOT NULL REFERENCES models(id),
            reference TEXT,
            benchmark TEXT NOT NULL,
            split TEXT,
            verdict TEXT NOT NULL CHECK (verdict IN ('suspect', 'no_signal', 'inconclusive')),
            p_value REAL,
            effect REAL,
            items INTEGER NOT NULL,
            alpha REAL NOT NULL,
            created_at TEXT NOT NULL
        );
        CREATE INDEX probes_model ON probes(model_id, benchmark)
        """,
    )
