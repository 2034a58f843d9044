"""The benchmark index: per-unit MinHash signatures in datasketch `MinHashLSH` tables (one per size class,
so that training text is queried with windows sized to the units) plus the hashed n-grams that
verification needs. Each item has up to two units, its question and its whole text (`FullText`), and a hash
of its whole question (an example or a user turn that is exactly the question). Persisted in the cache
folder, keyed by the benchmark data's content hash and the hashing scheme; the cache holds hashes and item
coordinates, never benchmark text.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mergeguard.auditor import signatures as sig
from mergeguard.auditor.normalize import NORMALIZE_VERSION, word_bytes
from mergeguard.auditor.options import DEFAULT_NGRAM
from mergeguard.benchmarks.registry import REGISTRY
from mergeguard.errors import MergeguardError
from mergeguard.progress import ProgressCallback, step

INDEX_VERSION = "11"  # bump whenever what the index holds changes
MIN_SHINGLES = 3  # fewer informative n-grams than this: the question is matched as exact text instead
MIN_EXACT_WORDS = 4  # exact-text keys shorter than this are too common to mean anything
EXACT_KEY_WORDS = 4  # exact-text items are looked up by the hash of their first 4 words
BOILERPLATE_ITEMS = 10  # an n-gram in this many items is template text ("which of the following is")
SHARED_IN_BENCHMARK = 2  # an n-gram in two items of one benchmark is shared context (a passage) ...
# ... unless the registry says the benchmark's items are twins (WinoGrande: pairs differing in a word)
COMMON_CHOICE_WORD = 100  # a word in the choices of this many items is not evidence of any one item
# A line's leading label ("Q:", "Human:", "User:") is not part of the question it introduces.
LINE_LABELS = ("q", "question", "human", "user", "instruction", "input", "prompt", "problem")
ROWS_PER_BAND = 2
# Window sizes (in shingles), a factor of about sqrt(2) apart: an item of k shingles goes to the smallest
# class >= k, so a window holding the whole item has Jaccard >= 0.7 with it.
CLASSES = (4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 512, 724, 1024)

NGRAM_MODE, EXACT_MODE, SKIPPED = 1, 2, 0
FULL_TEXT_EXTRA = 2  # words that choices and answer must add to a question for a whole-text unit
PROGRESS_UNITS = 2048  # the build reports progress after hashing this many units, and after each step:
# the shares of its time (all benchmarks, measured) done once the units are hashed, their informative
# n-grams found, and their modes chosen (the LSH tables and lookups take the rest)
HASHED, INFORMATIVE, MODES = 0.25, 0.7, 0.8


@dataclass(frozen=True)
class FullText:
    """An item's whole text (question, choices, answer) as a second unit of the index, beside its question:
    a leak that keeps only part of the item (its second half, the choices and answer, a question broken
    by typos or split over two turns) still holds most of the whole text's n-grams."""

    benchmark: str
    question: str  # the item's whole text
    choices: tuple[str, ...]
    answer: str
    source: str
    prompt: str  # the item's question and choices: where the answer occurs without being given
    question_words: int  # the item's question is the first this many words of `question`


def full_texts(items: Sequence[Any]) -> tuple[list[Any], list[int]]:
    """The index's units: every item's question (unit i is item i), then the whole text of each item whose
    choices and answer add FULL_TEXT_EXTRA words or more to it; and the item of each unit."""
    units: list[Any] = list(items)
    owners = list(range(len(items)))
    for i, item in enumerate(items):
        text = item.text()
        asked = len(word_bytes(item.question or ""))
        if len(word_bytes(text)) - asked >= FULL_TEXT_EXTRA:
            prompt = "\n".join([item.question or "", *item.choices])
            units.append(
                FullText(item.benchmark, text, item.choices, item.answer, item.source, prompt, asked)
            )
            owners.append(i)
    return units, owners


@dataclass(frozen=True)
class ItemRef:
    """Where an item sits: enough to name it in a report (no text)."""

    benchmark: str
    split: str
    index: int
    item_id: str | None
    subset: str | None = None


def _csr(rows: Sequence[np.ndarray], dtype: Any) -> tuple[np.ndarray, np.ndarray]:
    ptr = np.zeros(len(rows) + 1, dtype=np.int64)
    ptr[1:] = np.cumsum([len(r) for r in rows])
    data = np.concatenate([np.asarray(r, dtype=dtype) for r in rows]) if len(rows) else np.empty(0, dtype)
    return ptr, data.astype(dtype, copy=False)


