"""A three-generation family: base, two fine-tunes, their merge, and a merge of that merge with another
model. Averages, deltas against the best parent, inherited datasets and contamination, checked by value;
the leaderboard's suites, clean-only filter and formats; history."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from mergeguard.cli import main
from mergeguard.db import (
    EvaluationRow,
    ResultsFile,
    history,
    leaderboard,
    lineage,
    open_db,
    record_audit,
    record_evaluations,
    record_merge,
    register_model,
    upsert_model,
)

SCORES = {  # model -> {benchmark: value}
    "base": {"arc_challenge": 0.30, "winogrande": 0.50},
    "ft1": {"arc_challenge": 0.40, "winogrande": 0.60},
    "ft2": {"arc_challenge": 0.35, "winogrande": 0.55},
    "merge1": {"arc_challenge": 0.45, "winogrande": 0.61},
    "other": {"arc_challenge": 0.50},
    "merge2": {"arc_challenge": 0.47, "winogrande": 0.60, "gpqa_diamond": 0.40},
}
TASK = {
    "arc_challenge": ("arc_challenge", "acc_norm"),
    "winogrande": ("winogrande", "acc"),
    "gpqa_diamond": ("leaderboard_gpqa_diamond", "acc_norm"),
}


def _score(db, ref: str, values: dict[str, float]) -> None:
    rows = [
        EvaluationRow(task=TASK[b][0], metric=TASK[b][1], value=v, benchmark=b, is_primary=True)
        for b, v in values.items()
    ]
    rows.append(EvaluationRow(task="arc_challenge", metric="acc", value=0.01, benchmark="arc_challenge"))
    record_evaluations(db, ResultsFile(path=f"{ref}.json", sha256=f"hash-{ref}", model_ref=ref, rows=rows))


def _audit(base: Path, ft1: Path, ft2: Path, merge2: Path) -> dict[str, Any]:
    """An audit report: ft1 trained on a leaked GSM8K test item, the others clean."""
    return {
        "findings": [
            {
                "model": str(ft1),
                "dataset": "leaky/gsm8k-test",
                "example": 0,
                "benchmark": "gsm8k",
                "split": "test",
                "item": 3,
                "item_id": None,
                "score": 1.0,
                "severity": "high",
                "inherited_from": None,
                "evidence": "x",
            }
        ],
        "models": [
            {"model": str(base), "verdict": "clean", "datasets": [], "inherited_from": None},
            {
                "model": str(ft1),
                "verdict": "contaminated",
                "datasets": ["leaky/gsm8k-test"],
                "inherited_from": None,
            },
            {
                "model": str(ft2),
                "verdict": "clean",
                "datasets": ["tatsu-lab/alpaca"],
                "inherited_from": None,
            },
            {"model": "org/other", "verdict": "clean", "datasets": [], "inherited_from": None},
            {
                "model": str(merge2),
                "verdict": "clean",
                "datasets": [],
                "inherited_from": None,
            },
        ],
        "benchmark_rates": {},
        "index_hash": "idx",
        "thresholds": {},
    }


@pytest.fixture
def family(models, tmp_path: Path):
    base = models.base("llama", seed=11)
    ft1 = models.finetune(base, seed=1, card={"datasets": ["leaky/gsm8k-test"], "base_model": str(base)})
    ft2 = models.finetune(base, seed=2, card={"datasets": ["tatsu-lab/alpaca"], "base_model": str(base)})
    db_path = tmp_path / "family.db"
    db = open_db(db_path)
    register_model(db, base, name="base", datasets=[])
    register_model(db, ft1, name="ft1")
    register_model(db, ft2, name="ft2")
    merge1 = tmp_path / "merge1"
    record_merge(
        db,
        output=merge1,
        config_text="ties 1",
        method="ties",
        parents=[(ft1, "merge", 0.7), (ft2, "merge", 0.3), (base, "base", None)],
        name="merge1",
    )
    record_merge(
        db,
        output=tmp_path / "merge2",
        config_text="slerp 2",
        method="slerp",
        parents=[(merge1, "merge", 0.3), ("org/other", "merge", None)],
        name="merge2",
    )
    upsert_model(db, "org/other", name="other")
    refs = {
        "base": base,
        "ft1": ft1,
        "ft2": ft2,
        "merge1": merge1,
        "other": "org/other",
        "merge2": tmp_path / "merge2",
    }
    for name, values in SCORES.items():
        _score(db, str(refs[name]) if name == "other" else str(Path(refs[name]).resolve()), values)
    record_audit(db, _audit(base, ft1, ft2, tmp_path / "merge2"))
    return db, db_path


def test_lineage_deltas_and_inherited_contamination(family) -> None:
    db, _ = family
    graph = lineage(db, "merge2")
    nodes = {n.model: n for n in graph.nodes}
    assert set(nodes) == {"base", "ft1", "ft2", "merge1", "other", "merge2"}
    assert (
        nodes["merge2"].depth == 0 and nodes["merge1"].depth == -1 and nodes["base"].depth == -2
    )  # also merge1's base model
    # merge2 vs merge1 on arc+winogrande: (47+60)/2 - (45+61)/2 = +0.5; vs other on arc only: 47-50
    assert nodes["merge2"].best_parent == "merge1"
    assert nodes["merge2"].delta == pytest.approx(0.5)
    assert nodes["merge2"].average == pytest.approx((47 + 60 + 40) / 3)
    # merge1 vs ft1 (the better parent, 50): 53 - 50 = +3
    assert nodes["merge1"].best_parent == "ft1" and nodes["merge1"].delta == pytest.approx(3.0)
    assert nodes["ft2"].delta == pytest.approx(45 - 40) and nodes["base"].delta is None
    assert nodes["merge1"].method == "ties" and nodes["merge2"].method == "slerp"
    assert nodes["ft1"].method == "finetune" and nodes["base"].method is None
    # contamination: ft1 its own, merge1 inherited from ft1, merge2 audited clean but inherits through merge1
    assert (nodes["ft1"].verdict, nodes["ft1"].contaminated_via) == ("contaminated", None)
    assert (nodes["merge1"].verdict, nodes["merge1"].contaminated_via) == ("contaminated", "ft1")
    assert (nodes["merge2"].verdict, nodes["merge2"].contaminated_via) == ("contaminated", "ft1")
    assert (nodes["ft2"].verdict, nodes["other"].verdict) == ("clean", "clean")
    weights = {(e.child, e.parent): e.weight for e in graph.edges}
    assert weights[("merge1", "ft1")] == 0.7 and weights[("merge2", "merge1")] == 0.3
    down = lineage(db, "base")
    assert {n.model: n.depth for n in down.nodes} == {"base": 0, "ft1": 1, "ft2": 1, "merge1": 1, "merge2": 2}
    inherited = db.execute(
        "SELECT d.name, m.name FROM model_datasets x JOIN datasets d ON d.id = x.dataset_id "
        "JOIN models m ON m.id = x.inherited_from_id JOIN models c ON c.id = x.model_id "
        "WHERE c.name = 'merge2' ORDER BY d.name"
    ).fetchall()
    assert inherited == [("leaky/gsm8k-test", "ft1"), ("tatsu-lab/alpaca", "ft2")]


def test_leaderboard_suites_clean_only_and_missing(family) -> None:
    db, _ = family
    board = leaderboard(db, suite="v1")
    assert [r.model for r in board.rows] == ["merge2", "merge1", "ft1", "ft2", "base", "other"]
    top, second = board.rows[0], board.rows[1]
    assert top.average == pytest.approx(53.5) and top.is_merge and top.parents == ["merge1", "other"]
    assert second.average == pytest.approx(53.0) and second.parents == ["ft1", "ft2", "base"]
    assert (top.verdict, top.contaminated_via) == ("contaminated", "ft1")
    assert board.rows[-1].scores["winogrande"] is None and board.rows[-1].scores["arc_challenge"] == 50.0
    assert board.rows[-1].scores["gsm8k"] is None
    v2 = leaderboard(db, suite="v2")
    assert [r.model for r in v2.rows] == ["merge2"]
    assert v2.rows[0].average == pytest.approx((0.40 - 0.25) / 0.75 * 100)
    clean = leaderboard(db, suite="v1", clean_only=True)
    assert [r.model for r in clean.rows] == ["ft2", "base", "other"]
    only = leaderboard(db, tasks=["arc_challenge"])
    assert [r.model for r in only.rows][:2] == ["other", "merge2"] and only.columns == ["arc_challenge"]
    assert [r.model for r in leaderboard(db, limit=2).rows] == ["merge2", "merge1"]
    pair = ["arc_challenge", "winogrande"]
    every = [r.model for r in leaderboard(db, tasks=pair, limit=0).rows]  # grouping every row
    assert every == ["merge2", "merge1", "ft1", "ft2", "base", "other"]
    assert [r.model for r in leaderboard(db, tasks=pair, limit=3).rows] == every[:3]  # threshold algorithm
    assert [r.model for r in leaderboard(db, tasks=pair, limit=6).rows] == every  # too few complete: fallback


def test_reports_cli_formats(family, capsys: pytest.CaptureFixture[str]) -> None:
    _, path = family
    assert main(["leaderboard", "--db", str(path), "--format", "json", "--suite", "v1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rows"][1]["model"] == "merge1" and data["rows"][1]["verdict"] == "contaminated"
    assert main(["leaderboard", "--db", str(path), "--format", "csv", "--clean-only"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["model"] for r in rows] == ["ft2", "base", "other"] and rows[2]["winogrande"] == ""
    assert main(["leaderboard", "--db", str(path), "--format", "markdown", "--task", "winogrande"]) == 0
    assert capsys.readouterr().out.startswith("| # | model | winogrande |")
    assert main(["leaderboard", "--db", str(path)]) == 0
    assert "merge1" in capsys.readouterr().out
    assert main(["lineage", "merge1", "--db", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ancestors" in out and "descendants" in out and "via ft1" in out
    assert main(["lineage", "merge1", "--db", str(path), "--format", "mermaid"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("flowchart TD") and "-->|ties 0.7|" in out
    assert main(["lineage", "merge1", "--db", str(path), "--format", "dot"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("digraph lineage {") and 'label="ties 0.7"' in out
    assert main(["lineage", "merge1", "--db", str(path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["root"] == "merge1"
    assert main(["lineage", "nobody", "--db", str(path)]) == 2
    assert "not in the database" in capsys.readouterr().err
    assert main(["leaderboard", "--db", str(path), "--format", "xml"]) == 2
    assert main(["leaderboard", "--db", str(path), "--task", "nonsense"]) == 2


def test_history_newest_first_and_since(family, capsys: pytest.CaptureFixture[str]) -> None:
    db, path = family
    events = history(db)
    assert [e.at for e in events] == sorted((e.at for e in events), reverse=True)
    kinds = {e.kind for e in events}
    assert {"merge", "audit", "import"} <= kinds
    mine = history(db, "merge1")
    assert {(e.kind, e.model) for e in mine} >= {
        ("merge", "merge1"),
        ("merge", "merge2"),
        ("import", "merge1"),
    }
    assert all(e.model in ("merge1", "merge2") for e in mine)
    assert history(db, since="2999-01-01") == []
    assert main(["history", "merge1", "--db", str(path), "--since", "2000-01-01", "--format", "json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == len(mine)
    assert main(["history", "--db", str(path), "--since", "yesterday"]) == 2
