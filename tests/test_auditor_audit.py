"""Auditor entry points: datasets and their schemas, lineage, the report, and `mergeguard audit`."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from mergeguard.auditor import AuditOptions, audit_config, audit_datasets, audit_models, dataset_texts
from mergeguard.auditor.datasets import example_text
from mergeguard.auditor.lineage import resolve_lineage
from mergeguard.cli import main
from mergeguard.errors import DatasetError

BENCH_ARGS = ["--benchmark", "truthfulqa_mc", "--benchmark", "gsm8k"]


@pytest.fixture(scope="session")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit-cli-cache")


@pytest.fixture(scope="session")
def options(shared_data: Path, cache: Path) -> AuditOptions:
    return AuditOptions(
        benchmarks=["truthfulqa_mc", "gsm8k"], benchmarks_dir=shared_data / "hf", cache_dir=cache
    )


@pytest.fixture(scope="session")
def gsm8k_rows(shared_data: Path) -> list[dict]:
    return [json.loads(line) for line in (shared_data / "hf/gsm8k/test.jsonl").read_text().splitlines()[:40]]


@pytest.fixture
def contaminated(tmp_path: Path, gsm8k_rows: list[dict], shared_data: Path) -> Path:
    """30 Alpaca rows with GSM8K test items 3 (verbatim) and 5 (question only) planted at rows 10 and 20."""
    rows = json.loads((shared_data / "corpora/alpaca/alpaca_5000.json").read_text())[:30]
    rows[10] = {"instruction": gsm8k_rows[3]["question"], "input": "", "output": gsm8k_rows[3]["answer"]}
    rows[20] = {"instruction": "Solve: " + gsm8k_rows[5]["question"], "input": "", "output": "Let me think."}
    path = tmp_path / "sft.json"
    path.write_text(json.dumps(rows))
    return path


@pytest.fixture
def clean(tmp_path: Path, shared_data: Path) -> Path:
    rows = json.loads((shared_data / "corpora/alpaca/alpaca_5000.json").read_text())[100:140]
    path = tmp_path / "clean.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- datasets


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"instruction": "I", "input": "N", "output": "O"}, "I\nN\nO"),
        ({"prompt": "P", "chosen": "C", "rejected": "R"}, "P\nC\nR"),
        ({"prompt": "P", "completion": "X", "meta": "kept"}, "P\nX\nkept"),
        ({"question": "Q", "answer": "A", "id": 3}, "Q\nA"),
        ({"text": "T", "source": "web", "choices": ["a", "b"]}, "T\nweb\na\nb"),
        ({"messages": [{"role": "user", "content": "U"}, {"role": "assistant", "content": "V"}]}, "U\nV"),
        ({"conversations": [{"from": "human", "value": "H"}, {"from": "gpt", "value": "G"}]}, "H\nG"),
        (
            {"chosen": [{"role": "user", "content": "U"}], "rejected": [{"role": "user", "content": "W"}]},
            "U\nW",
        ),
        ({"unknown": "Z", "n": 1}, "Z"),
    ],
)
def test_schema_detection(row: dict, expected: str) -> None:
    assert example_text(row) == expected


def test_text_field_override_and_missing_field(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"a": {"b": "deep"}, "text": "top"}) + "\n")
    assert list(dataset_texts(str(path), only_text_field="a.b")) == ["deep"]
    assert list(dataset_texts(str(path))) == ["top\ndeep"]  # every string counts by default
    with pytest.raises(DatasetError, match="no field 'nope'"):
        list(dataset_texts(str(path), "nope"))


def test_file_formats_disk_folder_and_hub_path_offline(tmp_path: Path, monkeypatch) -> None:
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "p0", "response": "r0"}, {"prompt": "p1", "response": "r1"}]
    expected = ["p0\nr0", "p1\nr1"]
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "b.csv").write_text("prompt,response\np0,r0\np1,r1\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    (tmp_path / "d.txt").write_text("p0\nr0\n\n")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "disk"))
    (tmp_path / "hub" / "data").mkdir(parents=True)
    (tmp_path / "hub" / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    for name in ("a.jsonl.gz", "b.csv", "c.parquet", "disk", "hub"):
        assert list(dataset_texts(str(tmp_path / name))) == expected, name
    assert list(dataset_texts(str(tmp_path / "d.txt"))) == ["p0", "r0"]
    with pytest.raises(DatasetError, match="not found"):
        list(dataset_texts(str(tmp_path / "missing.jsonl")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError, match="cannot load dataset"):
        list(dataset_texts("no-such-org/no-such-dataset-xyz"))


# ---------------------------------------------------------------- library audits


def test_audit_datasets_reports_findings_with_item_rows(contaminated: Path, options: AuditOptions) -> None:
    report = audit_datasets([str(contaminated)], options)
    got = {(f.example, f.benchmark, f.item, f.severity) for f in report.findings}
    assert (10, "gsm8k", 3, "verbatim") in got and (20, "gsm8k", 5, "question_only") in got
    assert {f.example for f in report.findings} == {10, 20}
    assert report.contaminated and report.models[0].verdict == "contaminated"
    data = report.to_json()
    assert set(data["findings"][0]) >= {
        "model",
        "dataset",
        "example",
        "benchmark",
        "split",
        "item",
        "item_id",
        "score",
        "severity",
        "inherited_from",
        "evidence",
    }
    assert (
        data["benchmark_rates"]["gsm8k"]["contaminated"] == 2
        and data["benchmark_rates"]["gsm8k"]["items"] == 1319
    )
    json.dumps(data)


def test_rate_threshold_without_verbatim_rule(contaminated: Path, options: AuditOptions) -> None:
    lenient = AuditOptions(**{**vars(options), "fail_on_verbatim": False, "threshold_rate": 0.5})
    assert not audit_datasets([str(contaminated)], lenient).contaminated


def test_lineage_inherits_and_marks_the_ancestor(
    tmp_path: Path, write_card, contaminated: Path, clean: Path, options: AuditOptions
) -> None:
    parent, child, orphan, merged = (tmp_path / n for n in ("parent", "child", "orphan", "merged"))
    for folder in (parent, child, orphan, merged):
        folder.mkdir()
    write_card(parent, datasets=[str(contaminated)])
    write_card(child, datasets=[str(clean)], base_model=str(parent))
    write_card(orphan, base_model="./definitely-not-here")
    (merged / "mergekit_config.yml").write_text(
        f"merge_method: linear\nmodels:\n  - model: {child}\n    parameters: {{weight: 1.0}}\n"
        f"  - model: {orphan}\n    parameters: {{weight: 1.0}}\n"
    )
    lineage = resolve_lineage(str(merged))
    assert {(d.ref, d.inherited_from) for d in lineage.datasets} == {
        (str(clean), str(child)),
        (str(contaminated), str(parent)),
    }
    report = audit_models([str(merged), str(orphan), str(child)], options)
    verdicts = {v.model: v.verdict for v in report.models}
    assert verdicts == {str(merged): "contaminated", str(orphan): "undeclared", str(child): "contaminated"}
    inherited = {(f.model, f.inherited_from) for f in report.findings}
    assert (str(merged), str(parent)) in inherited and (str(child), str(parent)) in inherited
    assert any("could not be read" in p for p in report.problems)
    override = AuditOptions(**{**vars(options), "dataset_overrides": {str(child): [str(clean)]}})
    assert audit_models([str(child)], override).models[0].verdict == "contaminated"  # parent still counts
    override = AuditOptions(**{**vars(options), "dataset_overrides": {"parent": [str(clean)]}})
    assert audit_models([str(child)], override).models[0].verdict == "clean"
    config = tmp_path / "merge.yml"
    config.write_text(f"merge_method: slerp\nbase_model: {orphan}\nmodels:\n  - model: {child}\n")
    assert {v.model for v in audit_config(config, options).models} == {str(orphan), str(child)}


# ---------------------------------------------------------------- CLI


def test_cli_exit_codes_and_json(
    contaminated: Path, clean: Path, shared_data: Path, cache: Path, capsys
) -> None:
    common = [
        *BENCH_ARGS,
        "--benchmarks-dir",
        str(shared_data / "hf"),
        "--cache-dir",
        str(cache),
        "--no-progress",
    ]
    assert main(["audit", "--dataset", str(clean), *common]) == 0
    assert main(["audit", "--dataset", str(contaminated), *common, "--json"]) == 1
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert data["contaminated"] is True and {f["example"] for f in data["findings"]} == {10, 20}
    assert main(["audit", "--dataset", str(contaminated), *common]) == 1
    out = capsys.readouterr().out
    assert "contaminated" in out and "gsm8k" in out and "verbatim" in out
    assert (
        main(
            ["audit", "--dataset", str(contaminated), *common, "--threshold-rate", "0.9", "--allow-verbatim"]
        )
        == 0
    )
    assert main(["audit", "--dataset", str(shared_data / "nope.jsonl"), *common]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["audit", *common]) == 2
    assert main(["audit", "--dataset", "=x", *common]) == 2


def test_cli_model_with_dataset_override(
    tmp_path: Path, contaminated: Path, shared_data: Path, cache: Path, write_card, capsys
) -> None:
    model = tmp_path / "ft"
    model.mkdir()
    write_card(model, datasets=[str(tmp_path / "gone.jsonl")])  # declared but not readable
    common = [
        *BENCH_ARGS,
        "--benchmarks-dir",
        str(shared_data / "hf"),
        "--cache-dir",
        str(cache),
        "--no-progress",
    ]
    assert main(["audit", "--model", str(model), *common, "--dataset", f"{model}={contaminated}"]) == 1
    assert main(["audit", "--model", str(model), *common, "--json"]) == 2  # declared, unreadable
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert data["models"][-1]["verdict"] == "unreadable" and data["problems"]
    config = tmp_path / "merge.yml"
    config.write_text(f"merge_method: linear\nmodels:\n  - model: {model}\n    parameters: {{weight: 1.0}}\n")
    assert main(["audit", str(config), *common, "--dataset", f"{model}={contaminated}"]) == 1


def test_verdicts_and_severities_are_str_enums_with_the_stored_strings() -> None:
    """One definition each (auditor.report); str values: JSON, the database and the CLI keep the strings."""
    from mergeguard.auditor.report import SEVERITY_RANK, VERDICTS, Severity, Verdict, worst

    assert [s.value for s in Severity] == ["verbatim", "partial", "question_only", "paraphrase", "passage"]
    assert SEVERITY_RANK == {"verbatim": 4, "partial": 3, "question_only": 2, "paraphrase": 1, "passage": 0}
    assert Severity.PARTIAL.rank == 3 and worst(["partial", "verbatim", "passage"]) == "verbatim"
    assert {*VERDICTS, "unaudited"} == {v.value for v in Verdict}
    assert json.dumps({"v": Verdict.CONTAMINATED}) == '{"v": "contaminated"}'
    assert f"{Verdict.CLEAN}" == "clean" and Verdict("undeclared") is Verdict.UNDECLARED