@dataclass
class BenchmarkIndex:
    """Everything detection needs about the benchmark items, as arrays. Rows are units: unit i < len(refs)
    is item i's question, the units after them are items' whole texts (`unit_item` names their item)."""

    refs: list[ItemRef]
    num_perm: int
    seed: int
    ngram: int
    unit_item: np.ndarray  # int64: the item of each unit
    twin: np.ndarray  # bool per unit: its benchmark's items come in twins (registry `twin_items`)
    mode: np.ndarray  # int8: NGRAM_MODE, EXACT_MODE or SKIPPED
    klass: np.ndarray  # int16: index into CLASSES (ngram items)
    informative: tuple[np.ndarray, np.ndarray]  # CSR of sorted unique non-boilerplate shingle hashes
    stem: tuple[np.ndarray, np.ndarray]  # CSR: n-grams touching the test part (items with source text)
    beyond: tuple[np.ndarray, np.ndarray]  # CSR: a whole-text unit's informative n-grams past its question
    key_words: tuple[np.ndarray, np.ndarray]  # CSR of the key's word hashes (question, blank filled)
    answer_words: tuple[np.ndarray, np.ndarray]  # CSR of the gold answer's word hashes
    choice_words: tuple[np.ndarray, np.ndarray]  # CSR of the distinct word hashes of the choices
    prompt_answer_count: np.ndarray  # int32: times the answer occurs in question + choices
    answer_in_key: np.ndarray  # bool: the key already holds the answer (a short question with its answer)
    answer_required: np.ndarray  # bool: exact text shared with other items, so only question + answer counts
    rare_words: np.ndarray  # int32: key words used by fewer than COMMON_CHOICE_WORD items
    whole_hashes: np.ndarray  # uint64, sorted: `sig.run_hashes` of each item's whole question
    whole_items: np.ndarray  # int64: the item of each whole_hashes entry
    whole_lengths: np.ndarray  # int32: its question's length in words
    whole_shared: np.ndarray  # bool per item: another item (with another answer) has the same question
    labels: np.ndarray  # uint64: word hashes of LINE_LABELS
    bench_hashes: np.ndarray  # sorted unique informative hashes of all items (the prefilter)
    postings: tuple[np.ndarray, np.ndarray]  # CSR: the items holding each bench_hashes entry
    exact_keys: np.ndarray  # sorted hashes of the first words of exact-mode items
    exact_items: np.ndarray  # the item of each exact key
    signatures: np.ndarray  # (ngram items, num_perm) uint32, row k is item sig_items[k]
    sig_items: np.ndarray  # int64: the item of each signature row
    tables: dict[int, tuple[np.ndarray, np.ndarray]]  # class -> (sorted band keys, item of each key)
    class_min: dict[int, int]  # class index -> fewest shingles of an item in it
    index_hash: str
    benchmarks: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {items, split, hash}
    items: list[Any] | None = None  # the Item objects, when built or loaded beside the data (for display)
    _perms: np.ndarray | None = None
    _bitmap: np.ndarray | None = None
    _exact_bitmap: np.ndarray | None = None
    _lsh: dict[int, Any] = field(default_factory=dict)

    @property
    def bands(self) -> int:
        return self.num_perm // ROWS_PER_BAND

    def lsh(self, klass: int) -> Any:
        """The datasketch `MinHashLSH` of one item class, built from the stored signatures.

        Detection queries the equivalent numpy `tables` (the same bands, vectorized); this object is the
        reference they are tested against, and what a library user can query directly.
        """
        if klass not in self._lsh:
            from datasketch import MinHashLSH

            lsh = MinHashLSH(num_perm=self.num_perm, params=(self.bands, ROWS_PER_BAND))
            for row in np.flatnonzero(self.klass[self.sig_items] == klass):
                minhash = sig.to_minhash(self.signatures[row], self.perms, self.seed)
                lsh.insert(int(self.sig_items[row]), minhash, check_duplication=False)
            self._lsh[klass] = lsh
        return self._lsh[klass]

    def query(self, klass: int, signatures: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """LSH candidates of many query signatures at once: (query row, item) pairs, deduplicated."""
        table = self.tables.get(klass)
        if table is None or len(signatures) == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        keys, items = table
        q = sig.band_keys(signatures, ROWS_PER_BAND).ravel()
        lo = np.searchsorted(keys, q, side="left")
        hi = np.searchsorted(keys, q, side="right")
        width = hi - lo
        found = np.flatnonzero(width)
        if not len(found):
            return np.empty(0, np.int64), np.empty(0, np.int64)
        counts = width[found]
        rows = np.repeat(found // self.bands, counts)
        first = np.repeat(lo[found] - np.cumsum(counts) + counts, counts)
        hits = items[first + np.arange(counts.sum())]
        pairs = np.unique((rows.astype(np.int64) << 32) | hits)
        return pairs >> 32, pairs & 0xFFFFFFFF

    @property
    def perms(self) -> np.ndarray:
        if self._perms is None:
            self._perms = sig.permutations(self.num_perm, self.seed)
        return self._perms

    def row(self, csr: tuple[np.ndarray, np.ndarray], i: int) -> np.ndarray:
        ptr, data = csr
        return data[ptr[i] : ptr[i + 1]]

    def in_bench(self, hashes: np.ndarray) -> np.ndarray:
        """Which hashes are informative n-grams of some item (a bitmap, then an exact sorted lookup)."""
        if self._bitmap is None:  # one bit per 16 hash values (32 MiB): few false "maybe"s to look up
            bitmap = np.zeros(1 << 25, dtype=np.uint8)
            slot = self.bench_hashes >> np.uint32(4)
            np.bitwise_or.at(
                bitmap, slot >> np.uint32(3), np.left_shift(1, slot & np.uint32(7)).astype(np.uint8)
            )
            self._bitmap = bitmap
        slot = hashes >> np.uint32(4)
        maybe = ((self._bitmap[slot >> np.uint32(3)] >> (slot & np.uint32(7)).astype(np.uint8)) & 1).view(
            bool
        )
        out = np.zeros(len(hashes), dtype=bool)
        cand = hashes[maybe]
        if len(cand) and len(self.bench_hashes):
            pos = np.minimum(np.searchsorted(self.bench_hashes, cand), len(self.bench_hashes) - 1)
            out[np.flatnonzero(maybe)] = self.bench_hashes[pos] == cand
        return out

    def exact_hits(self, hashes: np.ndarray) -> np.ndarray:
        """Positions of `hashes` that are some exact-mode item's first-words key (a bitmap first: few are)."""
        if self._exact_bitmap is None:
            bitmap = np.zeros(1 << 20, dtype=bool)
            bitmap[self.exact_keys >> np.uint32(12)] = True
            self._exact_bitmap = bitmap
        maybe = np.flatnonzero(self._exact_bitmap[hashes >> np.uint32(12)])
        if not len(maybe) or not len(self.exact_keys):
            return maybe
        at = np.minimum(np.searchsorted(self.exact_keys, hashes[maybe]), len(self.exact_keys) - 1)
        return maybe[self.exact_keys[at] == hashes[maybe]]


def cache_key(benchmarks: Sequence[tuple[str, str]], num_perm: int, seed: int, ngram: int) -> str:
    """The index's identity: benchmark content hashes plus every parameter of the hashing scheme."""
    import datasketch

    parts = {
        "benchmarks": sorted(benchmarks),
        "datasketch": datasketch.__version__,
        "scheme": sig.SCHEME,
        "hash": sig.HASH_NAME,
        "normalize": NORMALIZE_VERSION,
        "index": INDEX_VERSION,
        "num_perm": num_perm,
        "seed": seed,
        "ngram": ngram,
        "rows_per_band": ROWS_PER_BAND,
        "boilerplate_items": BOILERPLATE_ITEMS,
        "shared_in_benchmark": SHARED_IN_BENCHMARK,
        "twins": sorted(b for b, _ in benchmarks if _twin_items(b)),
        "min_shingles": MIN_SHINGLES,
        "classes": CLASSES,
        "labels": LINE_LABELS,
        "units": ["question", "full_text", FULL_TEXT_EXTRA],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def _count(seq: np.ndarray, pattern: np.ndarray) -> int:
    """Occurrences of `pattern` as a contiguous run in `seq`."""
    m = len(pattern)
    if m == 0 or len(seq) < m:
        return 0
    starts = np.flatnonzero(seq[: len(seq) - m + 1] == pattern[0])
    return sum(1 for s in starts if np.array_equal(seq[s : s + m], pattern))


def _unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a small array (a Python set beats np.unique below a few hundred)."""
    return np.array(sorted(set(values.tolist())), dtype=values.dtype)


def _test_shingles(key: np.ndarray, source: np.ndarray, ngram: int) -> np.ndarray:
    """The n-grams of a question that touch its test part, i.e. are not wholly inside its source text.

    Several MMLU questions ask about one reading passage, and IFEval prompts quote passages that other
    datasets quote too: the passage alone in a training example is not the test. Empty when the item has
    no source text (no constraint then)."""
    if not len(source) or len(key) < ngram:
        return np.empty(0, np.uint32)
    shingles = sig.shingle_hashes(key, ngram)
    at = next(
        (p for p in np.flatnonzero(key == source[0]) if np.array_equal(key[p : p + len(source)], source)),
        None,
    )
    if at is None:
        return np.empty(0, np.uint32)
    starts = np.arange(len(shingles))
    inside = (starts >= at) & (starts + ngram <= at + len(source))
    return _unique(shingles[~inside])


def _hash_units(
    units: Sequence[Any], ngram: int, hasher: sig.WordHashes, progress: Callable[[int], None]
) -> dict[str, list[Any]]:
    """Per unit, in word hashes: its key (the question as written), answer, distinct choice words, how
    often its prompt holds the answer, its distinct n-grams and those touching its test part. The bulk of
    a build: `progress` hears the units hashed so far, every PROGRESS_UNITS."""
    keys, answers, prompt_counts, all_shingles, choice_words = [], [], [], [], []
    stems: list[np.ndarray] = []
    for done, item in enumerate(units, 1):
        answer = getattr(item, "answer", "") or ""
        # The question as written: a WinoGrande blank `_` is dropped like punctuation, which is how the
        # sentence appears in data built from the benchmark's own files.
        key = hasher.array(word_bytes(item.question or ""))
        ans = hasher.array(word_bytes(answer))
        prompt = getattr(item, "prompt", None) or "\n".join([item.question or "", *item.choices])
        prompt = hasher.array(word_bytes(prompt))
        choice_words.append(_unique(hasher.array(word_bytes(" ".join(item.choices)))).astype(np.uint32))
        keys.append(key)
        answers.append(ans)
        prompt_counts.append(_count(prompt, ans))
        all_shingles.append(_unique(sig.shingle_hashes(key, ngram)))
        source = getattr(item, "source", "")
        stems.append(_test_shingles(key, hasher.array(word_bytes(source)), ngram) if source else key[:0])
        if done % PROGRESS_UNITS == 0:
            progress(done)
    return {
        "stems": stems,
        "keys": keys,
        "answers": answers,
        "prompt_counts": prompt_counts,
        "choice_words": choice_words,
        "shingles": all_shingles,
    }


def _distinctive(choice_words: list[np.ndarray]) -> list[np.ndarray]:
    """Each unit's choice words less those that many items use ("the", "of", "not"): those tell no item's
    choices apart."""
    words_flat = np.concatenate(choice_words) if choice_words else np.empty(0, np.uint32)
    word_ids, word_counts = np.unique(words_flat, return_counts=True)
    stop = word_ids[word_counts >= COMMON_CHOICE_WORD]
    kept = ~np.isin(words_flat, stop)
    bounds = np.cumsum([len(w) for w in choice_words])[:-1]
    return [w[k] for w, k in zip(choice_words, np.split(kept, bounds), strict=True)]


def _informative(
    units: Sequence[Any], owners: Sequence[int], keys: list[np.ndarray], all_shingles: list[np.ndarray]
) -> tuple[list[np.ndarray], np.ndarray]:
    """Each unit's n-grams less template text (in BOILERPLATE_ITEMS items or more) and less context that
    items of its benchmark share (unless its items are twins); and whether each unit's items are twins."""
    flat = np.concatenate(all_shingles) if all_shingles else np.empty(0, np.uint32)
    sizes = [len(x) for x in all_shingles]
    # An item's two units count once, and so do items that ask the very same question (MMLU repeats a few
    # questions word for word): copies are one text, not a passage that several questions share.
    first_asking: dict[bytes, int] = {}
    canonical = [first_asking.setdefault(keys[owner].astype(np.uint32).tobytes(), owner) for owner in owners]
    item_of = np.repeat(np.asarray(canonical, dtype=np.uint64), sizes)
    held = np.unique((item_of << np.uint64(32)) | flat.astype(np.uint64))  # (item, n-gram), once each
    held_hash = (held & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    uniq, counts = np.unique(held_hash, return_counts=True)
    common = counts[np.searchsorted(uniq, flat)] >= BOILERPLATE_ITEMS
    # Context shared by items of one benchmark (a reading passage several questions ask about, a task's
    # instructions) identifies none of them: only what sets an item apart from its siblings counts.
    bench_ids = {name: k for k, name in enumerate(dict.fromkeys(unit.benchmark for unit in units))}
    unit_bench = np.array([bench_ids[unit.benchmark] for unit in units], dtype=np.int64)
    bench_of_item = np.zeros(max(owners, default=-1) + 1, dtype=np.uint64)
    bench_of_item[np.asarray(owners, dtype=np.int64)] = unit_bench
    held_pairs = (bench_of_item[(held >> np.uint64(32)).astype(np.int64)] << np.uint64(32)) | held_hash
    pair_keys, pair_counts = np.unique(held_pairs, return_counts=True)
    flat_pairs = (bench_of_item[item_of.astype(np.int64)] << np.uint64(32)) | flat.astype(np.uint64)
    shared = pair_counts[np.searchsorted(pair_keys, flat_pairs)] >= SHARED_IN_BENCHMARK
    twins = np.array([_twin_items(name) for name in bench_ids], dtype=bool)
    common |= shared & ~twins[bench_of_item[item_of.astype(np.int64)].astype(np.int64)]
    bounds = np.cumsum(sizes)[:-1]
    informative = [x[~m] for x, m in zip(all_shingles, np.split(common, bounds), strict=True)]
    return informative, twins[unit_bench]


def _twin_items(benchmark: str) -> bool:
    """Whether the registry says a benchmark's items come in twins (custom benchmarks do not)."""
    spec = REGISTRY.get(benchmark)
    return bool(spec is not None and spec.twin_items)


def _whole_questions(keys: list[np.ndarray], answers: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Hashes of every item's whole question: a training example, or one line of it, that is exactly a
    question is that item whatever the question's length. A question text that items with different
    answers share (BBH's bracket-only Dyck prompts) names none of them without its answer."""
    have = [i for i, key in enumerate(keys) if len(key)]
    lengths = np.array([len(keys[i]) for i in have], dtype=np.int32)
    flat = np.concatenate([keys[i] for i in have]).astype(np.uint64) if have else np.empty(0, np.uint64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    hashes = sig.run_hashes(flat, starts, lengths.astype(np.int64))
    order = np.argsort(hashes, kind="stable")
    answers_of: dict[int, set[bytes]] = {}
    for h, i in zip(hashes.tolist(), have, strict=True):
        answers_of.setdefault(h, set()).add(answers[i].astype(np.uint32).tobytes())
    shared = np.zeros(len(keys), dtype=bool)
    for h, i in zip(hashes.tolist(), have, strict=True):
        shared[i] = len(answers_of[h]) > 1
    return {
        "whole_hashes": hashes[order],
        "whole_items": np.array(have, dtype=np.int64)[order],
        "whole_lengths": lengths[order],
        "whole_shared": shared,
        "labels": np.array([sig.word_hash(w) for w in LINE_LABELS], dtype=np.uint64),
    }


@dataclass
class _Units:
    """How the index matches each unit (`_unit_modes`)."""

    mode: np.ndarray  # NGRAM_MODE, EXACT_MODE or SKIPPED
    klass: np.ndarray  # size class of the ngram-mode units
    in_key: np.ndarray  # the key holds the answer (a short question matched with its answer)
    keys: list[np.ndarray]
    informative: list[np.ndarray]  # sorted; empty unless ngram mode
    stems: list[np.ndarray]  # sorted; empty unless ngram mode
    beyond: list[np.ndarray]  # a whole-text unit's informative n-grams past its question
    sets: list[np.ndarray]  # the n-gram sets to sign, of ...
    set_items: list[int]  # ... these units


def _unit_modes(units: Sequence[Any], n_items: int, prep: dict[str, Any], ngram: int) -> _Units:
    """Each unit's mode: n-grams when it has MIN_SHINGLES informative ones, else its question as exact text
    (with the answer appended when it is shorter than MIN_EXACT_WORDS), or nothing; a whole-text unit
    (after the n_items questions) only by n-grams, and only with informative n-grams past its question."""
    n_units = len(units)
    out = _Units(
        mode=np.zeros(n_units, dtype=np.int8),
        klass=np.zeros(n_units, dtype=np.int16),
        in_key=np.zeros(n_units, dtype=bool),
        keys=[],
        informative=[],
        stems=[],
        beyond=[np.empty(0, np.uint32)] * n_items,
        sets=[],
        set_items=[],
    )
    for i in range(n_units):
        key, ans = prep["keys"][i], prep["answers"][i]
        shingles, info = prep["shingles"][i], prep["informative"][i]
        if i >= n_items:  # a whole-text unit: n-grams only (its question unit covers exact text)
            past = sig.shingle_hashes(key, ngram)[max(0, units[i].question_words - ngram + 1) :]
            out.beyond.append(np.sort(info[np.isin(info, past)]).astype(np.uint32))
            # Without informative n-grams past the question it adds nothing to the question's own unit.
            by_ngrams = len(info) >= MIN_SHINGLES and len(out.beyond[-1]) > 0
        else:
            if len(info) < MIN_SHINGLES and len(key) < MIN_EXACT_WORDS:
                # "Who are you?" is nothing without its answer
                key, out.in_key[i] = np.concatenate([key, ans]), True
            by_ngrams = len(info) >= MIN_SHINGLES
            if not by_ngrams:
                out.mode[i] = EXACT_MODE if len(key) >= MIN_EXACT_WORDS else SKIPPED
        out.keys.append(key)
        if by_ngrams:
            out.mode[i] = NGRAM_MODE
            out.informative.append(np.sort(info))
            out.stems.append(np.sort(prep["stems"][i]).astype(np.uint32))
            out.klass[i] = min(int(np.searchsorted(CLASSES, len(shingles))), len(CLASSES) - 1)
            out.sets.append(shingles)
            out.set_items.append(i)
        else:
            out.informative.append(np.empty(0, np.uint32))
            out.stems.append(np.empty(0, np.uint32))
    return out


def _answer_required(mode: np.ndarray, keys: list[np.ndarray], answers: list[np.ndarray]) -> np.ndarray:
    """Exact-text items whose words are those of other items too (BBH's Dyck prompts, once the brackets are
    dropped, are 250 copies of one sentence) say nothing alone: their answer must be there as well, and
    with no answer left after normalization they cannot be told apart at all (`mode` set to SKIPPED)."""
    answer_required = np.zeros(len(mode), dtype=bool)
    exact_keys_seen: dict[bytes, list[int]] = {}
    for i in np.flatnonzero(mode == EXACT_MODE):
        exact_keys_seen.setdefault(keys[i].astype(np.uint32).tobytes(), []).append(int(i))
    for group in exact_keys_seen.values():
        if len(group) >= 2:
            for i in group:
                answer_required[i] = True
                if len(answers[i]) == 0:
                    mode[i] = SKIPPED
    return answer_required


def _rare_words(keys: list[np.ndarray]) -> np.ndarray:
    """Per key, its distinct words used by fewer than COMMON_CHOICE_WORD keys: "Which of the following is a
    correct statement?" has none, so it is no one's."""
    uniq_keys = [_unique(k) for k in keys]
    flat_words = np.concatenate(uniq_keys) if uniq_keys else np.empty(0)
    all_words, word_df = np.unique(flat_words, return_counts=True)
    common_words = all_words[word_df >= COMMON_CHOICE_WORD]
    owners = np.repeat(np.arange(len(keys)), [len(k) for k in uniq_keys])
    rare = ~np.isin(flat_words, common_words)
    return np.bincount(owners[rare], minlength=len(keys)).astype(np.int32)


def _lsh_tables(units: _Units, num_perm: int, seed: int) -> dict[str, Any]:
    """The MinHash signature of every ngram-mode unit and, per size class, its band keys sorted (the numpy
    form of that class's `MinHashLSH`) with the fewest shingles of a unit in the class."""
    sig_items = np.array(units.set_items, dtype=np.int64)
    signatures = np.empty((0, num_perm), dtype=np.uint32)
    tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    class_min: dict[int, int] = {}
    if units.sets:
        sizes = np.array([len(s) for s in units.sets])
        starts = np.zeros(len(units.sets), dtype=np.int64)
        starts[1:] = np.cumsum(sizes)[:-1]
        signatures = sig.set_minima(np.concatenate(units.sets), starts, sig.permutations(num_perm, seed))
        band = sig.band_keys(signatures, ROWS_PER_BAND)
        for c in np.unique(units.klass[sig_items]):
            rows = np.flatnonzero(units.klass[sig_items] == c)
            class_min[int(c)] = int(sizes[rows].min())
            flat_keys = band[rows].ravel()
            flat_items = np.repeat(sig_items[rows], band.shape[1])
            order = np.argsort(flat_keys, kind="stable")
            tables[int(c)] = (flat_keys[order], flat_items[order])
    return {"signatures": signatures, "sig_items": sig_items, "tables": tables, "class_min": class_min}


def _exact_lookup(mode: np.ndarray, keys: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The exact-mode units, sorted by the hash of their key's first EXACT_KEY_WORDS words."""
    exact = np.flatnonzero(mode == EXACT_MODE)
    exact_keys = np.array(
        [int(sig.shingle_hashes(keys[i][:EXACT_KEY_WORDS], EXACT_KEY_WORDS)[0]) for i in exact],
        dtype=np.uint32,
    )
    order = np.argsort(exact_keys, kind="stable")
    return {"exact_keys": exact_keys[order], "exact_items": exact.astype(np.int64)[order]}


def _postings(informative: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Every informative n-gram of the index once, sorted (the prefilter), and the units holding each."""
    info_ptr, info_data = informative
    owners = np.repeat(np.arange(len(info_ptr) - 1, dtype=np.int64), np.diff(info_ptr))
    order = np.argsort(info_data, kind="stable")
    bench, first = np.unique(info_data[order], return_index=True)
    return {
        "bench_hashes": bench.astype(np.uint32),
        "postings": (np.append(first, len(order)).astype(np.int64), owners[order]),
    }


INDEX_STEP = "indexing benchmarks"  # the progress step of a build, counted in items


def _by_share(advance: Callable[[int], None], total: int) -> Callable[[float], None]:
    """A callback that moves a counter to `total` (`advance` adds to it) forward to a share of the work."""
    shown = 0

    def to_share(share: float) -> None:
        nonlocal shown
        target = int(total * share)
        if target > shown:
            advance(target - shown)
            shown = target

    return to_share


def _index_arrays(
    items: Sequence[Any], num_perm: int, seed: int, ngram: int, advance: Callable[[float], None]
) -> dict[str, Any]:
    """Every array of the index of `items`, as `BenchmarkIndex` keywords; `advance` hears the share done."""
    units, unit_item = full_texts(items)
    prep = _hash_units(units, ngram, sig.WordHashes(), lambda done: advance(HASHED * done / len(units)))
    prep["choice_words"] = _distinctive(prep["choice_words"])
    prep["informative"], prep["twin"] = _informative(units, unit_item, prep["keys"], prep["shingles"])
    advance(INFORMATIVE)
    unit = _unit_modes(units, len(items), prep, ngram)
    answer_required = _answer_required(unit.mode, unit.keys, prep["answers"])
    advance(MODES)
    lsh = _lsh_tables(unit, num_perm, seed)
    advance(1.0)
    informative = _csr(unit.informative, np.uint32)
    return {
        "unit_item": np.asarray(unit_item, dtype=np.int64),
        "twin": prep["twin"],
        "mode": unit.mode,
        "klass": unit.klass,
        "informative": informative,
        "stem": _csr(unit.stems, np.uint32),
        "beyond": _csr(unit.beyond, np.uint32),
        "key_words": _csr(unit.keys, np.uint32),
        "answer_words": _csr(prep["answers"], np.uint32),
        "choice_words": _csr(prep["choice_words"], np.uint32),
        "prompt_answer_count": np.array(prep["prompt_counts"], dtype=np.int32),
        "answer_in_key": unit.in_key,
        "answer_required": answer_required,
        "rare_words": _rare_words(unit.keys),
        **_whole_questions(prep["keys"][: len(items)], prep["answers"][: len(items)]),
        **_postings(informative),
        **_exact_lookup(unit.mode, unit.keys),
        **lsh,
    }


def build_from_items(
    items: Sequence[Any],
    *,
    num_perm: int = 128,
    seed: int = 1,
    ngram: int = DEFAULT_NGRAM,
    index_hash: str = "",
    progress: ProgressCallback | None = None,
) -> BenchmarkIndex:
    """Build the index for a list of benchmark `Item`s (no cache). `progress` hears the build as the step
    INDEX_STEP, counted in items."""
    if num_perm < 2 * ROWS_PER_BAND:
        raise MergeguardError(f"num_perm {num_perm} is too small", hint="use 128 (the default) or more")
    with step(progress, INDEX_STEP, len(items)) as counter:
        arrays = _index_arrays(items, num_perm, seed, ngram, _by_share(counter.advance, len(items)))
    refs = [
        ItemRef(it.benchmark, it.split, it.index, None if it.item_id is None else str(it.item_id), it.subset)
        for it in items
    ]
    return BenchmarkIndex(
        refs=refs,
        num_perm=num_perm,
        seed=seed,
        ngram=ngram,
        index_hash=index_hash,
        items=list(items),
        **arrays,
    )


_ARRAYS = (
    "unit_item",
    "twin",
    "mode",
    "klass",
    "prompt_answer_count",
    "answer_in_key",
    "answer_required",
    "rare_words",
    "whole_hashes",
    "whole_items",
    "whole_lengths",
    "whole_shared",
    "labels",
    "bench_hashes",
    "exact_keys",
    "exact_items",
    "signatures",
    "sig_items",
)
_CSRS = ("informative", "stem", "beyond", "key_words", "answer_words", "choice_words", "postings")


def save_index(index: BenchmarkIndex, folder: Path) -> None:
    """Write the index atomically (a temporary folder renamed into place)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        arrays = {name: getattr(index, name) for name in _ARRAYS}
        for name in _CSRS:
            arrays[f"{name}_ptr"], arrays[f"{name}_data"] = getattr(index, name)
        for c, (keys, items) in index.tables.items():
            arrays[f"table{c}_keys"], arrays[f"table{c}_items"] = keys, items
        np.savez(tmp / "arrays.npz", **arrays)
        meta = {
            "refs": [list(vars(r).values()) for r in index.refs],
            "num_perm": index.num_perm,
            "seed": index.seed,
            "ngram": index.ngram,
            "class_min": {str(k): v for k, v in index.class_min.items()},
            "index_hash": index.index_hash,
            "benchmarks": index.benchmarks,
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_index(folder: Path) -> BenchmarkIndex:
    """Read an index written by `save_index`."""
    meta = json.loads((folder / "meta.json").read_text())
    with np.load(folder / "arrays.npz") as data:
        arrays = {name: data[name] for name in data.files}
    return BenchmarkIndex(
        refs=[ItemRef(*row) for row in meta["refs"]],
        num_perm=meta["num_perm"],
        seed=meta["seed"],
        ngram=meta["ngram"],
        tables={int(c): (arrays[f"table{c}_keys"], arrays[f"table{c}_items"]) for c in meta["class_min"]},
        class_min={int(k): v for k, v in meta["class_min"].items()},
        index_hash=meta["index_hash"],
        benchmarks=meta["benchmarks"],
        **{name: arrays[name] for name in _ARRAYS},
        **{name: (arrays[f"{name}_ptr"], arrays[f"{name}_data"]) for name in _CSRS},
    )


def build_index(
    benchmarks: Sequence[Any],
    cache_dir: Path | None = None,
    num_perm: int = 128,
    *,
    seed: int = 1,
    ngram: int = DEFAULT_NGRAM,
    progress: ProgressCallback | None = None,
) -> BenchmarkIndex:
    """The index of the loaded benchmarks, from `cache_dir` when an identical one was built before.
    `progress` hears a build (step INDEX_STEP, in items); a cache hit reports nothing."""
    key = cache_key([(b.spec.name, b.content_hash) for b in benchmarks], num_perm, seed, ngram)
    items = [item for b in benchmarks for item in b.items]
    folder = Path(cache_dir) / "audit-index" / key if cache_dir else None
    if folder is not None and (folder / "meta.json").is_file():
        try:
            index = load_index(folder)
        except Exception:  # a damaged cache entry is rebuilt, not fatal
            index = None
        if index is not None and len(index.refs) == len(items):
            index.items = items
            return index
    index = build_from_items(
        items, num_perm=num_perm, seed=seed, ngram=ngram, index_hash=key, progress=progress
    )
    index.benchmarks = {
        b.spec.name: {"items": len(b.items), "split": b.spec.split, "content_hash": b.content_hash}
        for b in benchmarks
    }
    if folder is not None:
        save_index(index, folder)
    return index
