"""The words a training row shares with a benchmark item, for highlighting: runs of word n-grams found in
both texts (normalized as the auditor normalizes them: case-folded, punctuation dropped)."""

from __future__ import annotations

from mergeguard.auditor.normalize import token_spans

Segments = list[tuple[str, bool]]  # (text, highlighted)


def _marked(words: list[str], shared: set[tuple[str, ...]], n: int) -> list[bool]:
    marks = [False] * len(words)
    for start in range(len(words) - n + 1):
        if tuple(words[start : start + n]) in shared:
            for i in range(start, start + n):
                marks[i] = True
    return marks


def _segments(text: str, spans: list[tuple[int, int]], marks: list[bool]) -> Segments:
    """Split `text` into alternating plain and highlighted pieces; the gaps between two highlighted
    words (spaces, punctuation) are highlighted too, so a copied sentence reads as one mark."""
    out: Segments = []
    cursor = 0
    for index, ((start, end), marked) in enumerate(zip(spans, marks, strict=True)):
        joined = marked and index > 0 and marks[index - 1]
        gap = text[cursor:start]
        if gap:
            out.append((gap, joined))
        out.append((text[start:end], marked))
        cursor = end
    if cursor < len(text):
        out.append((text[cursor:], False))
    merged: Segments = []
    for piece, marked in out:  # neighbours with the same mark become one piece
        if merged and merged[-1][1] == marked:
            merged[-1] = (merged[-1][0] + piece, marked)
        else:
            merged.append((piece, marked))
    return merged


def highlight(item: str, row: str, n: int = 5) -> tuple[Segments, Segments]:
    """(item pieces, row pieces) with the word n-grams they share marked; n shrinks for short items."""
    item_shown, item_spans = token_spans(item)
    row_shown, row_spans = token_spans(row)
    item_words = [item_shown[a:b].lower() for a, b in item_spans]
    row_words = [row_shown[a:b].lower() for a, b in row_spans]
    n = max(1, min(n, len(item_words)))
    grams = {tuple(item_words[i : i + n]) for i in range(len(item_words) - n + 1)}
    shared = grams & {tuple(row_words[i : i + n]) for i in range(len(row_words) - n + 1)}
    return (
        _segments(item_shown, item_spans, _marked(item_words, shared, n)),
        _segments(row_shown, row_spans, _marked(row_words, shared, n)),
    )
