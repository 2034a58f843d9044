"""Finding benchmark items inside training text.

Per batch of examples: normalize, hash words and n-grams, keep the examples that share at least two
informative n-grams with the benchmarks (an exact prefilter: fewer can never pass verification), slide
windows sized to each item class over them, query that class's `MinHashLSH`, then verify every candidate
exactly (containment of the item's informative n-grams in the example). Items too short for n-grams are
matched as exact word sequences. An example, or one line of it, that is exactly an item's question is that
item whatever its length. Each item is indexed twice: its question, and its whole text (question, choices,
answer), so that a copy cut in half or broken by typos still holds most of one of them. An item whose source
text (a quoted passage) is all an example shares with it is a `passage` finding: listed, never contamination
by itself. A unit whose n-grams fall short (typos, dropped words, a copy cut to part of it) is aligned
word by word with the example: the stretch of it copied but for a few slips, reaching its start or end,
counts by the share of the unit's telling words it spans.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice

import numpy as np

from mergeguard.auditor import signatures as sig
from mergeguard.auditor.index import CLASSES, EXACT_KEY_WORDS, EXACT_MODE, BenchmarkIndex, _count
from mergeguard.auditor.normalize import batch_bytes, token_spans, word_bytes
from mergeguard.auditor.options import DEFAULT_CONTAINMENT
from mergeguard.auditor.report import SEVERITY_RANK, Severity

VERBATIM_SCORE = 0.8  # containment at or above which the question counts as copied whole
# A question found without its answer (or with a one-word one) must be nearly whole: items built from one
# template ("As of 2019, about what percentage of <people> <agree that ...>?", 17 MMLU items) share most
# of their words with each other's siblings outside the test set, differing only in the slot.
QUESTION_ONLY_SCORE = 0.7
SHORT_ANSWER_SCORE = 0.6  # ... and with a one-word answer, somewhat more than half
# An item's whole text (question, choices, answer) found in part: a contiguous half of it (a truncated
# copy) holds about half its n-grams less the few across the cut, and its siblings' whole texts differ in
# their choices and answers, so a lower share is specific enough.
WHOLE_TEXT_SCORE = 0.4
SIBLING_TAIL = 3  # n-grams ending a question: a whole-text match holds one, or none of the question, ...
SIBLING_WORDS = 2  # ... or one of its last words (a typo there breaks the n-grams, not the other words)
ANSWER_REACH = 48  # words after the matched question in which the answer is looked for
EXAMPLE_BOILERPLATE_MIN = 50  # an n-gram in this many examples (and >= 1% of them) is the dataset's template
EXAMPLE_BOILERPLATE_SHARE = 0.01
BATCH = 4096
MIN_MATCHED = 3  # informative n-grams an example must share with an item (fewer are chance phrases)
VERIFY_MIN = 4  # ... and to be verified, min(this, the item's count): a short item must match (nearly) whole
MIN_QUESTION_ONLY = 8  # words: a shorter exact question needs its answer or its choices beside it
MIN_RARE_WORDS = 2  # ... and so does one with fewer words that few items use
CHOICES_PRESENT = 0.6  # share of a short multiple-choice item's choice words that must follow its stem
# A copy broken by typos, dropped or doubled words, or cut to a part, is found by aligning the example's words
# with the unit's (`_Scanner._aligned`): a contiguous stretch of the unit, copied word for word but for a few
# slips, scores the share of the unit's telling words it spans. A slip is a dropped word, or a word one
# keystroke off (letters only: numbers tell questions apart); a template sibling differs by whole other
# words, which end the stretch.
SLIP_SHARE = 5  # a stretch of k words may hold max(MIN_SLIPS, k // SLIP_SHARE) slips
MIN_SLIPS = 3
SLIP_MIN_LETTERS = 3  # a one-keystroke slip leaves or makes a word of at least this many letters
SLIP_MEMO = 1 << 14  # words whose one-keystroke variants a scanner keeps hashed


@dataclass
class Match:
    """One verified benchmark item inside one training example."""

    example: int
    item: int  # the item (a row of `index.refs`; a unit of the index while scanning)
    score: float
    severity: str
    start: int  # word positions of the matched span in the example
    end: int
    answer_present: bool
    matched: np.ndarray = field(repr=False, default_factory=lambda: np.empty(0, np.uint32))
    text: str = field(repr=False, default="")
    # How it was found, for the dataset-level re-check (`_Scanner.finish`): the score it had to reach, and
    # whether the score is the share of the unit's words an aligned copy spans (`_Scanner._aligned`).
    floor: float = field(repr=False, default=0.0)
    aligned: bool = field(repr=False, default=False)

    def evidence(self, context: int = 60) -> tuple[str, str, str]:
        """(before, matched span, after) from the example's text, for display."""
        shown, spans = token_spans(self.text)
        if not spans:
            return "", "", ""
        lo = spans[min(self.start, len(spans) - 1)][0]
        hi = spans[min(self.end, len(spans)) - 1][1]
        return shown[max(0, lo - context) : lo], shown[lo:hi], shown[hi : hi + context]


