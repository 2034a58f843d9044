"""Evidence of a paraphrased benchmark item that survives rewording and translation.

A rephrase changes the words but keeps what makes the item that item: the numbers of a math problem and its
final answer, the gold choice and the distractors of a multiple-choice item, its rare content words and
names. These functions pull those out of a text (pure Python, no model) so the semantic stage can verify a
nearest-neighbour candidate and show why it matched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17",
    "eighteen": "18", "nineteen": "19", "twenty": "20", "thirty": "30", "forty": "40", "fifty": "50",
    "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90", "hundred": "100",
    "thousand": "1000", "million": "1000000", "twice": "2", "thrice": "3", "double": "2",
    "triple": "3", "dozen": "12", "half": "0.5", "quarter": "0.25",
}  # fmt: skip
_STOP = frozenset(
    """
    about above after again against also among another answer any are because been before being
    below between both but can cannot could did does doing down during each either every few
    following for from further had has have having her here hers herself him himself his how into
    its itself just least less like many may might more most much must near neither none nor not
    now off once only other ought our ours out over own per question rather same several shall she
    should since some such than that the their theirs them then there these they this those through
    thus too under until upon very was were what when where whether which while who whom whose why
    will with within without would yet you your yours which statement true false following best
    correct
    """.split()  # noqa: SIM905
)
_WORD = re.compile(r"[^\W\d_]{3,}")
_NUMBER = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")
_FINAL = re.compile(r"(?:####|answer is|answer:|答案[是为：:]?)\s*\$?\s*(-?[\d,]*\.?\d+)", re.IGNORECASE)
STEM = 6  # characters kept of a content word: "consumes"/"consume", "bakes"/"baked" meet


def _canonical(number: str) -> str:
    """ "80,000" -> "80000", "2.50" -> "2.5", "3.0" -> "3"."""
    value = number.replace(",", "")
    if "." in value:
        value = value.rstrip("0").rstrip(".")
    return value.lstrip("0") or "0"


def numbers(text: str) -> set[str]:
    """The distinct numbers of a text, digits or English number words, canonical."""
    found = {_canonical(n) for n in _NUMBER.findall(text)}
    found.update(_NUMBER_WORDS[w] for w in re.findall(r"[a-z]+", text.lower()) if w in _NUMBER_WORDS)
    return found


def final_answer(text: str) -> str | None:
    """The final answer a text states (`#### 18`, "the answer is 18"), canonical; None when none."""
    found = _FINAL.findall(text)
    return _canonical(found[-1]) if found else None


def stems(text: str) -> set[str]:
    """Content-word stems (lowercase, stopwords out, first STEM characters), plus the numbers as `#n`."""
    words = {w[:STEM] for w in _WORD.findall(text.lower()) if w not in _STOP and w.isascii()}
    return words | {f"#{n}" for n in numbers(text)}


@dataclass
class Evidence:
    """What a candidate (example, item) pair shares beyond the cosine."""

    numbers: list[str]  # the item's question numbers found in the example
    item_numbers: int  # how many distinct numbers the item's question holds
    answer: str | None  # the example's stated final answer when it equals the item's
    answer_conflict: bool  # the example states a final answer that is not the item's
    choices: list[str]  # the item's choices found in the example (gold first when found)
    gold_choice: bool
    rare_words: list[str]  # rare content stems shared
    item_words: int = 0  # content stems (and numbers) of the item's question
    example_words: int = 0  # ... and of the example
    # a translated example (translation.py): `choices` are then the choices its lettered options translate
    coverage: float | None = None  # how much of the item the glossed example holds, 0-1
    question_coverage: float | None = None  # share of the item question's idf weight in it

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "numbers": self.numbers,
            "item_numbers": self.item_numbers,
            "answer": self.answer,
            "choices": self.choices,
            "gold_choice": self.gold_choice,
            "rare_words": self.rare_words,
        }
        if self.coverage is not None:
            out["coverage"] = round(self.coverage, 4)
            out["question_coverage"] = round(self.question_coverage or 0.0, 4)
        return out


@lru_cache(maxsize=1 << 16)
def choice_stems(choice: str) -> frozenset[str]:
    """A choice's stems, computed once: every candidate pair of a multiple-choice item asks again."""
    return frozenset(stems(choice))


def choice_present(choice: str, example_stems: set[str]) -> bool:
    """A choice is present when all its content stems (or numbers) are, and it has some."""
    own = choice_stems(choice)
    return bool(own) and own <= example_stems


def gold_first(found: list[str], gold: str) -> tuple[list[str], bool]:
    """The choices found with the gold one first, and whether it was found (evidence lists it first)."""
    if not gold or gold not in found:
        return found, False
    return [gold, *[c for c in found if c != gold]], True


def gather(
    example: str,
    example_stems: set[str],
    question_numbers: set[str],
    short_answer: str,
    choices: tuple[str, ...],
    gold: str,
    rare: set[str],
    item_words: int = 0,
) -> Evidence:
    """The evidence one example holds for one item (`example_stems`: `stems(example)`, numbers included)."""
    example_numbers = {w[1:] for w in example_stems if w.startswith("#")}  # `stems` holds them as #n
    found_numbers = sorted(question_numbers & example_numbers, key=lambda n: (len(n), n))
    answer_c = _canonical(short_answer) if short_answer and _NUMBER.fullmatch(short_answer.strip()) else ""
    stated = final_answer(example) if answer_c else None  # only a numeric answer is compared
    present, gold_found = gold_first([c for c in choices if choice_present(c, example_stems)], gold)
    return Evidence(
        numbers=found_numbers,
        item_numbers=len(question_numbers),
        answer=stated if stated is not None and stated == answer_c else None,
        answer_conflict=stated is not None and bool(answer_c) and stated != answer_c,
        choices=present,
        gold_choice=gold_found,
        rare_words=sorted(w for w in rare & example_stems if not w.startswith("#")),
        item_words=item_words,
        example_words=len(example_stems),
    )
