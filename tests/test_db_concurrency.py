"""Several processes writing one database file at once lose nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mergeguard.db import leaderboard, open_db
from mergeguard.db.migrations import MIGRATIONS

WRITER = """
import sys
from mergeguard.db import EvaluationRow, ResultsFile, open_db, record_evaluations, record_merge
path, worker, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
db = open_db(path)
for i in range(rounds):
    rows = [EvaluationRow(task="arc_challenge", metric="acc_norm", value=(worker * rounds + i) / 1000,
                          benchmark="arc_challenge", is_primary=True)]
    record_evaluations(db, ResultsFile(path=f"w{worker}-{i}.json", sha256=f"w{worker}-{i}",
                                       model_ref=f"org/model-{worker}-{i % 3}", rows=rows))
    record_merge(db, output=f"org/merge-{worker}-{i}", config_text=f"cfg {worker} {i}", method="linear",
                 parents=[("org/shared-base", "base", None), (f"org/model-{worker}-{i % 3}", "merge", 1.0)])
print("done", worker)
"""


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    workers, rounds = 4, 15
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), str(w), str(rounds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(workers)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err

    db = open_db(path)
    count = lambda sql: db.execute(sql).fetchone()[0]  # noqa: E731
    assert count("SELECT count(*) FROM results_files") == workers * rounds
    assert count("SELECT count(*) FROM evaluations") == workers * rounds
    assert count("SELECT count(*) FROM merges") == workers * rounds
    assert count("SELECT count(*) FROM lineage_edges") == 2 * workers * rounds
    assert count("SELECT count(*) FROM models WHERE ref = 'org/shared-base'") == 1
    assert count("SELECT count(*) FROM models") == 1 + workers * 3 + workers * rounds
    assert count("SELECT count(*) FROM mergeguard_migrations") == len(MIGRATIONS)
    assert len([r for r in leaderboard(db, limit=0).rows if r.scored]) == workers * 3  # + unscored merges
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
