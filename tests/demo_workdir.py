"""A session fixture shared by the report, card and serve tests: one `mergeguard demo --fast` working
folder (real tiny models, a refused merge, a TIES merge, lm-eval scores, a real database), made once."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = pytest.StashKey[Path]()


def demo_folder(request: pytest.FixtureRequest) -> Path:
    """The demo's working folder (`mergeguard.db`, `models/`, `data/`, `merge-*.yml`), made once per test
    session (kept in the session's stash) whichever test module asks first."""
    stash = request.config.stash
    if DEMO not in stash:
        stash[DEMO] = _make(request.getfixturevalue("tmp_path_factory"))
    return stash[DEMO]


def _make(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("demo") / "work"
    env = {**os.environ, "MERGEGUARD_CACHE": str(work.parent / "cache"), "TQDM_DISABLE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mergeguard", "demo", "--fast", "--workdir", str(work)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with sqlite3.connect(work / "mergeguard.db") as db:  # settle the WAL: later reads leave the file as is
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return work


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
