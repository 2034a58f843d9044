"""Benchmarks without a shared copy (MuSR, MMLU-Pro) on rows written here in their hub schema, the hub path
(offline, redirected to local files), file formats, custom YAML specs and unavailable-benchmark messages."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from mergeguard.benchmarks import (
    benchmark_status,
    load_benchmark,
    load_benchmarks,
    load_custom_spec,
    loading,
    local_files,
)
from mergeguard.errors import BenchmarkError

# TAUR-Lab/MuSR rows: narrative, question, choices (a Python list literal in a string), answer_index,
# answer_choice; one hub split per subtask.
MUSR_ROWS = {
    "murder_mysteries": [
        {
            "narrative": "In the quiet library, Mack was found dead beside a shelf of atlases.",
            "question": "Who is the most likely murderer?",
            "choices": "['Mackenzie', 'Ana']",
            "answer_index": 1,
            "answer_choice": "Ana",
        },
        {
            "narrative": "A chef fell in the kitchen.",
            "question": "Who is the most likely murderer?",
            "choices": "['Rosa', 'Tom']",
            "answer_index": 0,
            "answer_choice": "Rosa",
        },
    ],
    "object_placements": [
        {
            "narrative": "Ella put the keys in the drawer, then Sam moved them to the shelf.",
            "question": "Which location is the most likely place Ella would look to find the keys?",
            "choices": "['drawer', 'shelf', 'table', 'bag', 'car']",
            "answer_index": 0,
            "answer_choice": "drawer",
        }
    ],
    "team_allocation": [
        {
            "narrative": "Three friends must cook and clean.",
            "question": "Given the story, how would you uniquely allocate each person?",
            "choices": "['Cook: A, Clean: B and C', 'Cook: B, Clean: A and C', 'Cook: C, Clean: A and B']",
            "answer_index": 2,
            "answer_choice": "Cook: C, Clean: A and B",
        }
    ],
}

# TIGER-Lab/MMLU-Pro rows (test split): up to ten options, answer letter and answer_index.
MMLU_PRO_ROWS = [
    {
        "question_id": 70,
        "question": "Typical advertising regulatory bodies suggest, for example that adverts must not: ____",
        "options": [
            f"{kind} practices, {feeling}"
            for feeling in ("Fear", "Distress", "Wants", "Jealousy", "Trust")
            for kind in ("Safe", "Unsafe")
        ],
        "answer": "I",
        "answer_index": 8,
        "cot_content": "",
        "category": "business",
        "src": "ori_mmlu-business_ethics",
    },
    {
        "question_id": 11011,
        "question": "What is 2 + 2?",
        "options": ["3", "4", "5"],
        "answer": "B",
        "answer_index": 1,
        "cot_content": "A: Let's think step by step. 2 + 2 = 4. The answer is (B).",
        "category": "math",
        "src": "scibench-test",
    },
]  # fmt: skip

ARC_ROWS = [
    {
        "id": "Q1",
        "question": "Which gas do plants take in?",
        "choices": {"text": ["oxygen", "carbon dioxide", "helium"], "label": ["A", "B", "C"]},
        "answerKey": "B",
    },
    {
        "id": "Q2",
        "question": "Which is a mammal?",
        "choices": {"text": ["shark", "whale", "trout", "eel"], "label": ["1", "2", "3", "4"]},
        "answerKey": "2",
    },
]

MATH_ROWS = [
    {"problem": "1+1?", "level": "Level 1", "type": "Algebra", "solution": "It is $\\boxed{2}$."},
    {
        "problem": "Hard one?",
        "level": "Level 5",
        "type": "Geometry",
        "solution": "So $\\boxed{\\frac{1}{2}}$.",
    },
    {
        "problem": "Hard two?",
        "level": "Level 5",
        "type": "Algebra",
        "solution": "Thus $\\boxed{7}$.",
        "answer": "7",
    },
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture()
def bench_dir(tmp_path: Path) -> Path:
    root = tmp_path / "hf"
    for subtask, rows in MUSR_ROWS.items():
        write_jsonl(root / "musr" / f"{subtask}.jsonl", rows)
    write_jsonl(root / "mmlu_pro" / "test.jsonl", MMLU_PRO_ROWS)
    return root


def test_musr_items_from_hub_schema_rows(bench_dir: Path) -> None:
    musr = load_benchmark("musr", bench_dir)
    assert len(musr.items) == 4 and len(musr.files) == 3
    first = musr.items[0]
    assert (first.split, first.subset, first.index) == ("murder_mysteries", "murder_mysteries", 0)
    assert first.question == (
        "In the quiet library, Mack was found dead beside a shelf of atlases.\n\n"
        "Who is the most likely murderer?"
    )
    assert first.choices == ("Mackenzie", "Ana") and first.answer == "Ana"
    placement = musr.items[2]
    assert (placement.subset, placement.index, placement.answer) == ("object_placements", 0, "drawer")
    assert len(placement.choices) == 5
    assert musr.items[3].answer == "Cook: C, Clean: A and B"


def test_mmlu_pro_items_from_hub_schema_rows(bench_dir: Path) -> None:
    pro = load_benchmark("mmlu_pro", bench_dir)
    first, second = pro.items
    assert first.item_id == "70" and first.subset == "business" and len(first.choices) == 10
    assert first.answer == "Safe practices, Trust"  # answer_index 8 == letter I
    assert (second.answer, second.choices) == ("4", ("3", "4", "5"))


def test_mmlu_pro_answer_letter_when_index_missing(tmp_path: Path) -> None:
    row = {key: value for key, value in MMLU_PRO_ROWS[1].items() if key != "answer_index"}
    write_jsonl(tmp_path / "mmlu_pro" / "test.jsonl", [row])
    assert load_benchmark("mmlu_pro", tmp_path).items[0].answer == "4"


@pytest.fixture()
def fake_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """Redirect the hub call to `datasets.load_dataset("json", data_files=...)` on local files."""
    import datasets

    state: dict[str, Any] = {"files": {}, "calls": []}

    def load(path: str, name: str | None, split: str) -> Any:
        state["calls"].append((path, name, split))
        data_file = state["files"][(path, name, split)]
        return datasets.load_dataset(
            "json", data_files=str(data_file), split="train", cache_dir=str(tmp_path / "hf-cache")
        )

    monkeypatch.setattr(loading, "hub_load_dataset", load)
    return state


def test_hub_path_reads_through_datasets(fake_hub: dict[str, Any], bench_dir: Path, tmp_path: Path) -> None:
    for subtask in MUSR_ROWS:
        fake_hub["files"][("TAUR-Lab/MuSR", "default", subtask)] = bench_dir / "musr" / f"{subtask}.jsonl"
    from_hub = load_benchmark("musr", tmp_path / "empty")
    assert fake_hub["calls"] == [("TAUR-Lab/MuSR", "default", subtask) for subtask in MUSR_ROWS]
    assert from_hub.source == "hub:TAUR-Lab/MuSR" and from_hub.files == []
    assert from_hub.items == load_benchmark("musr", bench_dir).items
    assert len(from_hub.content_hash) == 64
    # the local copy wins over the hub when both are there
    fake_hub["calls"].clear()
    assert load_benchmark("musr", bench_dir).source == str(bench_dir / "musr")
    assert fake_hub["calls"] == []


def test_hub_math_hard_keeps_level_5_and_renumbers(fake_hub: dict[str, Any], tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "math_all.jsonl", MATH_ROWS)
    fake_hub["files"][("DigitalLearningGmbH/MATH-lighteval", "default", "test")] = data
    hard = load_benchmark("math_hard", None)
    assert [(item.index, item.question, item.short_answer) for item in hard.items] == [
        (0, "Hard one?", "\\frac{1}{2}"),
        (1, "Hard two?", "7"),
    ]
    assert len(load_benchmark("math", None).items) == 3


def test_unavailable_benchmark_says_where_it_looked_and_others_still_load(
    fake_hub: dict[str, Any], bench_dir: Path
) -> None:
    with pytest.raises(BenchmarkError) as caught:
        load_benchmark("gsm8k", bench_dir)  # no local copy, and the fake hub has no file for it
    message = str(caught.value)
    assert str(bench_dir / "gsm8k" / "test") in message and "hub openai/gsm8k" in message
    assert "--benchmarks-dir" in message
    loaded, problems = load_benchmarks(["gsm8k", "mmlu_pro", "musr"], bench_dir)
    assert [benchmark.name for benchmark in loaded] == ["mmlu_pro", "musr"]
    assert len(problems) == 1 and problems[0].startswith("gsm8k is not available")


def test_unknown_name_raises_instead_of_being_skipped(bench_dir: Path) -> None:
    with pytest.raises(BenchmarkError, match="did you mean musr"):
        load_benchmarks(["musrr"], bench_dir)


def test_real_hub_call_fails_fast_when_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(loading, "_REACHABLE", {})
    assert not loading.hub_reachable()
    loaded, problems = load_benchmarks(["mmlu_pro"], tmp_path, use_hub=True)
    assert loaded == [] and "not reachable" in problems[0]
    assert benchmark_status("mmlu_pro", tmp_path)[0] is False
    (tmp_path / "hf-home" / "datasets" / "TIGER-Lab___MMLU-Pro").mkdir(parents=True)
    assert benchmark_status("mmlu_pro", tmp_path) == (True, "hub:TIGER-Lab/MMLU-Pro (cached)")


def test_local_only_mode_does_not_touch_the_hub(fake_hub: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(BenchmarkError, match="hub not tried"):
        load_benchmark("arc_easy", tmp_path, use_hub=False)
    assert fake_hub["calls"] == []


@pytest.mark.parametrize("ext", [".jsonl", ".jsonl.gz", ".json", ".parquet"])
def test_file_formats_give_the_same_items(tmp_path: Path, ext: str) -> None:
    target = tmp_path / "arc_easy" / f"test{ext}"
    target.parent.mkdir()
    if ext == ".jsonl":
        write_jsonl(target, ARC_ROWS)
    elif ext == ".jsonl.gz":
        target.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in ARC_ROWS).encode()))
    elif ext == ".json":
        target.write_text(json.dumps(ARC_ROWS))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(ARC_ROWS), target)
    loaded = load_benchmark("arc_easy", tmp_path)
    assert loaded.files == [target]
    assert [(item.item_id, item.answer) for item in loaded.items] == [
        ("Q1", "carbon dioxide"),
        ("Q2", "whale"),
    ]


def test_csv_rows(tmp_path: Path) -> None:
    target = tmp_path / "gsm8k" / "test.csv"
    target.parent.mkdir()
    target.write_text('question,answer\n"How many?","Two plus two.\n#### 4"\n', encoding="utf-8")
    item = load_benchmark("gsm8k", tmp_path).items[0]
    assert (item.question, item.short_answer) == ("How many?", "4")


def test_partial_subtask_folder_names_the_missing_files(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "musr" / "murder_mysteries.jsonl", MUSR_ROWS["murder_mysteries"])
    with pytest.raises(BenchmarkError, match="1 of its 3 files; missing: object_placements, team_allocation"):
        local_files("musr", tmp_path)
    assert benchmark_status("musr", tmp_path)[0] is False


def test_row_outside_the_schema_is_a_clear_error(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "mmlu" / "test.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 5}])
    with pytest.raises(BenchmarkError, match="mmlu row 0: gold answer 5 does not index its 2 choices"):
        load_benchmark("mmlu", tmp_path)
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl", [{"prompt": "no question field"}])
    with pytest.raises(BenchmarkError, match="does not fit the gsm8k schema"):
        load_benchmark("gsm8k", tmp_path)


CUSTOM_YAML = """\
benchmarks:
  - name: acme_eval
    files: [data/eval.jsonl]
    split: heldout
    question: [context, prompt]
    choices: options
    answer: gold
    id: uid
    subset: area
    description: ACME's private eval
  - name: acme_open
    files: data/open.csv
    question: q
    answer: a
