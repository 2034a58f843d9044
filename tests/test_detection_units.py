"""Detection that holds across disguises (issue 13), on real test items: an item's whole text is a second
unit of the index (a truncated or typo-broken copy still holds most of it), WinoGrande twins count their
shared text, and the near misses these open up stay unflagged (MMLU dev siblings, template siblings)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from real_benchmarks import items_of, load_real

from mergeguard.auditor import build_index, detect, scan_examples
from mergeguard.auditor import signatures as sig
from mergeguard.auditor.normalize import word_bytes

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


def slipped(text: str, rng: random.Random) -> str:
    """A copy with one letter swapped in a long word, one word dropped and one doubled (three places)."""
    words = text.split()
    swap, drop, double = rng.sample(range(1, len(words) - 1), 3)
    out = []
    for k, word in enumerate(words):
        if k == swap and len(word) >= 4 and word.isalpha():
            word = word[0] + word[2] + word[1] + word[3:]
        if k != drop:
            out.extend([word, word] if k == double else [word])
    return " ".join(out)


def test_keystroke_slips_and_dropped_or_doubled_words_do_not_hide_a_short_item(loaded, index) -> None:
    """Short WinoGrande items (sentence, both names, answer): a swapped letter, a dropped and a doubled word
    break most of their 5-grams; the words aligned with the item's still hold them (`detect._aligned`)."""
    rng = random.Random(11)
    wino = items_of(loaded, "winogrande")
    picked = rng.sample(range(len(wino)), 80)
    texts = [
        slipped("\n".join([wino[k].question, *wino[k].choices]), rng) + "\n" + wino[k].answer for k in picked
    ]
    hits = found(index, texts)
    assert sum((e, "winogrande", k) in hits for e, k in enumerate(picked)) >= 0.95 * len(picked)
    aligned = [m for m in scan_examples(texts, index).matches if m.aligned]
    assert len(aligned) >= 10  # the n-grams alone fall short there (before alignment: 65 of the 80 found)


def test_a_copy_cut_to_its_first_or_last_part_is_found(loaded, index) -> None:
    """ARC and WinoGrande items cut to 50-65% of their words, from either end: the stretch kept reaches
    the item's start or end, and counts as the share of the item's telling words it spans."""
    rng = random.Random(5)
    texts, expected = [], []
    for name in ("arc_challenge", "winogrande"):
        pool = items_of(loaded, name)
        for k in rng.sample(range(len(pool)), 50):
            words = pool[k].text().split()
            keep = round(rng.uniform(0.5, 0.65) * len(words))
            texts.append(" ".join(words[:keep] if rng.random() < 0.5 else words[len(words) - keep :]))
            expected.append((len(texts) - 1, name, k))
    hits = found(index, texts)
    assert sum(e in hits for e in expected) >= 0.95 * len(expected)  # before alignment: 90 of 100


def test_numbers_and_other_words_are_not_slips(shared_data: Path) -> None:
    """A one-keystroke slip is a letter slip: "17" for GSM8K's "16" is another question's number and ends
    the copy, "dukcs" for "ducks" does not; a sibling's other word ("russians") is no slip either."""
    assert detect._one_keystroke(b"whiile", sig.word_hash("while"))
    assert detect._one_keystroke(b"teh", sig.word_hash("the"))
    assert not detect._one_keystroke(b"16", sig.word_hash("15"))
    assert not detect._one_keystroke(b"Russians".lower(), sig.word_hash("americans"))
    words = word_bytes(
        items_of(load_real(["gsm8k"], shared_data), "gsm8k")[0].question
    )  # "janet s ducks lay 16 eggs per day ..."
    key = [sig.word_hash(w) for w in words]
    at = words.index(b"16")
    for slip, stops in ((b"17", True), (b"dukcs", False)):
        copy = [slip if w in (b"16", b"ducks") and (w == b"16") == stops else w for w in words]
        walked, _, used = detect._walk(key, [sig.word_hash(w) for w in copy], copy, 2)
        assert (walked, used) == ((at, 0) if stops else (len(key), 1))
