"""Evidence that a Chinese example is a translated multiple-choice item, read through the glossary.

A translation keeps a multiple-choice item's structure: the same choices under the same letters. Each
lettered option of the example is glossed (`gloss.Glossary`) and compared with the item's choice under that
letter; the item is confirmed when three or more options, the gold one among them, each hold a good share of
their choice's stems, and the glossed question holds a share of the item question's idf weight. One option
glosses to many English words, so a choice of one common word would match by chance: the aligned choices
must also hold a few stems between them.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from mergeguard.auditor.evidence import choice_stems, gold_first
from mergeguard.auditor.gloss import Glossary

LETTERS = "ABCDEFGHIJ"
OPTION = re.compile(r"^[ \t]*\(?([A-J])[ \t]*[.．、:：)）][ \t]*(\S.*?)[ \t]*$", re.MULTILINE)
CHOICE_COVERAGE = 0.5  # an option translates its choice: its glosses hold this share of the choice's stems
MIN_ALIGNED = 3  # options that translate their choices, the gold one among them
MIN_ALIGNED_STEMS = 4  # stems the aligned choices share with their options, together
QUESTION_COVERAGE = 0.2  # share of the item question's idf weight that the glossed example holds


@dataclass
class TranslatedChoices:
    """How an example's lettered options line up with one item's choices."""

    aligned: list[str]  # the item's choices whose option (same letter) translates them, gold first
    gold: bool
    shared_stems: int  # stems the aligned choices share with their options
    coverage: float  # mean share of the aligned choices' stems found in their options
    question_coverage: float

    def confirms(self) -> bool:
        return (
            self.gold
            and len(self.aligned) >= MIN_ALIGNED
            and self.shared_stems >= MIN_ALIGNED_STEMS
            and self.question_coverage >= QUESTION_COVERAGE
        )

    @property
    def score(self) -> float:
        """Between 0 and 1: how much of the item the example holds (to rank one example's candidates)."""
        return (self.coverage + self.question_coverage) / 2


def lettered_options(text: str) -> dict[str, str]:
    """An example's options by letter (`A. ...` or `(B) ...` lines, full-width forms too: `Ａ．`); the first
    line per letter."""
    options: dict[str, str] = {}
    for letter, option in OPTION.findall(unicodedata.normalize("NFKC", text)):
        options.setdefault(letter, option)
    return options


def question_coverage(example_stems: set[str], item_weights: dict[str, float]) -> float:
    """The share of an item question's idf weight whose stems the (glossed) example holds."""
    total = sum(item_weights.values())
    return sum(w for s, w in item_weights.items() if s in example_stems) / total if total else 0.0


def align(
    glossed_options: dict[str, set[str]], choices: tuple[str, ...], gold: str, coverage_of_question: float
) -> TranslatedChoices:
    """Line an example's glossed options up with an item's choices, letter by letter."""
    aligned: list[tuple[str, int, float]] = []
    for letter, choice in zip(LETTERS, choices, strict=False):
        own = choice_stems(choice)
        option = glossed_options.get(letter)
        if not own or option is None:
            continue
        shared = len(own & option)
        if shared / len(own) >= CHOICE_COVERAGE:
            aligned.append((choice, shared, shared / len(own)))
    found, is_gold = gold_first([choice for choice, _, _ in aligned], gold)
    return TranslatedChoices(
        aligned=found,
        gold=is_gold,
        shared_stems=sum(shared for _, shared, _ in aligned),
        coverage=sum(share for _, _, share in aligned) / len(aligned) if aligned else 0.0,
        question_coverage=coverage_of_question,
    )


def gloss_options(glossary: Glossary, text: str) -> dict[str, set[str]]:
    """Each lettered option of an example, glossed."""
    return {letter: glossary.stems(option) for letter, option in lettered_options(text).items()}