"""


def test_custom_spec(tmp_path: Path) -> None:
    write_jsonl(
        tmp_path / "data" / "eval.jsonl",
        [
            {
                "uid": "a1",
                "context": "Ctx.",
                "prompt": "Pick one.",
                "options": ["x", "y"],
                "gold": 1,
                "area": "s",
            },
            {
                "uid": "a2",
                "context": "",
                "prompt": "Letter?",
                "options": ["x", "y", "z"],
                "gold": "C",
                "area": "",
            },
            {"uid": "a3", "context": "", "prompt": "Text?", "options": ["x", "y"], "gold": "y", "area": "t"},
        ],
    )
    (tmp_path / "data" / "open.csv").write_text("q,a\nWhat is up?,The sky\n", encoding="utf-8")
    spec_file = tmp_path / "acme.yaml"
    spec_file.write_text(CUSTOM_YAML, encoding="utf-8")
    specs = load_custom_spec(spec_file)
    assert [spec.name for spec in specs] == ["acme_eval", "acme_open"]
    assert specs[0].suites == ("custom",) and specs[0].split == "heldout" and specs[1].split == "test"

    loaded, problems = load_benchmarks(None, tmp_path / "nothing", [spec_file], use_hub=False)
    by_name = {benchmark.name: benchmark for benchmark in loaded}
    assert set(by_name) == {"acme_eval", "acme_open"} and len(problems) == 16
    first, second, third = by_name["acme_eval"].items
    assert (first.question, first.answer, first.item_id, first.subset) == (
        "Ctx.\n\nPick one.",
        "y",
        "a1",
        "s",
    )
    assert (second.question, second.answer, second.subset) == ("Letter?", "z", None)
    assert third.answer == "y" and first.split == "heldout"
    assert by_name["acme_open"].items[0].text() == "What is up?\nThe sky"
    only, _ = load_benchmarks(["acme_open"], None, [spec_file])
    assert [benchmark.name for benchmark in only] == ["acme_open"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: x\nfiles: a.jsonl\nquestion: q\nanswr: a\n", "unknown key"),
        ("name: gsm8k\nfiles: a.jsonl\nquestion: q\n", "is a built-in benchmark"),
        ("name: x\nquestion: q\n", "needs `files:`"),
        ("name: x\nfiles: a.jsonl\n", "needs `question:`"),
        ("name: [unclosed\n", "not valid YAML"),
    ],
)
def test_custom_spec_errors(tmp_path: Path, text: str, message: str) -> None:
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text(text, encoding="utf-8")
    with pytest.raises(BenchmarkError, match=message):
        load_custom_spec(spec_file)


def test_custom_spec_with_missing_data_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    spec_file = tmp_path / "one.yaml"
    spec_file.write_text("name: solo\nfiles: gone.jsonl\nquestion: q\n", encoding="utf-8")
    loaded, problems = load_benchmarks(["solo"], None, [spec_file])
    assert loaded == [] and "gone.jsonl does not exist" in problems[0]


def test_malformed_json_line_names_the_file(tmp_path: Path) -> None:
    target = write_jsonl(tmp_path / "gsm8k" / "test.jsonl", [{"question": "q", "answer": "#### 1"}])
    with target.open("a") as handle:
        handle.write('{"question": "cut off\n')
    with pytest.raises(BenchmarkError, match="cannot read .*test.jsonl"):
        load_benchmark("gsm8k", tmp_path)
