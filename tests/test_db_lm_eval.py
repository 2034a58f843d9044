"""lm-eval end to end on a tiny model with a task built from the local benchmark files, then the results
file it wrote imported again; the older string-model_args layout; files that are not lm-eval's."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mergeguard.benchmarks.registry import REGISTRY
from mergeguard.cli import main
from mergeguard.db import leaderboard, open_db
from mergeguard.errors import MergeguardError
from mergeguard.evaluation import aggregate_group, import_results, parse_results_file, task_configs
from mergeguard.evaluation.task_yaml import group_task_files, lm_eval_task_yaml, load_task_yaml

OLD_LAYOUT = {  # lm-eval 0.3 as written by the Open LLM Leaderboard v1 era: string model_args, no filters
    "results": {
        "arc_challenge": {"acc": 0.5, "acc_stderr": 0.0146, "acc_norm": 0.5418, "acc_norm_stderr": 0.01456},
        "truthfulqa_mc": {"mc1": 0.3, "mc1_stderr": 0.016, "mc2": 0.4541, "mc2_stderr": "N/A"},
        "gsm8k": {"acc": 0.1213, "acc_stderr": 0.009},
    },
    "versions": {"arc_challenge": 0, "truthfulqa_mc": 1, "gsm8k": 0},
    "config": {
        "model": "hf-causal-experimental",
        "model_args": "pretrained=org/old-model,revision=main,dtype=float16",
        "num_fewshot": 25,
        "batch_size": "1",
        "limit": None,
        "bootstrap_iters": 100000,
    },
}


@pytest.fixture(scope="module")
def evaluated(models, shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """One lm-eval run through the CLI: arc_easy, 6 examples, 0-shot, offline from ../shared/data/hf."""
    folder = models.base("llama", seed=21)
    root = tmp_path_factory.mktemp("eval")
    db_path = root / "eval.db"
    code = main(
        [
            "eval",
            str(folder),
            "--tasks",
            "arc_easy",
            "--limit",
            "6",
            "--num-fewshot",
            "0",
            "--device",
            "cpu",
            "--benchmarks-dir",
            str(shared_data / "hf"),
            "--output-dir",
            str(root / "results"),
            "--db",
            str(db_path),
        ]
    )
    assert code == 0
    (results,) = sorted((root / "results").rglob("results_*.json"))
    return folder, db_path, results


def test_eval_stores_and_leaderboard_shows(evaluated, capsys: pytest.CaptureFixture[str]) -> None:
    folder, db_path, results = evaluated
    data = json.loads(results.read_text())
    acc_norm = data["results"]["arc_easy"]["acc_norm,none"]
    assert data["n-samples"]["arc_easy"]["effective"] == 6
    assert data["configs"]["arc_easy"]["dataset_path"] == "json"
    assert data["configs"]["arc_easy"]["doc_to_text"] == "Question: {{question}}\nAnswer:"  # lm-eval's prompt
    db = open_db(db_path)
    row = db.execute(
        "SELECT value, num_fewshot, sample_limit, n_samples, harness_version FROM evaluations "
        "WHERE task = 'arc_easy' AND metric = 'acc_norm' AND is_primary = 1"
    ).fetchone()
    assert row[0] == pytest.approx(acc_norm) and row[1:4] == (0, 6, 6) and row[4]
    capsys.readouterr()
    assert main(["leaderboard", "--db", str(db_path), "--format", "json"]) == 0
    board = json.loads(capsys.readouterr().out)
    assert board["columns"] == ["arc_easy"]
    (entry,) = board["rows"]
    assert entry["ref"] == str(folder.resolve()) and entry["scores"]["arc_easy"] == pytest.approx(
        acc_norm * 100
    )


def test_reimport_of_real_results_is_idempotent(evaluated, tmp_path: Path, capsys) -> None:
    folder, db_path, results = evaluated
    fresh = tmp_path / "import.db"
    assert main(["import", str(results.parent), "--db", str(fresh)]) == 0
    assert "imported 1 of 1" in capsys.readouterr().out
    assert main(["import", str(results), "--db", str(fresh)]) == 0
    assert "already imported" in capsys.readouterr().out
    db = open_db(fresh)
    assert db.execute("SELECT count(*) FROM results_files").fetchone()[0] == 1
    (ref,) = db.execute("SELECT ref FROM models").fetchone()
    assert ref == str(folder.resolve())  # mapped by config.model_args pretrained=
    original = (
        open_db(db_path)
        .execute("SELECT task, metric, filter, value FROM evaluations ORDER BY 1, 2")
        .fetchall()
    )
    assert (
        db.execute("SELECT task, metric, filter, value FROM evaluations ORDER BY 1, 2").fetchall() == original
    )
    assert (
        db.execute("SELECT sha256 FROM results_files").fetchone()[0]
        == hashlib.sha256(results.read_bytes()).hexdigest()
    )


def test_old_layout_with_string_model_args(tmp_path: Path) -> None:
    path = tmp_path / "results_old.json"
    path.write_text(json.dumps(OLD_LAYOUT))
    parsed = parse_results_file(path)
    assert parsed.model_ref == "org/old-model" and parsed.sample_limit is None
    primary = {(r.benchmark, r.metric): r.value for r in parsed.rows if r.is_primary}
    assert primary == {
        ("arc_challenge", "acc_norm"): 0.5418,
        ("truthfulqa_mc", "mc2"): 0.4541,
        ("gsm8k", "acc"): 0.1213,
    }
    stderr = {(r.task, r.metric): r.stderr for r in parsed.rows}
    assert stderr[("truthfulqa_mc", "mc2")] is None and stderr[("arc_challenge", "acc_norm")] == 0.01456
    assert {r.num_fewshot for r in parsed.rows} == {25}
    db = open_db(tmp_path / "old.db")
    summary = import_results(db, [path])
    assert (summary.imported, summary.evaluations) == (1, 5)
    (row,) = leaderboard(db, suite="v1").rows
    assert row.model == "org/old-model"
    assert row.average == pytest.approx((54.18 + 45.41 + 12.13) / 3)
    assert row.scores["hellaswag"] is None


@pytest.mark.parametrize(
    "content",
    [
        "not json at all",
        json.dumps({"results": {"x": {"acc": 1}}}),  # no config/versions/n-shot: not lm-eval's
        json.dumps({"config": {"model_args": "pretrained=a"}, "results": {}}),
        json.dumps([1, 2, 3]),
    ],
)
def test_not_lm_eval_results_write_nothing(tmp_path: Path, content: str, capsys) -> None:
    good = tmp_path / "results_good.json"
    good.write_text(json.dumps(OLD_LAYOUT))
    bad = tmp_path / "results_bad.json"
    bad.write_text(content)
    db_path = tmp_path / "x.db"
    assert main(["import", str(good), str(bad), "--db", str(db_path)]) == 2
    assert "not an lm-eval results file" in capsys.readouterr().err
    db = open_db(db_path)
    assert db.execute("SELECT count(*) FROM evaluations").fetchone()[0] == 0
    assert db.execute("SELECT count(*) FROM models").fetchone()[0] == 0
    with pytest.raises(MergeguardError):
        import_results(db, [tmp_path / "missing.json"])


def test_eval_needs_a_model_folder_and_tasks(tmp_path: Path, capsys) -> None:
    db_path = tmp_path / "e.db"
    assert main(["eval", str(tmp_path / "nope"), "--tasks", "arc_easy", "--db", str(db_path)]) == 2
    assert "not a local model folder" in capsys.readouterr().err
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    assert main(["eval", str(tmp_path / "m"), "--db", str(db_path)]) == 2
    assert main(["eval", str(tmp_path / "m"), "--tasks", "nonsense", "--db", str(db_path)]) == 2
    assert open_db(db_path).execute("SELECT count(*) FROM models").fetchone()[0] == 0


def test_group_benchmarks_run_as_subtasks(shared_data: Path) -> None:
    from datasets import Dataset

    configs, plan = task_configs("mmlu", shared_data / "hf")
    assert plan is not None and plan.name == "mmlu" and len(configs) == 57
    anatomy = next(c for c in configs if c["task"] == "mmlu_anatomy")
    assert anatomy["dataset_kwargs"]["data_files"]["dev"][0].endswith("mmlu/dev.jsonl")
    assert anatomy["fewshot_split"] == "dev" and anatomy["num_fewshot"] == 5
    rows = Dataset.from_list([{"subject": "anatomy", "q": 1}, {"subject": "virology", "q": 2}])
    assert anatomy["process_docs"](rows)["q"] == [1]
    bbh, bbh_plan = task_configs("bbh", shared_data / "hf", num_fewshot=0)
    assert bbh_plan is not None and len(bbh) == 24 and {c["num_fewshot"] for c in bbh} == {0}
    snarks = next(c for c in bbh if c["task"] == "leaderboard_bbh_snarks")
    assert snarks["dataset_kwargs"]["data_files"]["test"][0].endswith("bbh/snarks.jsonl")
    results = {
        "results": {"mmlu_anatomy": {"acc,none": 0.5}, "mmlu_virology": {"acc,none": 0.2}},
        "n-samples": {"mmlu_anatomy": {"effective": 30}, "mmlu_virology": {"effective": 10}},
    }
    aggregate_group(results, type(plan)("mmlu", "acc", ("mmlu_anatomy", "mmlu_virology")))
    assert results["results"]["mmlu"]["acc,none"] == pytest.approx((0.5 * 30 + 0.2 * 10) / 40)
    with pytest.raises(MergeguardError, match="offline|cannot split"):
        task_configs("math_hard", shared_data / "hf")


def _comparable(value: object) -> object:
    """A config value with functions named by module and name, so two loaders' outputs compare."""
    if callable(value):
        return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', '')}"
    if isinstance(value, dict):
        return {key: _comparable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_comparable(item) for item in value]
    return value


def test_task_yaml_reads_like_lm_eval() -> None:
    """Our reader of lm-eval's YAML (includes, `!function`) gives lm-eval's own loader's config for every
    task the registry runs offline; lm-eval's loader is private, so it is the oracle here only."""
    loader = pytest.importorskip("lm_eval.tasks._yaml_loader")
    paths: list[Path] = []
    for spec in REGISTRY.values():
        try:
            paths.append(lm_eval_task_yaml(spec.lm_eval_task))
        except MergeguardError:
            paths += group_task_files(spec.lm_eval_task)[:3]
    assert len(paths) >= len(REGISTRY)
    functions = 0
    for path in paths:
        try:
            ours = load_task_yaml(path)
        except ModuleNotFoundError as error:  # a task's own dependency (ifeval: langdetect) not installed
            with pytest.raises(ModuleNotFoundError, match=str(error.name)):
                loader.load_yaml(path)
            continue
        assert _comparable(ours) == _comparable(loader.load_yaml(path)), path
        functions += sum(callable(value) for value in ours.values())
    assert functions > 0  # some of these tasks name `!function`s: the tag was exercised