@dataclass
class ScanResult:
    """Verified matches plus counts for the report."""

    matches: list[Match]
    examples: int
    prefiltered: int  # examples that reached the MinHash stage
    windows: int  # LSH queries made
    candidates: int  # (example, item) pairs verified


class _Scanner:
    def __init__(self, index: BenchmarkIndex, containment: float) -> None:
        self.index = index
        self.containment = containment
        self.n = index.ngram
        self.hasher = sig.WordHashes()
        self.perms = index.perms
        self.example_counts = np.zeros(len(index.bench_hashes), dtype=np.int64)
        self.key_hashes: np.ndarray | None = None  # per item, a hash of its whole key (`sig.run_hashes`)
        self.matches: list[Match] = []
        self.slips: dict[bytes, set[int]] = {}  # word -> hashes of the words one keystroke off it
        # TRANSITIONAL: id() of the aligned matches, read by engines/work.py; `Match.aligned` says it now.
        self.aligned: set[int] = set()
        self.examples = self.prefiltered = self.windows = self.candidates = 0

    # ---------------------------------------------------------------- one batch
    def batch(self, texts: list[str], offset: int) -> None:
        n = self.n
        buf = np.frombuffer(batch_bytes(texts), dtype=np.uint8)
        wh, word_starts = sig.buffer_word_hashes(buf)
        self.examples += len(texts)
        if len(wh) == 0:
            return
        example_of = np.searchsorted(np.flatnonzero(buf == 0), word_starts)  # NULs separate the texts
        lens = np.bincount(example_of, minlength=len(texts)).astype(np.int64)
        ends = np.cumsum(lens)
        starts = ends - lens
        sh = sig.shingle_hashes(wh, n)
        pos = np.arange(len(sh))
        valid = pos + n <= ends[example_of[: len(sh)]]
        hit = np.zeros(len(sh), dtype=bool)
        hit[valid] = self.index.in_bench(sh[valid])
        hit_pos = np.flatnonzero(hit)
        candidates: dict[int, set[int]] = {}
        pairs = self._prefilter(example_of[hit_pos], sh[hit_pos], len(texts))
        chosen = np.unique(pairs >> 32)
        if len(chosen):
            self.prefiltered += len(chosen)
            self._windows(chosen, pairs, starts, lens, sh, hit, candidates)
        candidates_exact: dict[int, dict[int, list[int]]] = {}
        self._exact(wh, starts, lens, example_of, candidates_exact)
        self._whole(buf, wh, word_starts, example_of, starts, lens, texts, offset)
        for e, items in candidates.items():
            self._verify_ngram(e, offset, texts[e], wh[starts[e] : starts[e] + lens[e]], items)
        for e, items in candidates_exact.items():
            self._verify_exact(e, offset, texts[e], wh[starts[e] : starts[e] + lens[e]], items)

    def _prefilter(self, hit_ex: np.ndarray, hit_hash: np.ndarray, n_texts: int) -> np.ndarray:
        """(example << 32 | item) pairs sharing at least MIN_MATCHED informative n-grams: only those can
        pass verification (which needs min(VERIFY_MIN, |informative|) >= MIN_SHINGLES of them), so only
        their examples go through the MinHash windows, and only for their items' size classes. Also
        counts, per n-gram, how many examples hold it (the dataset's template n-grams, dropped at the end)."""
        idx = self.index
        pairs = np.unique((hit_ex.astype(np.uint64) << np.uint64(32)) | hit_hash.astype(np.uint64))
        if not len(pairs):
            return np.empty(0, np.int64)
        where = np.searchsorted(idx.bench_hashes, (pairs & np.uint64(0xFFFFFFFF)).astype(np.uint32))
        np.add.at(self.example_counts, where, 1)
        examples = (pairs >> np.uint64(32)).astype(np.int64)
        ptr, owners = idx.postings
        counts = ptr[where + 1] - ptr[where]
        ex = np.repeat(examples, counts)
        first = np.repeat(ptr[where] - np.cumsum(counts) + counts, counts)
        items = owners[first + np.arange(counts.sum())]
        ex_items, shared = np.unique((ex << 32) | items, return_counts=True)
        return ex_items[shared >= MIN_MATCHED]

    def _windows(self, chosen, pairs, starts, lens, sh, hit, out: dict[int, set[int]]) -> None:
        """Window signatures per item class for the chosen examples, queried against that class's LSH.

        An example is windowed only at the size classes of its prefilter items, and LSH candidates outside
        the prefilter pairs are dropped: they could not pass verification anyway."""
        n = self.n
        counts = np.maximum(lens[chosen] - n + 1, 0)
        keep = counts > 0
        chosen, counts = chosen[keep], counts[keep]
        if not len(chosen):
            return
        idx = np.concatenate(
            [np.arange(starts[e], starts[e] + c) for e, c in zip(chosen, counts, strict=True)]
        )
        hashes, hits = sh[idx], hit[idx].astype(np.int64)
        offs = np.zeros(len(chosen) + 1, dtype=np.int64)
        offs[1:] = np.cumsum(counts)
        mixed = sig.fmix32(hashes)
        a, b = self.perms
        permuted = a[:, None] * mixed[None, :]  # (num_perm, shingles): reduceat is fastest on the last axis
        permuted += b[:, None]
        pair_ex = (pairs >> 32).astype(np.int64)
        pair_class = self.index.klass[(pairs & 0xFFFFFFFF).astype(np.int64)]
        for c in self.index.tables:
            need = self.containment * self.index.class_min[c] * 0.5
            ok = (counts >= need) & np.isin(chosen, pair_ex[pair_class == c])
            if not ok.any():
                continue
            sel = np.flatnonzero(ok)
            sigs, whits, wsel = _class_windows(CLASSES[c], sel, counts, offs, permuted, hits)
            keep_w = np.flatnonzero(whits >= MIN_MATCHED)
            self.windows += len(keep_w)
            rows, items = self.index.query(c, sigs[keep_w])
            found = (chosen[wsel[keep_w]][rows].astype(np.int64) << 32) | items
            found = np.unique(found[np.isin(found, pairs)])
            for e, item in zip((found >> 32).tolist(), (found & 0xFFFFFFFF).tolist(), strict=True):
                out.setdefault(e, set()).add(item)

    def _exact(self, wh, starts, lens, example_of, out: dict[int, dict[int, list[int]]]) -> None:
        """Exact-text items whose whole key (question) occurs in an example, all in array passes: their
        first words' hash finds the places, a rolling hash of the key's length compares the rest, and an
        element-wise comparison confirms each survivor."""
        keys = self.index.exact_keys
        if not len(keys):
            return
        k = EXACT_KEY_WORDS
        q = sig.shingle_hashes(wh, k)
        if not len(q):
            return
        found = self.index.exact_hits(q)
        found = found[found + k <= (starts + lens)[example_of[found]]]
        if not len(found):
            return
        lo = np.searchsorted(keys, q[found], side="left")
        hi = np.searchsorted(keys, q[found], side="right")
        counts = hi - lo
        pos = np.repeat(found, counts)
        items = self.index.exact_items[
            np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        ]
        ptr, data = self.index.key_words
        klen = ptr[items + 1] - ptr[items]
        ends = (starts + lens)[example_of[pos]]
        fits = pos + klen <= ends
        pos, items, klen = pos[fits], items[fits], klen[fits]
        if not len(pos):
            return
        # Compare whole keys by a polynomial hash of their word hashes (then exactly, below).
        if self.key_hashes is None:
            self.key_hashes = sig.run_hashes(data.astype(np.uint64), ptr[:-1], ptr[1:] - ptr[:-1])
        got = sig.run_hashes(wh, pos, klen)
        same = np.flatnonzero(got == self.key_hashes[items])
        for p, item, m in zip(pos[same].tolist(), items[same].tolist(), klen[same].tolist(), strict=True):
            e = int(example_of[p])
            if np.array_equal(wh[p : p + m], data[ptr[item] : ptr[item] + m]):
                out.setdefault(e, {}).setdefault(item, []).append(p - int(starts[e]))

    def _whole(
        self,
        buf: np.ndarray,
        wh: np.ndarray,
        word_starts: np.ndarray,
        example_of: np.ndarray,
        starts: np.ndarray,
        lens: np.ndarray,
        texts: list[str],
        offset: int,
    ) -> None:
        """Examples, and user turns of examples (the first line, or a line labelled "Q:", "Human:", "User:"
        and the like, the label left out), whose whole text is an item's question: found by the hash of each
        run of words, whatever the question's length. The severity comes from what else the example holds
        (the answer anywhere in it)."""
        idx = self.index
        if not len(idx.whole_hashes) or not len(wh):
            return
        breaks = np.flatnonzero((buf == 10) | (buf == 0))
        line_of = np.searchsorted(breaks, word_starts)
        first = np.flatnonzero(np.diff(line_of, prepend=-1))
        length = np.diff(np.append(first, len(wh)))
        # The user's turn: an example's first line, or a line labelled as one ("Q:", "Human:", "User:").
        opening = np.isin(first, starts)
        labelled = (length > 1) & np.isin(wh[first], idx.labels)
        whole = lens > 0
        run_start = np.concatenate([first[opening], first[labelled] + 1, starts[whole]])
        run_len = np.concatenate([length[opening], length[labelled] - 1, lens[whole]])
        fits = np.isin(run_len, idx.whole_lengths)
        run_start, run_len = run_start[fits], run_len[fits]
        if not len(run_start):
            return
        got = sig.run_hashes(wh, run_start, run_len)
        lo = np.searchsorted(idx.whole_hashes, got, side="left")
        hi = np.searchsorted(idx.whole_hashes, got, side="right")
        counts = hi - lo
        if not counts.any():
            return
        at = np.repeat(np.arange(len(got)), counts)
        row = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        same = idx.whole_lengths[row] == run_len[at]
        at, items = at[same], idx.whole_items[row[same]]
        seen: set[tuple[int, int]] = set()
        for a, item in zip(at.tolist(), items.tolist(), strict=True):
            e = int(example_of[run_start[a]])
            if (e, item) in seen:
                continue
            seen.add((e, item))
            words = wh[starts[e] : starts[e] + lens[e]]
            answer = self._answer_in(item, words, words, whole=True)
            if idx.whole_shared[item] and not answer:
                continue
            start = int(run_start[a] - starts[e])
            severity = Severity.VERBATIM if answer else Severity.QUESTION_ONLY
            self.matches.append(
                Match(e + offset, item, 1.0, severity, start, start + int(run_len[a]), answer, text=texts[e])
            )

    # ---------------------------------------------------------------- verification
    def _answer(self, item: int, words: np.ndarray, start: int, end: int) -> bool:
        """Whether the gold answer appears near the matched question more often than the choices hold it."""
        idx = self.index
        answer = idx.row(idx.answer_words, item)
        choices = idx.row(idx.choice_words, item)
        region = words[start : min(len(words), end + ANSWER_REACH + len(answer) + 3 * len(choices))]
        return self._answer_in(item, region, words)

    def _answer_in(
        self, item: int, region: np.ndarray, words: np.ndarray | None = None, whole: bool = False
    ) -> bool:
        """Whether the gold answer is in `region` more often than the choices listed there hold it (a worked
        solution, reworded, counts when most of its n-grams are in `words`). A key matched with its answer
        holds it, unless the match was of the question alone (`whole`)."""
        idx = self.index
        answer = idx.row(idx.answer_words, item)
        if len(answer) == 0 or (idx.answer_in_key[item] and not whole):
            return True
        words = region if words is None else words
        choices = idx.row(idx.choice_words, item)
        listed = len(choices) and np.isin(choices, region).mean() >= CHOICES_PRESENT
        # With the choices listed, the answer must appear once more than they hold it (an "Answer:" line).
        if _count(region, answer) >= (idx.prompt_answer_count[item] + 1 if listed else 1):
            return True
        if len(answer) >= 2 * self.n and idx.prompt_answer_count[item] == 0:  # a worked solution, reworded
            ans = np.unique(sig.shingle_hashes(answer, self.n))
            ex = sig.shingle_hashes(words, self.n)
            return bool(np.isin(ans, ex).mean() >= self.containment)
        return False

    def _own_question(self, item: int, uniq: np.ndarray, words: np.ndarray, start: int, end: int) -> bool:
        """Whether the item's test part is there, not just its source text (MMLU's reading passages: dev
        rows ask other questions about the same passages; IFEval's quoted passages). Items without source
        text have no stem n-grams and pass; the choices listed after the match also count."""
        idx = self.index
        stem = idx.row(idx.stem, item)
        if not len(stem) or np.isin(stem, uniq).mean() >= self.containment:
            return True
        choices = idx.row(idx.choice_words, item)
        region = words[start : end + ANSWER_REACH + 3 * len(choices)]
        return bool(len(choices)) and np.isin(choices, region).mean() >= CHOICES_PRESENT

    def _sibling(self, item: int, uniq: np.ndarray, words: np.ndarray) -> bool:
        """Whether an example matched on an item's whole text holds another question beside the item's
        choices, one that starts like the item's and ends otherwise (MMLU dev asks other questions with
        the same options): a piece of the item holds the question's end wherever the cut fell."""
        idx = self.index
        key = idx.row(idx.key_words, item).astype(np.uint64)
        if idx.answer_in_key[item]:  # a short question's key holds its answer: the question is the rest
            key = key[: len(key) - len(idx.row(idx.answer_words, item))]
        question = sig.shingle_hashes(key, self.n)
        if len(question) <= 2 * SIBLING_TAIL:
            return False
        present = np.isin(question, uniq)
        ends_otherwise = not present[-SIBLING_TAIL:].any() and not np.isin(key[-SIBLING_WORDS:], words).any()
        return bool(present[:SIBLING_TAIL].any() and ends_otherwise)

    def _opening(self, item: int, uniq: np.ndarray, words: np.ndarray, end: int) -> bool:
        """Whether the example holds the question's opening words as one piece and nothing of the rest (a
        copy cut short): the informative n-grams present are the first ones in the question's order, at
        least `containment` of them, and the item's choices do not follow (a sibling that opens like it
        and asks otherwise lists the same choices after its own ending)."""
        idx = self.index
        if item >= len(idx.refs) or idx.twin[item]:
            return False
        ordered = sig.shingle_hashes(idx.row(idx.key_words, item).astype(np.uint64), self.n)
        ordered = ordered[np.isin(ordered, idx.row(idx.informative, item))]
        present = np.isin(ordered, uniq)
        k = int(np.argmin(present)) if not present.all() else len(present)
        if k < self.containment * len(present) or present[k:].any():
            return False
        return self._ends_there(item, words, end)

    def _ends_there(self, item: int, words: np.ndarray, end: int) -> bool:
        """Whether a copy of a question's opening ends there: a question (not a whole text, nor a twin),
        its choices not following (a sibling that opens like it and asks otherwise lists them after its
        own ending)."""
        idx = self.index
        if item >= len(idx.refs) or idx.twin[item]:
            return False
        choices = idx.row(idx.choice_words, item)
        region = words[end : end + ANSWER_REACH + 3 * len(choices)]
        return not (len(choices) and np.isin(choices, region).mean() >= CHOICES_PRESENT)

    def _floor(self, item: int, answer: bool) -> float:
        """The containment a match needs: more without the answer, or with a one-word answer ("7", "Paris")
        that a template sibling shares by chance; less of an item's whole text (see WHOLE_TEXT_SCORE)."""
        if item >= len(self.index.refs):
            return min(self.containment, WHOLE_TEXT_SCORE)
        if self.index.twin[item]:  # its template sibling is its twin, in the index: `_drop_shadowed`
            return self.containment
        if not answer:
            return max(self.containment, QUESTION_ONLY_SCORE)
        if len(self.index.row(self.index.answer_words, item)) < 2:
            return max(self.containment, SHORT_ANSWER_SCORE)
        return self.containment

    def _severity(self, score: float, answer: bool) -> str:
        if not answer:
            return Severity.QUESTION_ONLY
        return Severity.VERBATIM if score >= VERBATIM_SCORE else Severity.PARTIAL

    def _verify_ngram(self, e: int, offset: int, text: str, words: np.ndarray, items: set[int]) -> None:
        """Each candidate unit on its exact n-grams; one that falls short of what any match needs, on the
        stretch of it that the example copies but for slips (`_aligned`)."""
        idx = self.index
        ex = sig.shingle_hashes(words, self.n)
        uniq = np.unique(ex)
        for item in items:
            self.candidates += 1
            info = idx.row(idx.informative, item)
            matched = info[np.isin(info, uniq, assume_unique=True)]
            score = len(matched) / len(info) if len(info) else 0.0
            match = None
            if score >= min(self._floor(item, True), self.containment):
                where = np.flatnonzero(np.isin(ex, matched))
                span = (int(where.min()), int(where.max()) + self.n) if len(where) else (0, 0)
                match = self._judge(e + offset, item, (score, span, matched), uniq, words, text)
            if match is None and score < self._floor(item, False):
                stretch = self._aligned(item, words, text, ex)
                if stretch is not None:
                    *evidence, opens = stretch
                    match = self._judge(e + offset, item, tuple(evidence), uniq, words, text, opens)
                    if match is not None:
                        self.aligned.add(id(match))
            if match is not None:
                self.matches.append(match)

    def _judge(
        self,
        example: int,
        item: int,
        evidence: tuple[float, tuple[int, int], np.ndarray],
        uniq: np.ndarray,
        words: np.ndarray,
        text: str,
        opens: bool | None = None,
    ) -> Match | None:
        """The match that `evidence` (score, span in the example, the unit's informative n-grams it holds)
        makes of a unit, or None: too little of it, its question alone or a sibling's (whole-text units),
        or less than it needs without its answer and not the question's opening cut short (`opens`: an
        aligned stretch starts the unit; None: judged on the n-grams)."""
        idx = self.index
        score, (start, end), matched = evidence
        least = min(self._floor(item, True), self.containment)  # a question's opening needs containment
        if score < least or len(matched) < min(VERIFY_MIN, len(idx.row(idx.informative, item))):
            return None
        if item >= len(idx.refs):
            # An aligned stretch is one piece of the item: a sibling's question would come before it.
            before = words if opens is None else words[:start]
            seen = uniq if opens is None else np.unique(sig.shingle_hashes(before, self.n))
            if not np.isin(idx.row(idx.beyond, item), matched).any() or self._sibling(
                int(idx.unit_item[item]), seen, before
            ):
                return None  # matched on its question alone (the question unit judges that), or a sibling
        own = self._own_question(item, uniq, words, start, end)
        answer = own and self._answer(item, words, start, end)
        floor = self._floor(item, answer)
        if score < floor:
            cut_short = self._opening(item, uniq, words, end) if opens is None else opens
            if not (cut_short and self._ends_there(item, words, end)):
                return None
            floor = least
        severity = self._severity(score, answer) if own else Severity.PASSAGE
        return Match(
            example, item, score, severity, start, end, answer, matched, text, floor, opens is not None
        )

    def _aligned(
        self, item: int, words: np.ndarray, text: str, ex: np.ndarray
    ) -> tuple[float, tuple[int, int], np.ndarray, bool] | None:
        """The unit's longest contiguous stretch that the example copies word for word but for slips (see
        SLIP_SHARE), grown both ways from each n-gram they share: (the share of the unit's telling words it
        spans, where it lies in the example, the unit's informative n-grams inside it, whether it starts the
        unit), or None."""
        idx, n = self.index, self.n
        key = idx.row(idx.key_words, item).astype(np.uint64)
        ordered = sig.shingle_hashes(key, n)
        hits = np.flatnonzero(np.isin(ex, ordered)).tolist()
        if not hits:
            return None
        by_hash = np.argsort(ordered, kind="stable")  # a hit's place in the unit: its first occurrence
        first = by_hash[np.searchsorted(ordered[by_hash], ex[hits])].tolist()
        raw = word_bytes(text)
        raw = raw if len(raw) == len(words) else []  # the slips need the words themselves
        edges = set(np.cumsum([0] + [len(word_bytes(line)) for line in text.split("\n")]).tolist())
        kl, wl = key.tolist(), words.tolist()
        budget = max(MIN_SLIPS, len(kl) // SLIP_SHARE)
        info = idx.row(idx.informative, item)
        # The words that tell the unit apart (inside an informative n-gram): a stretch counts by its share
        # of them: the source text it shares with other questions, or its template, counts for nothing.
        telling = np.convolve(np.isin(ordered, info), np.ones(n, dtype=np.int64)) > 0
        total = int(telling.sum())
        best, share, reach = (0, 0, 0, 0), 0.0, -1
        for j, i in zip(hits, first, strict=True):
            if j < reach:
                continue  # inside the stretch already found
            back_i, back_j, used = _walk(kl[i::-1], wl[j::-1], raw[j::-1] if raw else [], budget, self.slips)
            fwd_i, fwd_j, more = _walk(kl[i:], wl[j:], raw[j:], budget - used, self.slips)
            a, b, lo, reach = i - back_i + 1, i + fwd_i, j - back_j + 1, j + fwd_j
            got = int(telling[a:b].sum()) / max(total, 1)
            # A copy cut short keeps the unit's start or its end, and the cut falls where the example or one
            # of its lines starts (ends): one that gives way to other words there is a sibling that asks
            # something else, and a stretch from the middle of a worked solution is a common phrase.
            cut = (a == 0 or lo in edges) and (b == len(kl) or reach in edges) and (a == 0 or b == len(kl))
            if got > share and cut and used + more <= max(MIN_SLIPS, (b - a) // SLIP_SHARE):
                best, share = (a, b, lo, reach), got
        a, b, lo, hi = best
        if b - a < n:
            return None
        return share, (lo, hi), info[np.isin(info, ordered[a : b - n + 1])], a == 0

    def _verify_exact(
        self, e: int, offset: int, text: str, words: np.ndarray, items: dict[int, list[int]]
    ) -> None:
        idx = self.index
        for item, positions in items.items():
            if idx.mode[item] != EXACT_MODE:
                continue
            self.candidates += 1
            key = idx.row(idx.key_words, item)  # `_exact` compared it: `positions` are where it is
            start, end = int(positions[0]), int(positions[0]) + len(key)
            choices = idx.row(idx.choice_words, item)
            answer = self._answer(item, words, start, end)
            if not answer and idx.answer_required[item]:
                continue
            # A question alone must be long and specific; a generic stem ("Which of the following is a
            # correct statement?") needs its choices beside it.
            specific = len(key) >= MIN_QUESTION_ONLY and idx.rare_words[item] >= MIN_RARE_WORDS
            if not answer and not specific:
                region = words[start : end + ANSWER_REACH + 3 * len(choices)]
                if not len(choices) or np.isin(choices, region).mean() < CHOICES_PRESENT:
                    continue
            self.matches.append(
                Match(e + offset, item, 1.0, self._severity(1.0, answer), start, end, answer, text=text)
            )

    # ---------------------------------------------------------------- the dataset's own boilerplate
    def finish(self) -> list[Match]:
        """Drop n-grams that many examples share (the dataset's template) and re-score."""
        limit = max(EXAMPLE_BOILERPLATE_MIN, EXAMPLE_BOILERPLATE_SHARE * self.examples)
        common = self.index.bench_hashes[self.example_counts >= limit]
        if not len(common):
            return self.matches
        kept = []
        for match in self.matches:
            if len(match.matched) == 0:
                kept.append(match)
                continue
            info = self.index.row(self.index.informative, match.item)
            info = info[~np.isin(info, common)]
            matched = match.matched[~np.isin(match.matched, common)]
            score = len(matched) / len(info) if len(info) else 0.0
            if match.aligned:  # its score is the share of the unit's words it copies
                score = match.score if len(matched) >= min(VERIFY_MIN, len(info)) else 0.0
            if len(info) < 2 or score < match.floor:
                continue
            match.score = score
            match.matched = matched
            if match.severity != Severity.PASSAGE:
                match.severity = self._severity(match.score, match.answer_present)
            kept.append(match)
        return kept


def _walk(
    key: list[int], words: list[int], raw: list[bytes], slips: int, memo: dict[bytes, set[int]] | None = None
) -> tuple[int, int, int]:
    """How far `words` (from the first) copy `key` (from the first), but for doubled words and at most `slips`
    dropped words or words one keystroke off (`raw`: the example's words, when known; `memo`: see
    `_one_keystroke`): (key words copied, example words read, slips used)."""
    i = j = used = 0
    while i < len(key) and j < len(words):
        word = words[j]
        if word == key[i]:
            i, j = i + 1, j + 1
        elif j and word == words[j - 1]:
            j += 1  # a doubled word
        elif used < slips and word in key[i + 1 : i + 3]:  # a dropped word ("didn't" is two tokens)
            i, j, used = i + 2 + key[i + 1 : i + 3].index(word), j + 1, used + 1
        elif used < slips and raw and _resumes(key, words, i, j) and _one_keystroke(raw[j], key[i], memo):
            i, j, used = i + 1, j + 1, used + 1
        else:
            break
    return i, j, used


def _resumes(key: list[int], words: list[int], i: int, j: int) -> bool:
    """Whether the copy goes on after the word at key[i] / words[j], perhaps past a dropped word (or one of
    them ends there): only then is that word worth checking for a slip."""
    return j + 1 == len(words) or i + 1 == len(key) or words[j + 1] in key[i + 1 : i + 4]


def _one_keystroke(word: bytes, target: int, memo: dict[bytes, set[int]] | None = None) -> bool:
    """Whether `word` is one keystroke (a letter swapped with the next, dropped, added or replaced) off the
    word whose hash is `target`. Letters only: a number that differs is another question's number. `memo`
    keeps each word's variants' hashes (a scan meets the same words again)."""
    if not word.isalpha():
        return False
    near = memo.get(word) if memo is not None else None
    if near is None:
        near = _keystroke_hashes(word)
        if memo is not None:
            if len(memo) >= SLIP_MEMO:
                memo.clear()
            memo[word] = near
    return target in near


def _keystroke_hashes(word: bytes) -> set[int]:
    """The hashes of every word one keystroke off `word` (letters only)."""
    size = len(word)
    variants = {word[:k] + word[k + 1 :] for k in range(size)}
    variants.update(word[:k] + word[k + 1 : k + 2] + word[k : k + 1] + word[k + 2 :] for k in range(size - 1))
    for c in _LETTERS:
        variants.update(word[:k] + c + word[k:] for k in range(size + 1))
        variants.update(word[:k] + c + word[k + 1 :] for k in range(size))
    variants = {v for v in variants if v and max(len(v), size) >= SLIP_MIN_LETTERS and v != word}
    if not variants:
        return set()
    hashes, _ = sig.buffer_word_hashes(np.frombuffer(b" ".join(variants), dtype=np.uint8))
    return set(hashes.tolist())


_LETTERS = [bytes([c]) for c in range(ord("a"), ord("z") + 1)]


def _class_windows(
    size: int, sel: np.ndarray, counts: np.ndarray, offs: np.ndarray, permuted: np.ndarray, hits: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The MinHash signatures of every window of `size` shingles (sliding by a quarter of it) over the
    selected examples (`sel`: their rows of `counts`/`offs`), from per-block minima of the `permuted`
    shingle hashes; with each window's count of benchmark n-grams (`hits`) and its example's row."""
    step = max(1, size // 4)
    per = -(-size // step)  # blocks per window
    nblocks = -(-counts[sel] // step)
    bstarts, is_block = _block_starts(sel, nblocks, offs, step)
    bmins = np.minimum.reduceat(permuted, bstarts, axis=1).T[is_block]
    bhits = np.add.reduceat(hits, bstarts)[is_block]
    bfirst = np.zeros(len(sel) + 1, dtype=np.int64)
    bfirst[1:] = np.cumsum(nblocks)
    nwin = np.maximum(nblocks - per + 1, 1)
    wstart = np.concatenate([bfirst[k] + np.arange(w) for k, w in enumerate(nwin)])
    wlast = np.repeat(bfirst[1:] - 1, nwin)
    sigs = bmins[wstart].copy()
    whits = bhits[wstart].copy()
    for t in range(1, per):
        j = wstart + t
        inside = j <= wlast
        jj = np.minimum(j, wlast)
        np.minimum(sigs, bmins[jj], out=sigs)
        whits += np.where(inside, bhits[jj], 0)
    return sigs, whits, np.repeat(sel, nwin)


def _block_starts(
    sel: np.ndarray, nblocks: np.ndarray, offs: np.ndarray, step: int
) -> tuple[np.ndarray, np.ndarray]:
    """Where each block of `step` shingles of the selected examples starts, and whether it is a block: an
    example's last block must stop at its end, so a boundary is put there too (its own "block", dropped),
    since the next selected example may start further on."""
    bounds, real = [], []
    for s, k in zip(sel.tolist(), nblocks.tolist(), strict=True):
        bounds.append(offs[s] + np.arange(k) * step)
        real.append(np.ones(k, dtype=bool))
        if offs[s + 1] < offs[-1]:
            bounds.append(offs[s + 1 : s + 2])
            real.append(np.zeros(1, dtype=bool))
    return np.concatenate(bounds), np.concatenate(real)


def _drop_shadowed(matches: list[Match]) -> list[Match]:
    """Drop a match whose matched n-grams are some of another, higher-scoring match's in the same example:
    the twin of a WinoGrande item, or a template sibling, shares that evidence without being what was
    copied. Two items that the same evidence fits equally (twins' common opening) both stay."""
    by_example: dict[int, list[Match]] = {}
    for match in matches:
        by_example.setdefault(match.example, []).append(match)
    kept = []
    for group in by_example.values():
        for match in group:
            shadowed = len(match.matched) and any(
                other.score > match.score
                and len(other.matched) > len(match.matched)
                and np.isin(match.matched, other.matched).all()
                for other in group
            )
            if not shadowed:
                kept.append(match)
    return kept


def _strength(match: Match) -> tuple[int, float]:
    """How strong a match's evidence is: its severity first (`report.SEVERITY_RANK`), then its score."""
    return SEVERITY_RANK[match.severity], match.score


def scan_examples(
    texts: Iterable[str],
    index: BenchmarkIndex,
    *,
    containment: float = DEFAULT_CONTAINMENT,
    batch_size: int = BATCH,
    progress: Callable[[int], None] | None = None,
) -> ScanResult:
    """Every benchmark item of `index` found in `texts` (example numbers are 0-based positions in `texts`)."""
    scanner = _Scanner(index, containment)
    iterator = iter(texts)
    offset = 0
    while batch := list(islice(iterator, batch_size)):
        scanner.batch([t if isinstance(t, str) else "" for t in batch], offset)
        offset += len(batch)
        if progress:
            progress(len(batch))
    matches = strongest_per_item(index, scanner.finish())
    return ScanResult(matches, scanner.examples, scanner.prefiltered, scanner.windows, scanner.candidates)


def strongest_per_item(index: BenchmarkIndex, finished: list[Match]) -> list[Match]:
    """One match per (example, item), the strongest evidence, in (example, item) order: the last step of a
    scan, shared by `scan_examples` and the engines' `combine`."""
    best: dict[tuple[int, int], Match] = {}
    for match in _drop_shadowed(finished):
        match.item = int(index.unit_item[match.item])  # a whole-text unit names its item
        other = best.get((match.example, match.item))
        if other is None or _strength(match) > _strength(other):
            best[(match.example, match.item)] = match
    return sorted(best.values(), key=lambda m: (m.example, m.item))
