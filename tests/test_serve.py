"""Datasette that explains itself (issue 18, item 3): mergeguard's metadata (titles and descriptions of
every table, view and column, facets, sort orders, a leaderboard with per-benchmark scores and inherited
verdicts, findings with the item's text) checked through Datasette's own test client on a demo database,
and `mergeguard serve` itself."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from demo_workdir import demo_folder, sha256

from mergeguard.cli import main
from mergeguard.db import add_edge, find_model, open_db, transaction
from mergeguard.reports.datasette import datasette_metadata, make_datasette


@pytest.fixture(scope="session")
def demo(request: pytest.FixtureRequest) -> Path:
    return demo_folder(request)


def _get(db: Path, *paths: str) -> list[Any]:
    """GET each path with Datasette's test client; JSON bodies decoded, HTML as text."""
    server = make_datasette(db)

    async def fetch() -> list[Any]:
        out = []
        for path in paths:
            response = await server.client.get(path)
            assert response.status_code == 200, (path, response.text[:500])
            out.append(response.json() if ".json" in path else response.text)
        return out

    return asyncio.run(fetch())


def test_every_table_view_and_column_is_described(demo: Path) -> None:
    db = demo / "mergeguard.db"
    meta = datasette_metadata(db)["databases"]["mergeguard"]
    with sqlite3.connect(db) as conn:
        shown = conn.execute(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite_%'"
        ).fetchall()
        for (name,) in shown:
            entry = meta["tables"].get(name)
            assert entry and entry.get("title") and entry.get("description"), f"describe table {name}"
            columns = [row[1] for row in conn.execute(f'PRAGMA table_info("{name}")')]
            missing = [c for c in columns if not entry.get("columns", {}).get(c)]
            assert not missing, f"describe {name}'s columns {missing} in datasette-metadata.yaml"


def test_datasette_serves_the_metadata_facets_and_queries(demo: Path) -> None:
    db = demo / "mergeguard.db"
    before = sha256(db)
    home, findings, table, items, filtered, board = _get(
        db,
        "/mergeguard",
        "/mergeguard/findings.json",
        "/mergeguard/findings",
        "/mergeguard/findings_with_items.json?_shape=array",
        "/mergeguard/findings_with_items.json?_shape=array&benchmark=nope&model=",
        "/mergeguard/leaderboard_by_benchmark.json?_shape=array",
    )
    assert "One SQLite file of everything mergeguard did" in home
    assert "Leaderboard with per-benchmark scores and inherited verdicts" in home
    assert set(findings["facet_results"]) >= {"benchmark", "severity", "dataset"}
    assert findings["human_description_en"] == "sorted by score descending"
    assert "Benchmark test items found in training data" in table
    assert len(items) == 20 and all(row["item_text"] and row["training_text"] for row in items)
    assert {row["severity"] for row in items} == {"verbatim"} and filtered == []
    verdicts = {row["model"]: row["verdict"] for row in board}
    assert verdicts["ft-leaky"] == "contaminated" and verdicts["merge-clean"] == "clean"
    assert json.loads(board[0]["scores"]).keys() == {"demo_quiz"}
    assert sha256(db) == before  # Datasette only reads


def test_leaderboard_query_inherits_verdicts_like_the_cli(demo: Path, tmp_path: Path, capsys) -> None:
    db = tmp_path / "mergeguard.db"
    shutil.copy(demo / "mergeguard.db", db)

    handle = open_db(db)
    with transaction(handle):  # ft-leaky becomes a parent of the merge: it inherits the contamination
        add_edge(
            handle, find_model(handle, "merge-clean")["id"], find_model(handle, "ft-leaky")["id"], "merge"
        )
    handle.conn.close()
    (board,) = _get(db, "/mergeguard/leaderboard_by_benchmark.json?_shape=array")
    assert main(["leaderboard", "--db", str(db), "--format", "json"]) == 0
    cli = json.loads(capsys.readouterr().out)["rows"]
    expected = {
        r["model"]: f"{r['verdict']} (via {r['contaminated_via']})" if r["contaminated_via"] else r["verdict"]
        for r in cli
    }
    assert {row["model"]: row["verdict"] for row in board} == expected
    assert expected["merge-clean"] == "contaminated (via ft-leaky)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_command(demo: Path, tmp_path: Path, capsys) -> None:
    db = demo / "mergeguard.db"
    assert main(["serve", "--db", str(db), "--metadata-out", str(tmp_path / "meta.json")]) == 0
    assert json.loads((tmp_path / "meta.json").read_text())["databases"]["mergeguard"]["tables"]["findings"]
    assert main(["serve", "--db", str(tmp_path / "none.db")]) == 2
    assert "error: no database at" in capsys.readouterr().err and not (tmp_path / "none.db").exists()
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mergeguard", "serve", "--db", str(db), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        body = ""
        for _ in range(100):
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/mergeguard/findings", timeout=2
                ) as page:
                    body = page.read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert "Benchmark test items found in training data" in body
    finally:
        server.terminate()
        server.wait(timeout=10)
