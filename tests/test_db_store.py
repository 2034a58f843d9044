"""The database file: where it lives, its pragmas and migrations, refusing files that are not ours,
idempotent writes, fingerprints, and user text reaching SQL only as bound parameters."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from mergeguard import tiny
from mergeguard.cli import main
from mergeguard.db import (
    MIGRATIONS,
    find_model,
    open_db,
    record_audit,
    record_check,
    record_merge,
    register_model,
    schema_version,
    upsert_model,
)
from mergeguard.errors import DatabaseError
from mergeguard.evaluation.fingerprint import weights_info


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_path_precedence_pragmas_and_migrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MERGEGUARD_DB", str(tmp_path / "env.db"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    db = open_db()
    assert (tmp_path / "env.db").is_file()
    explicit = open_db(tmp_path / "explicit.db")
    assert (tmp_path / "explicit.db").is_file()
    monkeypatch.delenv("MERGEGUARD_DB")
    open_db()
    assert (tmp_path / "xdg" / "mergeguard" / "mergeguard.db").is_file()
    for store in (db, explicit):
        assert store.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert store.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    assert schema_version(explicit) == len(MIGRATIONS)
    again = open_db(tmp_path / "explicit.db")
    assert [r[0] for r in again.execute("SELECT name FROM mergeguard_migrations ORDER BY name")] == sorted(
        fn.__name__ for fn in MIGRATIONS
    )
    assert {"leaderboard", "lineage", "scores", "latest_verdicts"} <= set(again.view_names())


def test_foreign_keys_are_enforced(tmp_path: Path) -> None:
    db = open_db(tmp_path / "fk.db")
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO lineage_edges (child_id, parent_id, relation) VALUES (98, 99, 'merge')")


@pytest.mark.parametrize("kind", ["garbage", "foreign", "truncated"])
def test_refuses_corrupt_or_foreign_files_and_writes_nothing(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.db"
    if kind == "garbage":
        path.write_bytes(b"this is not a database at all" * 100)
    elif kind == "foreign":
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        conn.commit()
        conn.close()
    else:
        good = tmp_path / "good.db"
        db = open_db(good)
        upsert_model(db, "org/model")
        db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.conn.close()
        path.write_bytes(good.read_bytes()[:1500] + b"\0" * 100 + good.read_bytes()[1600:4096])
    before = _digest(path)
    with pytest.raises(DatabaseError, match="not a mergeguard|not a SQLite|corrupt"):
        open_db(path)
    assert main(["leaderboard", "--db", str(path)]) == 2
    assert main(["import", str(path), "--db", str(path)]) == 2
    assert _digest(path) == before
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0


def test_newer_database_is_refused(tmp_path: Path) -> None:
    db = open_db(tmp_path / "new.db")
    db.execute("INSERT INTO mergeguard_migrations (name, applied_at) VALUES ('m999_future', 'now')")
    with pytest.raises(DatabaseError, match="newer mergeguard"):
        open_db(tmp_path / "new.db")


def test_merge_recorded_twice_is_one_merge_and_one_model(tmp_path: Path) -> None:
    db = open_db(tmp_path / "m.db")
    parents = [("org/a", "merge", 0.6), ("org/b", "merge", 0.4), ("org/base", "base", None)]
    first = record_merge(
        db,
        output=tmp_path / "out",
        config_text="merge_method: ties\n",
        method="ties",
        parents=parents,
        seed=1,
        seconds=2.5,
        timings={"write": 1.0},
        tool_version="0.1",
    )
    second = record_merge(
        db,
        output=tmp_path / "out",
        config_text="merge_method: ties\n",
        method="ties",
        parents=parents,
        seed=1,
        seconds=3.0,
        status="ok",
    )
    assert first.created and not second.created and first.merge_id == second.merge_id
    assert db.execute("SELECT count(*) FROM merges").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM models").fetchone()[0] == 4
    assert db.execute("SELECT count(*) FROM lineage_edges").fetchone()[0] == 3
    assert db.execute("SELECT seconds FROM merges").fetchone()[0] == 3.0
    weights = dict(
        db.execute("SELECT p.ref, e.weight FROM lineage_edges e JOIN models p ON p.id = e.parent_id")
    )
    assert weights == {"org/a": 0.6, "org/b": 0.4, "org/base": None}
    third = record_merge(
        db, output=tmp_path / "out", config_text="merge_method: slerp\n", method="slerp", parents=parents[:2]
    )
    assert third.created and third.model_id == first.model_id


def test_audit_recorded_once_with_findings(tmp_path: Path) -> None:
    db = open_db(tmp_path / "a.db")
    report = {
        "findings": [
            {
                "model": "org/ft",
                "dataset": "leaky",
                "example": 7,
                "benchmark": "gsm8k",
                "split": "test",
                "item": 12,
                "item_id": None,
                "score": 0.93,
                "severity": "high",
                "inherited_from": None,
                "evidence": "Janet's ducks",
            },
        ],
        "models": [
            {
                "model": "org/ft",
                "verdict": "contaminated",
                "datasets": ["leaky"],
                "inherited_from": ["org/base"],
            },
            {"model": "leaky", "verdict": "contaminated", "kind": "dataset"},
            {"model": "org/merge", "verdict": "contaminated", "datasets": [], "inherited_from": ["org/ft"]},
            {"model": "org/clean", "verdict": "clean", "datasets": ["alpaca"], "inherited_from": None},
        ],
        "benchmark_rates": {"gsm8k": 0.001},
        "index_hash": "abc123",
        "thresholds": {"jaccard": 0.8},
    }
    audit_id = record_audit(db, report)
    assert record_audit(db, report) == audit_id
    assert db.execute("SELECT count(*) FROM audits").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM findings").fetchone()[0] == 1
    assert db.execute("SELECT count(*) FROM models WHERE ref = 'leaky'").fetchone()[0] == 0
    verdicts = dict(
        db.execute("SELECT model, verdict || coalesce(':' || inherited_from, '') FROM latest_verdicts")
    )
    assert verdicts == {"org/ft": "contaminated", "org/merge": "contaminated:org/ft", "org/clean": "clean"}
    bad = dict(report, models=[{"model": "org/x", "verdict": "maybe"}])
    with pytest.raises(DatabaseError, match="unknown"):
        record_audit(db, bad)
    assert db.execute("SELECT count(*) FROM models WHERE ref = 'org/x'").fetchone()[0] == 0
    record_check(db, "org/merge", "degraded", "perplexity 3x the parents'")
    assert db.execute("SELECT verdict FROM checks").fetchone()[0] == "degraded"


def test_fingerprint_params_and_card(models, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    base = models.base("llama", sharded=True)
    copy = shutil.copytree(base, tmp_path / "copy")
    tuned = models.finetune(base, seed=3, card={"datasets": ["alpaca"], "base_model": str(base)})
    info, info_copy, info_tuned = weights_info(base), weights_info(copy), weights_info(tuned)
    assert info is not None and info_copy is not None and info_tuned is not None
    assert info.fingerprint == info_copy.fingerprint != info_tuned.fingerprint
    expected = sum(t.numel() for p in tiny.weight_files(base) for t in load_file(p).values())
    assert info.param_count == expected and info.dtype == "F32"
    assert weights_info(tmp_path) is None
    db = open_db(tmp_path / "f.db")
    model_id = register_model(db, tuned)
    row = find_model(db, tuned)
    assert (
        row["id"] == model_id and row["param_count"] == expected and row["architecture"] == "LlamaForCausalLM"
    )
    assert row["fingerprint"] == info_tuned.fingerprint
    parent = db.execute(
        "SELECT p.ref, e.relation FROM lineage_edges e JOIN models p ON p.id = e.parent_id "
        "WHERE e.child_id = ?",
        [model_id],
    ).fetchall()
    assert parent == [(str(base.resolve()), "finetune")]


def test_user_text_is_bound_not_interpolated(tmp_path: Path) -> None:
    db = open_db(tmp_path / "inj.db")
    evil = "org/x'); DROP TABLE models; --"
    upsert_model(db, evil)
    assert find_model(db, evil)["ref"] == evil
    assert "models" in db.table_names()
    with pytest.raises(DatabaseError, match="not in the database"):
        find_model(db, "' OR 1=1 --")
    assert main(["lineage", "' OR '1'='1", "--db", str(tmp_path / "inj.db")]) == 2
    assert main(["history", 'x" OR 1=1', "--db", str(tmp_path / "inj.db"), "--format", "json"]) == 2
    assert json.loads(json.dumps(db.execute("SELECT count(*) FROM models").fetchone()[0])) == 1
