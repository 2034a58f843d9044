"""The guarded merge: refusal, --allow-contaminated, undeclared inputs, audit reuse, merges of merges."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from quiz_setup import merge_config, quiz_args, quiz_family_data

from mergeguard.cli import main
from mergeguard.refs import read_model_card


@pytest.fixture(scope="module")
def family(models, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A base, two clean fine-tunes, one fine-tuned on benchmark items, one with no declared data."""
    root = tmp_path_factory.mktemp("guard")
    data = quiz_family_data(models, root, clean_rows=50, leaked=10, base_seed=11)
    base = data["base"]

    def ft(seed: int, datasets: list[str] | None) -> Path:
        # a card that names neither data nor parent: nothing anywhere in its lineage is declared
        card = {"base_model": str(base), "datasets": datasets} if datasets is not None else {"license": "mit"}
        return models.finetune(base, seed=seed, card=card)

    return {
        "root": root,
        "spec": data["spec"],
        "base": base,
        "a": ft(1, [str(data["math"])]),
        "b": ft(2, [str(data["writing"])]),
        "leaky": ft(3, [str(data["leaky"])]),
        "secret": ft(4, None),
    }


def _merge(family: dict[str, Path], tmp_path: Path, inputs: list[Path], *extra: str, out: str = "out") -> int:
    config = merge_config(tmp_path / f"{out}.yml", family["base"], inputs)
    return main(
        [
            "merge",
            str(config),
            str(tmp_path / out),
            "--quiet",
            "--db",
            str(tmp_path / "mg.db"),
            *quiz_args(family["spec"], tmp_path / "cache"),
            *extra,
        ]
    )


def _verdicts(db_path: Path) -> dict[str, str]:
    from mergeguard.db import contamination, open_db

    db = open_db(db_path)
    rows = db.execute("SELECT id, ref FROM models").fetchall()
    found = contamination(db, [r[0] for r in rows])
    return {ref: found[i].verdict for i, ref in rows}


def test_contaminated_input_is_refused_and_nothing_is_written(family, tmp_path, capsys) -> None:
    code = _merge(family, tmp_path, [family["a"], family["leaky"]])
    captured = capsys.readouterr()
    assert code == 1
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    assert "refusing to merge" in captured.err and str(family["leaky"]) in captured.err
    assert "--allow-contaminated" in captured.err
    assert "demo_quiz" in captured.out  # the audit table and its evidence are shown
    from mergeguard.db import open_db

    db = open_db(tmp_path / "mg.db")
    statuses = [row[0] for row in db.execute("SELECT status FROM merges").fetchall()]
    assert statuses == ["refused"]  # recorded for `history`, never as a merged model
    assert _verdicts(tmp_path / "mg.db")[str(family["leaky"])] == "contaminated"


def test_allow_contaminated_merges_and_the_merge_inherits(family, tmp_path) -> None:
    code = _merge(family, tmp_path, [family["a"], family["leaky"]], "--allow-contaminated")
    assert code == 0
    out = tmp_path / "out"
    verdicts = _verdicts(tmp_path / "mg.db")
    assert verdicts[str(out)] == "contaminated"
    card = read_model_card(out)
    assert card.base_model_relation == "merge"
    assert any("leaky.jsonl" in d for d in card.datasets)
    body = (out / "README.md").read_text()
    assert "## Contamination" in body and "contaminated" in body and str(family["leaky"]) in body
    from mergeguard.db import open_db

    db = open_db(tmp_path / "mg.db")
    guard = json.loads(db.execute("SELECT guard FROM merges").fetchone()[0])
    assert guard["allow_contaminated"] is True and guard["verdict"] == "contaminated"
    findings = db.execute(
        "SELECT count(*) FROM findings f JOIN models m ON m.id = f.model_id WHERE m.ref = ?", [str(out)]
    ).fetchone()[0]
    assert findings >= 10  # every leaked item, inherited


def test_undeclared_input_makes_an_undeclared_merge(family, tmp_path, capsys) -> None:
    code = _merge(family, tmp_path, [family["a"], family["secret"]])
    assert code == 0
    assert "undeclared" in capsys.readouterr().err
    assert _verdicts(tmp_path / "mg.db")[str(tmp_path / "out")] == "undeclared"


def test_clean_merge_reuses_the_stored_audit(family, tmp_path) -> None:
    from mergeguard.auditor import AuditOptions
    from mergeguard.auditor.report import Verdict
    from mergeguard.guardrails import GuardOptions, guarded_merge
    from mergeguard.merge import MergeOptions, load_config

    options = AuditOptions(
        benchmarks=["demo_quiz"], custom_specs=[family["spec"]], cache_dir=tmp_path / "cache"
    )
    guard = GuardOptions(audit=options, db_path=tmp_path / "mg.db")
    config = merge_config(tmp_path / "c.yml", family["base"], [family["a"], family["b"]])
    merge_options = MergeOptions(quiet=True)
    before = copy.deepcopy((guard, merge_options))
    first = guarded_merge(config, tmp_path / "m1", merge_options, guard)
    assert (guard, merge_options) == before  # the caller's options are read, never changed
    parsed = load_config(config)  # a caller that parsed the config passes it on (parsed once)
    second = guarded_merge(parsed, tmp_path / "m2", MergeOptions(quiet=True), guard)
    assert first.verdict == second.verdict == "clean"
    assert first.verdict is Verdict.CLEAN and json.dumps(first.verdict) == '"clean"'
    assert first.audit is not None and not first.audit.reused
    assert second.audit is not None and second.audit.reused
    assert second.audit.audit_id == first.audit.audit_id
    # a changed dataset file is a different audit
    data = Path(read_model_card(family["a"]).datasets[0])
    original = data.read_text()
    try:
        data.write_text(original + json.dumps({"instruction": "x", "input": "", "output": "y"}) + "\n")
        third = guarded_merge(config, tmp_path / "m3", MergeOptions(quiet=True), guard)
        assert third.audit is not None and not third.audit.reused
    finally:
        data.write_text(original)


