"""Text normalization and word n-gram shingles, the one definition both sides of a comparison share.

Normalizing is NFKC, case-folding, dropping punctuation (it becomes a word separator) and collapsing
whitespace; digits are kept, since numbers are often what tells two math questions apart.
"""

from __future__ import annotations

import re
import unicodedata

# Bump when the normalization changes: the benchmark index cache is keyed on it.
NORMALIZE_VERSION = "1"

WORD = re.compile(r"[^\W_]+")


def fold(text: str) -> str:
    """NFKC plus case-folding (the ASCII fast path skips NFKC, which is the identity there)."""
    if text.isascii():
        return text.lower()
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def tokens(text: str) -> list[str]:
    """The normalized words of `text`: letters and digits only, punctuation and whitespace dropped."""
    return WORD.findall(fold(text))


_ASCII_WORDS = bytes(c if chr(c).isalnum() else 32 for c in range(128)) + b" " * 128


def word_bytes(text: str) -> list[bytes]:
    """`tokens(text)` as UTF-8 bytes; ASCII text takes a fast path (lowercase, bytes.translate, split)."""
    if text.isascii():
        return text.encode("ascii").lower().translate(_ASCII_WORDS).split()
    return [word.encode("utf-8") for word in tokens(text)]


# Batch table: ASCII letters lowercased, digits kept, other ASCII a space, except NUL (it separates texts)
# and newline (it separates the lines of one: a line that is a whole question is evidence by itself);
# bytes >= 128 are kept (they are UTF-8 of already normalized words).
def _batch_byte(c: int) -> int:
    if c >= 128 or c in (0, 10):
        return c
    return ord(chr(c).lower()) if chr(c).isalnum() else 32


_BATCH = bytes(_batch_byte(c) for c in range(256))


def batch_bytes(texts: list[str]) -> bytes:
    """The normalized words of many texts in one buffer: words separated by spaces, texts by NUL bytes.

    ASCII texts (the common case) are only encoded; the non-ASCII ones are folded together, and one
    `bytes.translate` lowercases and blanks the ASCII punctuation of the whole batch. Splitting the
    buffer on whitespace and NUL gives exactly the `word_bytes` of each text; newlines are kept (as word
    separators that also mark the texts' lines).
    """
    parts = list(texts)
    odd = [k for k, part in enumerate(parts) if not part.isascii()]
    if odd:
        # Fold the non-ASCII texts together (NUL composes with nothing) and blank their non-ASCII
        # separators ("—", "“"); the table blanks the ASCII ones, as it does for ASCII texts.
        folded = fold("\x00".join(parts[k].replace("\x00", " ") for k in odd))
        blank = sorted(c for c in set(folded) if not c.isascii() and not WORD.match(c))
        if blank:
            folded = re.sub("[" + "".join(map(re.escape, blank)) + "]", " ", folded)
        for k, part in zip(odd, folded.split("\x00"), strict=True):
            parts[k] = part
    buf = b"\x00".join([part.encode("utf-8") for part in parts])
    if buf.count(b"\x00") != max(len(parts) - 1, 0):  # a NUL inside a text separates words there
        buf = b"\x00".join([part.replace("\x00", " ").encode("utf-8") for part in parts])
    return buf.translate(_BATCH)


def normalize(text: str) -> str:
    """`text` normalized to single-space-separated words."""
    return " ".join(tokens(text))


def token_spans(text: str) -> tuple[str, list[tuple[int, int]]]:
    """Character spans of the words, for highlighting evidence.

    Returns the text the spans index into: the original for ASCII text (folding keeps its length), else the
    folded text (NFKC can change lengths, so the original's offsets are not recoverable).
    """
    shown = text if text.isascii() else fold(text)
    folded = shown.lower()
    return shown, [match.span() for match in WORD.finditer(folded)]


def shingles(words: list[str], n: int) -> list[str]:
    """Word n-grams joined by single spaces; a text shorter than n words has none."""
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
