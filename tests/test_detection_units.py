"""Detection that holds across disguises (issue 13), on real test items: an item's whole text is a second
unit of the index (a truncated or typo-broken copy still holds most of it), WinoGrande twins count their
shared text, and the near misses these open up stay unflagged (MMLU dev siblings, template siblings)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from real_benchmarks import items_of, load_real

from mergeguard.auditor import build_index, scan_examples

BENCHMARKS = ["truthfulqa_mc", "mmlu", "winogrande", "arc_challenge"]


@pytest.fixture(scope="module")
def loaded(shared_data: Path):
    return load_real(BENCHMARKS, shared_data)


@pytest.fixture(scope="module")
def index(loaded, tmp_path_factory: pytest.TempPathFactory):
    return build_index(loaded, tmp_path_factory.mktemp("units-cache"))


def found(index, texts: list[str]) -> set[tuple[int, str, int]]:
    return {
        (m.example, index.refs[m.item].benchmark, index.refs[m.item].index)
        for m in scan_examples(texts, index).matches
        if m.severity != "passage"
    }


def test_the_second_half_of_an_item_without_its_question_is_found(loaded, index) -> None:
    """TruthfulQA items' choices and answer, the question cut off (the question unit cannot see them)."""
    texts, expected = [], set()
    for k, item in enumerate(items_of(loaded, "truthfulqa_mc")[:60]):
        words = item.text().split()
        tail = " ".join(words[len(words) // 2 :])
        if len(item.question.split()) < 0.3 * len(words):  # the half kept holds none of the question
            texts.append(tail)
            expected.add((len(texts) - 1, "truthfulqa_mc", k))
    assert len(expected) >= 20
    assert len(expected & found(index, texts)) >= 0.85 * len(expected)  # none before whole-text units


def test_typos_and_a_chat_split_do_not_hide_an_item(loaded, index) -> None:
    rng = random.Random(7)
    texts, expected = [], set()
    for k, item in enumerate(items_of(loaded, "arc_challenge")[:40]):
        words = "\n".join([item.question, *item.choices]).split()
        at = rng.randrange(len(words))
        words[at] = words[at][::-1] + "x"  # one broken word
        cut = len(words) // 2
        texts.append(" ".join(words[:cut]) + "\nGo on.\n" + " ".join(words[cut:]) + "\n" + item.answer)
        expected.add((k, "arc_challenge", k))
    assert len(expected & found(index, texts)) >= 38


def test_an_mmlu_dev_sibling_with_the_same_choices_is_not_the_test_item(loaded, index, shared_data) -> None:
    """Dev "At which stage in the planning process would a situation analysis be carried out?" shares
    test #13057's opening words and its four choices; dev "As of 2019 ... Americans agree that the state
    is run for the benefit of all the people?" shares most of test #2608's question."""
    dev = [json.loads(line) for line in (shared_data / "hf/mmlu/dev.jsonl").read_text().splitlines()]
    rows = [r for r in dev if "situation analysis" in r["question"] or "run for the benefit" in r["question"]]
    assert len(rows) == 2
    texts = [
        r["question"] + "\n" + "\n".join(r["choices"]) + "\nAnswer: " + r["choices"][r["answer"]]
        for r in rows
    ]
    assert not found(index, texts)
    test = items_of(loaded, "mmlu")
    assert (0, "mmlu", 13057) in found(index, [test[13057].text()])


def test_a_winogrande_twin_is_found_and_its_sibling_is_not(loaded, index) -> None:
    """WinoGrande items come in pairs that differ in a word or two: the shared text is both items' test text,
    and an example holding one twin names that twin only."""
    wino = items_of(loaded, "winogrande")
    k = next(
        k
        for k in range(len(wino) - 1)
        if wino[k].choices == wino[k + 1].choices and wino[k].question != wino[k + 1].question
    )
    words = wino[k].question.split()
    truncated = " ".join(words[: round(0.75 * len(words))])
    hits = found(index, [wino[k].text(), truncated])
    assert (0, "winogrande", k) in hits and (0, "winogrande", k + 1) not in hits
    assert (1, "winogrande", k) in hits or (1, "winogrande", k + 1) in hits
