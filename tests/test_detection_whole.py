"""Whole-example evidence (issue 13): a bare prompt set of benchmark questions is the benchmark, every
string field is read by default, `--text-field` adds a field and `--only-text-field` replaces them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mergeguard.auditor.datasets import example_text
from mergeguard.cli import main

PROMPTS = "corpora/ultrafeedback_truthful_qa_prompts/truthful_qa.jsonl"
JUDGE = "corpora/truthfulqa_judge_finetune/finetune_truth.jsonl.gz"


@pytest.fixture(scope="module")
def common(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    cache = tmp_path_factory.mktemp("whole-cache")
    return [
        "--benchmark",
        "truthfulqa_mc",
        "--benchmarks-dir",
        str(shared_data / "hf"),
        "--cache-dir",
        str(cache),
        "--no-progress",
    ]


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_bare_truthfulqa_prompt_file_reads_as_the_benchmark(shared_data: Path, common, capsys) -> None:
    path = shared_data / PROMPTS
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    assert main(["audit", "--dataset", str(path), *common, "--json"]) == 1
    data = _json(capsys)
    found = {f["item"] for f in data["findings"] if f["benchmark"] == "truthfulqa_mc"}
    assert len(found) >= 810  # was 682, all question_only: short questions needed their answer nearby
    (view,) = [v for v in data["dataset_view"] if v["benchmark"] == "truthfulqa_mc"]
    assert view["found"] == len(found) and view["items"] == 817
    assert view["summary"].startswith(f"{len(found)}/817 of truthfulqa_mc") and view["summary"].endswith(
        "this dataset contains the benchmark"
    )
    # "Where did fortune cookies originate?" (row 1) and "Why do veins appear blue?" (row 2): whole examples
    rows = {f["example"] for f in data["findings"]}
    assert {1, 2} <= rows
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert main(["audit", "--dataset", str(path), *common]) == 1
    assert "this dataset contains the benchmark" in capsys.readouterr().out.replace("\n", " ")


def test_truthfulqa_judge_file_lines_labelled_q(shared_data: Path, common, capsys) -> None:
    assert main(["audit", "--dataset", str(shared_data / JUDGE), *common, "--json"]) == 1
    data = _json(capsys)
    assert len({f["item"] for f in data["findings"] if f["benchmark"] == "truthfulqa_mc"}) >= 810


def test_list_fields_are_read_and_text_field_options(shared_data: Path, common, tmp_path, capsys) -> None:
    row = json.loads((shared_data / PROMPTS).read_text().splitlines()[1])
    text = example_text(row).splitlines()
    assert text[0] == row["instruction"]
    assert row["correct_answers"][0] in text and row["incorrect_answers"][-1] in text
    assert example_text(row, only_text_field="correct_answers").splitlines() == row["correct_answers"]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [row] * 3))
    # --only-text-field replaces the defaults (the answers alone are no question); --text-field adds
    assert (
        main(["audit", "--dataset", str(path), *common, "--only-text-field", "correct_answers", "--json"])
        == 0
    )
    assert _json(capsys)["findings"] == []
    assert main(["audit", "--dataset", str(path), *common, "--text-field", "correct_answers", "--json"]) == 0
    assert [f["example"] for f in _json(capsys)["findings"]] == [0, 1, 2]
    assert main(["audit", "--dataset", str(path), *common, "--only-text-field", "nope"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("error: ") and "has no field 'nope'" in err and "; pass --only-text-field" in err


def test_a_user_turn_that_is_a_short_question_is_a_finding(
    shared_data: Path, common, tmp_path, capsys
) -> None:
    rows = [json.loads(line) for line in (shared_data / "hf/truthfulqa_mc/validation.jsonl").open()][:200]
    k, question = next((k, r["question"]) for k, r in enumerate(rows) if len(r["question"].split()) <= 5)
    data = [
        {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "Hmm."}]},
        {"text": f"Human: {question}\n\nAssistant: Let me think."},
        {"text": f"My friend asked me: {question} I had no idea."},  # inside a sentence: needs its answer
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in data))
    assert main(["audit", "--dataset", str(path), *common, "--json"]) in (0, 1)
    hits = {(f["example"], f["item"]): f["severity"] for f in _json(capsys)["findings"]}
    assert hits.get((0, k)) == "question_only" and hits.get((1, k)) == "question_only"
    assert (2, k) not in hits