def test_no_audit_is_recorded_as_unaudited(family, tmp_path) -> None:
    assert _merge(family, tmp_path, [family["a"], family["leaky"]], "--no-audit") == 0
    from mergeguard.db import open_db

    db = open_db(tmp_path / "mg.db")
    guard = json.loads(db.execute("SELECT guard FROM merges").fetchone()[0])
    assert guard["audited"] is False
    assert "Not audited" in (tmp_path / "out" / "README.md").read_text()


def test_merge_of_a_merge_inherits_a_grandparents_contamination(family, tmp_path) -> None:
    assert _merge(family, tmp_path, [family["a"], family["leaky"]], "--allow-contaminated", out="gen1") == 0
    gen1 = tmp_path / "gen1"
    # the second generation refuses: the contamination flows from the grandparent through gen1's card
    assert _merge(family, tmp_path, [gen1, family["b"]], out="gen2") == 1
    assert not (tmp_path / "gen2").exists()
    assert _merge(family, tmp_path, [gen1, family["b"]], "--allow-contaminated", out="gen2") == 0
    verdicts = _verdicts(tmp_path / "mg.db")
    assert verdicts[str(tmp_path / "gen2")] == "contaminated"
    from mergeguard.auditor import AuditOptions, audit_models

    report = audit_models(
        [str(tmp_path / "gen2")],
        AuditOptions(benchmarks=["demo_quiz"], custom_specs=[family["spec"]], cache_dir=tmp_path / "cache"),
    )
    assert report.models[0].verdict == "contaminated"
    assert any(f.inherited_from == str(family["leaky"]) for f in report.findings)


def test_demo_runs_end_to_end(tmp_path, capsys) -> None:
    code = main(["demo", "--fast", "--workdir", str(tmp_path / "demo")])
    out = capsys.readouterr().out
    assert code == 0
    for heading in ("Step 1", "Step 2", "Step 3", "Step 4", "Step 5", "Explore further"):
        assert heading in out
    assert "refused" in out and "contaminated" in out
    assert (tmp_path / "demo" / "models" / "merge-clean" / "config.json").is_file()
    assert not (tmp_path / "demo" / "models" / "merge-all").exists()
    assert "Traceback" not in out


def test_merge_check_is_stored_and_shown(family, tmp_path) -> None:
    from mergeguard.db import latest_checks, lineage, open_db, render_lineage

    code = _merge(family, tmp_path, [family["a"], family["b"]], "--check")
    codes = {"ok": 0, "degraded": 3, "broken": 4}
    db = open_db(tmp_path / "mg.db")
    row = db.execute(
        "SELECT m.id, c.verdict, c.detail FROM checks c JOIN models m ON m.id = c.model_id"
    ).fetchone()
    assert row is not None and code == codes[row[1]] and "perplexity" in row[2]
    assert latest_checks(db, [row[0]]) == {row[0]: row[1]}
    graph = lineage(db, str(tmp_path / "out"))
    merged = next(n for n in graph.nodes if n.ref == str(tmp_path / "out"))
    assert merged.check == row[1]
    assert all(n.check is None for n in graph.nodes if n is not merged)
    assert f"check {row[1]}" in render_lineage(graph, "mermaid")


def test_audit_of_a_config_shows_the_family_check(family, tmp_path, capsys) -> None:
    config = merge_config(tmp_path / "c.yml", family["base"], [family["a"], family["b"]])
    args = ["audit", str(config), "--benchmark-spec", str(family["spec"]), "--benchmark", "demo_quiz"]
    assert main([*args, "--no-progress"]) == 0
    assert "family check" in capsys.readouterr().out
    assert main([*args, "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["family"]["related"] is True
    assert {p["b"] for p in payload["family"]["pairs"]} == {str(family["a"]), str(family["b"])}


def test_merge_records_the_inputs_card_lineage(family, tmp_path) -> None:
    from mergeguard.db import lineage, open_db

    assert _merge(family, tmp_path, [family["a"], family["b"]]) == 0
    db = open_db(tmp_path / "mg.db")
    graph = lineage(db, str(family["a"]))
    edges = {(e.child, e.parent, e.relation) for e in graph.edges}
    assert (family["a"].name, family["base"].name, "finetune") in edges
    assert ("out", family["a"].name, "merge") in edges


def test_merge_checks_its_audit_options_like_audit(family, tmp_path, capsys) -> None:
    assert _merge(family, tmp_path, [family["a"]], "--threshold-rate", "2") == 2
    assert "--threshold-rate 2.0 is not a rate" in capsys.readouterr().err
    assert _merge(family, tmp_path, [family["a"]], "--dataset", "data.jsonl") == 2
    assert not (tmp_path / "out").exists()
