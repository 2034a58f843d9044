"""Benchmark registry and loading against the real test sets in ../shared/data/hf."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import pytest

from mergeguard.benchmarks import (
    REGISTRY,
    LoadedBenchmark,
    benchmark_status,
    get_spec,
    load_benchmark,
    load_benchmarks,
    local_files,
    suite_names,
)
from mergeguard.errors import BenchmarkError

# The row counts the data README documents (and the hub splits have).
DOCUMENTED_ROWS = {
    "gsm8k": 1319,
    "arc_challenge": 1172,
    "arc_easy": 2376,
    "hellaswag": 10042,
    "mmlu": 14042,
    "truthfulqa_mc": 817,
    "winogrande": 1267,
    "bbh": 6511,
    "ifeval": 541,
    "gpqa_diamond": 198,
    "math": 5000,
    "math_hard": 1324,
}


@pytest.fixture(scope="module")
def hf_dir(shared_data: Path) -> Path:
    return shared_data / "hf"


@pytest.fixture(scope="module")
def all_loaded(hf_dir: Path) -> dict[str, LoadedBenchmark]:
    loaded, problems = load_benchmarks(None, hf_dir, use_hub=False)
    absent = {"gpqa_main", "gpqa_extended", "musr", "mmlu_pro"}
    assert {problem.split(" ")[0] for problem in problems} == absent
    return {benchmark.name: benchmark for benchmark in loaded}


def test_registry_names_match_the_data_folders_plus_the_absent_ones(hf_dir: Path) -> None:
    folders = {path.name for path in hf_dir.iterdir() if path.is_dir()}
    assert folders <= set(REGISTRY)
    assert set(REGISTRY) - folders == {"musr", "mmlu_pro", "gpqa_main", "gpqa_extended"}


def test_suites_hold_the_leaderboard_benchmarks() -> None:
    assert suite_names("v1") == ["arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc", "winogrande", "gsm8k"]
    assert set(suite_names("v2")) == {
        "ifeval", "bbh", "math_hard", "gpqa_diamond", "gpqa_main", "gpqa_extended", "musr", "mmlu_pro",
    }  # fmt: skip
    assert suite_names("all") == list(REGISTRY)
    with pytest.raises(BenchmarkError, match="unknown suite"):
        suite_names("v3")


def test_leaderboard_facts() -> None:
    v1 = {
        name: (REGISTRY[name].lm_eval_task, REGISTRY[name].num_fewshot, REGISTRY[name].metric)
        for name in suite_names("v1")
    }
    assert v1 == {
        "arc_challenge": ("arc_challenge", 25, "acc_norm"),
        "hellaswag": ("hellaswag", 10, "acc_norm"),
        "mmlu": ("mmlu", 5, "acc"),
        "truthfulqa_mc": ("truthfulqa_mc2", 0, "acc"),
        "winogrande": ("winogrande", 5, "acc"),
        "gsm8k": ("gsm8k", 5, "exact_match"),
    }  # fmt: skip
    assert get_spec("mmlu_pro").random_baseline == pytest.approx(0.1)
    assert get_spec("gpqa_diamond").random_baseline == pytest.approx(0.25)
    assert get_spec("ifeval").random_baseline == 0 and get_spec("math_hard").random_baseline == 0
    bbh = get_spec("bbh")
    assert bbh.baseline_for("object_counting") == pytest.approx(1 / 19)
    assert bbh.baseline_for("navigate") == pytest.approx(0.5)
    assert len(bbh.subset_baselines) == 24  # leaderboard_bbh scores 24 of the 27 subtasks
    assert get_spec("musr").baseline_for("object_placements") == pytest.approx(0.2)
    # the splits that are actually scored
    scored = ("hellaswag", "winogrande", "truthfulqa_mc", "ifeval", "gpqa_diamond")
    assert [get_spec(n).split for n in scored] == [
        "validation", "validation", "validation", "train", "train",
    ]  # fmt: skip
    assert get_spec("gpqa_diamond").contained_in == ("gpqa_main", "gpqa_extended")
    assert "mmlu" in get_spec("mmlu_pro").contained_in
    assert "math" in get_spec("math_hard").contained_in


def test_get_spec_suggests_close_names() -> None:
    with pytest.raises(BenchmarkError, match="did you mean gsm8k"):
        get_spec("gsm8")


def test_every_present_benchmark_loads_with_its_documented_row_count(
    all_loaded: dict[str, LoadedBenchmark],
) -> None:
    assert {name: len(b.items) for name, b in all_loaded.items()} == DOCUMENTED_ROWS
    assert len(all_loaded["bbh"].files) == 27
    assert len(Counter(item.subset for item in all_loaded["bbh"].items)) == 27
    for benchmark in all_loaded.values():
        per_file = (
            Counter((item.split, item.subset) for item in benchmark.items) if benchmark.spec.subsets else None
        )
        if per_file is None:  # one file: the index is the row number in it
            assert [item.index for item in benchmark.items] == list(range(len(benchmark.items)))
        else:  # one file per subtask: the index restarts in each
            assert sorted(item.index for item in benchmark.items if item.subset == "snarks") == list(
                range(178)
            )
        assert all(item.benchmark == benchmark.name and item.question for item in benchmark.items)
        assert len(benchmark.content_hash) == 64


def test_hand_checked_items(all_loaded: dict[str, LoadedBenchmark]) -> None:
    arc = all_loaded["arc_challenge"].items
    assert arc[0].item_id == "Mercury_7175875" and arc[0].answer == "Planetary days will become shorter."
    assert arc[836].item_id == "TIMSS_1995_8_J7" and len(arc[836].choices) == 5
    assert arc[836].answer.startswith("Warm-blooded animals normally maintain")
    easy = all_loaded["arc_easy"].items[14]  # numeric labels 1-4, answerKey "2"
    assert (easy.item_id, easy.answer) == ("NYSEDREGENTS_2015_8_28", "elements")

    swag = all_loaded["hellaswag"].items
    assert swag[0].question == "A man is sitting on a roof. he"
    assert swag[0].answer == "starts pulling up roofing on a roof." and swag[0].item_id == "0"
    assert swag[0].subset == "Roof shingle removal"
    assert swag[100].answer.startswith("holds up the bottle") and swag[100].item_id == "100"

    mmlu = all_loaded["mmlu"].items
    assert mmlu[1].question.startswith("Let p = (1, 2, 5, 4)(2, 3) in S_5")
    assert (mmlu[1].choices, mmlu[1].answer, mmlu[1].subset) == (
        ("8", "2", "24", "120"),
        "24",
        "abstract_algebra",
    )

    tqa = all_loaded["truthfulqa_mc"].items[3]
    assert tqa.question == "What are some cities that get more rainfall than Seattle?"
    assert tqa.answer == "Miami and New Orleans get more rainfall than Seattle." and len(tqa.choices) == 4

    wino = all_loaded["winogrande"].items
    assert (wino[0].choices, wino[0].answer, wino[1].answer) == (("Sarah", "Maria"), "Maria", "Sarah")

    gsm = all_loaded["gsm8k"].items[0]
    assert gsm.question.startswith("Janet’s ducks lay 16 eggs") and gsm.answer.endswith("#### 18")
    assert gsm.short_answer == "18"

    bbh = [item for item in all_loaded["bbh"].items if item.subset == "date_understanding"]
    assert bbh[2].index == 2 and bbh[2].answer == "(B)" and "01/09/1961" in bbh[2].question

    ifeval = all_loaded["ifeval"].items[0]
    assert (
        ifeval.item_id == "1000" and ifeval.answer == "" and ifeval.question.startswith("Write a 300+ word")
    )

    gpqa = all_loaded["gpqa_diamond"].items[0]
    assert gpqa.item_id == "rec06pnAkLOr2t2mp" and gpqa.answer == "10^-4 eV"
    assert gpqa.choices == (
        "10^-4 eV",
        "10^-11 eV",
        "10^-8 eV",
        "10^-9 eV",
    )  # correct first, then 1-3, stripped

    math = all_loaded["math"].items[0]
    assert math.short_answer == "2" and math.subset == "Algebra" and "\\boxed{2}" in math.answer
    hard = all_loaded["math_hard"].items[1]
    assert hard.short_answer == "-\\frac{1}{8}" and hard.question.startswith(
        "What is the smallest value of $x$"
    )


def test_item_text_holds_question_choices_and_answer_once(all_loaded: dict[str, LoadedBenchmark]) -> None:
    wino = all_loaded["winogrande"].items[0]
    assert wino.text() == f"{wino.question}\nSarah\nMaria"
    gsm = all_loaded["gsm8k"].items[0]
    assert gsm.text() == f"{gsm.question}\n{gsm.answer}"


def test_math_hard_is_contained_in_math(all_loaded: dict[str, LoadedBenchmark]) -> None:
    math_questions = {item.question for item in all_loaded["math"].items}
    assert all(item.question in math_questions for item in all_loaded["math_hard"].items)


def test_local_files_and_status(hf_dir: Path) -> None:
    files = local_files("bbh", hf_dir)
    assert len(files) == 27 and files[0].name == "boolean_expressions.jsonl"
    assert local_files("gpqa_diamond", hf_dir) == [hf_dir / "gpqa_diamond" / "train.jsonl.gz"]
    assert local_files("musr", hf_dir) == []
    assert benchmark_status("gsm8k", hf_dir) == (True, str(hf_dir / "gsm8k"))
    available, where = benchmark_status("musr", hf_dir)
    assert not available and where.startswith("hub:TAUR-Lab/MuSR")


def test_content_hash_is_stable_and_follows_the_bytes(hf_dir: Path, tmp_path: Path) -> None:
    first = load_benchmark("winogrande", hf_dir)
    assert load_benchmark("winogrande", hf_dir).content_hash == first.content_hash
    copy = tmp_path / "winogrande"
    copy.mkdir()
    shutil.copy(hf_dir / "winogrande" / "validation.jsonl", copy / "validation.jsonl")
    assert load_benchmark("winogrande", tmp_path).content_hash == first.content_hash
    with (copy / "validation.jsonl").open("a") as handle:
        handle.write('{"sentence": "A _ test.", "option1": "x", "option2": "y", "answer": "1"}\n')
    changed = load_benchmark("winogrande", tmp_path)
    assert changed.content_hash != first.content_hash and len(changed.items) == 1268


def test_benchmarks_dir_comes_from_the_environment(hf_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MERGEGUARD_BENCHMARKS_DIR", str(hf_dir))
    assert load_benchmark("ifeval").source == str(hf_dir / "ifeval")
