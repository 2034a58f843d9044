"""The semantic stage: paraphrased and translated benchmark items in training examples.

Runs after the lexical stage, on the examples it did not explain. A cascade, because a transformer encoder
runs at tens of examples a second on a small CPU while datasets hold millions:

1. retrieval (every example, cheap): the example's content-word stems and numbers against every item's,
   weighted by rarity (idf squared); an item whose weighted words the example mostly holds is a candidate.
   A rephrase keeps an item's names, rare words and numbers; that is also what verification needs, so an
   example with none of them could not be confirmed anyway.
2. embedding (candidates only): the example and its candidate items through a sentence encoder, cosine.
3. verification: evidence that survives rewording (`evidence.py`): the numbers and stated final answer of a
   math item, the gold choice and distractors of a multiple-choice item, the rare words; and optionally a
   local judge model for the close candidates the evidence leaves open.

A confirmed pair is a `ParaphraseMatch`; the audit turns it into a finding of severity `paraphrase`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np

from mergeguard.auditor.datasets import ReadLog, dataset_texts
from mergeguard.auditor.embeddings import DEFAULT_EMBEDDING_MODEL, Encoder, ItemEmbeddings, Judge
from mergeguard.auditor.evidence import Evidence, gather, numbers, stems
from mergeguard.auditor.gloss import Glossary, has_cjk
from mergeguard.auditor.translation import align, gloss_options, question_coverage
from mergeguard.errors import DatasetError
from mergeguard.paths import cache_dir

TOP_K = 5  # candidate items per example
RETRIEVAL_MIN = 0.15  # idf-weighted cosine of content stems (and numbers) for an item to be a candidate
COMMON_SHARE = 0.02  # stems in more items than this share carry no identity: out of retrieval
# A Chinese example glossed word by word holds every sense of every word: many stems, so a low idf cosine
# even with its own item; more candidates, a lower bar, and the aligned choices decide (translation.py).
GLOSSED_TOP_K = 10
GLOSSED_RETRIEVAL_MIN = 0.02
RARE_DF = 100  # a stem in at most this many items (of ~45,000) is rare
# Verification. Cosines are the default model's (all-MiniLM-L6-v2, unit vectors); measured in
# perf/semantic_accuracy.py against the hardest negatives (GSM8K train, same style, other problems).
MATH_COSINE = 0.75  # a math item: most of its numbers, one distinctive (> 12), no other final answer
SMALL_NUMBERS_COSINE = 0.85  # ... only small numbers (a list, a count) but a rare word too: closer still
MATH_NUMBER_SHARE = 0.75
MIN_NUMBERS = 2
# A rephrase often leaves some numbers unsaid ("a few", "the rest", "some"): half the item's numbers, one
# distinctive, and a cosine this close (GSM8K train's and Alpaca's closest such pairs: 0.79).
PARTIAL_NUMBERS_COSINE = 0.85
PARTIAL_NUMBER_SHARE = 0.5
CHOICE_COSINE = 0.80  # a multiple-choice item with its gold choice and distractors beside it
MIN_CHOICES = 3
# An item without numbers or choices beside it: a rare word shared, this close, and an example about as
# long as the item (a rephrased question, not a text on the same topic: Alpaca's "What is the Hubble Space
# Telescope?" answer against ARC's Hubble item is what a longer example looks like).
TEXT_COSINE = 0.84
TEXT_RETRIEVAL = 0.35  # ... and a word retrieval this high (it also keeps the encoder off 95% of Alpaca)
MIN_RARE = 1
LENGTH_RATIO = 1.5  # example content words <= this x the item's + LENGTH_SLACK
LENGTH_SLACK = 2
# A non-English example (the encoder reads English): numbers alone confirm, all of the item's, at least
# this many distinct, two of them distinctive.
TRANSLATION_NUMBERS = 3
SMALL_NUMBERS = frozenset(str(n) for n in range(13))  # 0-12: in any list or count, not evidence alone
JUDGE_COSINE = 0.60  # candidates this close that the evidence leaves open go to the judge, if any
JUDGE_YES = 0.5
BATCH = 1024


@dataclass
class ParaphraseMatch:
    """One benchmark item confirmed, reworded, inside one training example."""

    example: int
    item: int  # row in the index
    cosine: float
    retrieval: float
    reason: str  # numbers | small_numbers | choices | rare_words | translation | translated_choices | judge
    evidence: Evidence
    judge: float | None = None
    text: str = field(repr=False, default="")

    @property
    def score(self) -> float:
        """The cosine, or for a translation (never through the encoder) how much of the item it holds."""
        return self.cosine if self.reason not in UNENCODED else self.evidence.coverage or 0.0

    def evidence_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "reason": self.reason,
            "cosine": round(self.cosine, 4) if self.reason not in UNENCODED else None,
            "retrieval": round(self.retrieval, 4),
            **self.evidence.to_json(),
        }
        if self.judge is not None:
            out["judge"] = round(self.judge, 4)
        return out


@dataclass
class SemanticStats:
    """The stage's cost, for the report."""

    model: str
    dtype: str = "float32"  # the encoder's (AuditOptions.embedding_dtype resolved on this machine)
    examples: int = 0  # examples read
    considered: int = 0  # not explained lexically, long enough
    embedded: int = 0  # examples with a candidate (through the encoder)
    glossed: int = 0  # Chinese examples read through the dictionary
    pairs: int = 0  # (example, item) pairs verified
    judged: int = 0
    confirmed: int = 0
    items_embedded: int = 0  # item embeddings computed (not from the cache)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out = dict(vars(self))
        out["seconds"] = round(self.seconds, 3)
        out["examples_per_s"] = round(self.examples / self.seconds, 1) if self.seconds else None
        return out


def _ascii_share(text: str) -> float:
    """The share of a text's letters that are ASCII (English text: 1.0 without a walk over its characters)."""
    if text.isascii():
        return 1.0
    letters = [c for c in text if c.isalpha()]
    return sum(c.isascii() for c in letters) / len(letters) if letters else 1.0


def item_query(item: Any) -> str:
    """The part of an item a rephrase keeps: its question without the shared source passage."""
    question = item.question
    if item.source and item.source in question:
        question = question.replace(item.source, " ").strip() or question
    return question


class ItemTable:
    """Per item: retrieval weights, numbers, rare stems, choices; built once per audit from the index.
    `with_choices`: retrieval over each item's question and choices (a translated example keeps both)."""

    def __init__(self, items: list[Any], with_choices: bool = False) -> None:
        from scipy import sparse

        self.items = items
        self.queries = [item_query(item) for item in items]
        if with_choices:
            self.queries = [
                "\n".join((q, *item.choices)) for q, item in zip(self.queries, items, strict=True)
            ]
        own = [stems(q) for q in self.queries]
        df: dict[str, int] = {}
        for words in own:
            for w in words:
                df[w] = df.get(w, 0) + 1
        n = max(len(items), 1)
        limit = max(RARE_DF, COMMON_SHARE * n)
        self.vocab = {w: k for k, w in enumerate(sorted(w for w, c in df.items() if c <= limit))}
        self.rare = [{w for w in words if df[w] <= RARE_DF} for words in own]
        self.sizes = [len(words) for words in own]
        self.numbers = [numbers(q) for q in self.queries]
        self.idf = {w: math.log(n / c) for w, c in df.items() if c <= limit}
        self.unseen = math.log(n)  # an example's stem no item holds: as rare as can be
        rows, cols, vals = [], [], []
        for i, words in enumerate(own):
            kept = [(self.vocab[w], self.idf[w]) for w in words if w in self.vocab]
            norm = math.sqrt(sum(weight * weight for _, weight in kept)) or 1.0
            for col, weight in kept:
                rows.append(i)
                cols.append(col)
                vals.append(weight / norm)
        self.weights = sparse.csr_matrix(
            (np.array(vals, np.float32), (rows, cols)), shape=(len(items), max(len(self.vocab), 1))
        ).T.tocsr()  # (vocab, items): an example's unit idf row @ this = its idf cosine with each item

    def question_weights(self, item: int) -> dict[str, float]:
        """An item question's stems with their idf (stems in too many items carry none and are left out)."""
        return {w: self.idf[w] for w in stems(self.queries[item]) if w in self.idf}

    def retrieve(
        self, example_stems: list[set[str]], top_k: int = TOP_K, minimum: float = RETRIEVAL_MIN
    ) -> list[list[tuple[int, float]]]:
        """Per example, up to `top_k` (item, idf cosine) with cosine >= `minimum`."""
        from scipy import sparse

        rows, cols, vals = [], [], []
        for e, words in enumerate(example_stems):
            weights = [self.idf.get(w, self.unseen) for w in words if w in self.idf or w not in self.vocab]
            norm = math.sqrt(sum(weight * weight for weight in weights)) or 1.0
            for w in words:
                col = self.vocab.get(w)
                if col is not None:
                    rows.append(e)
                    cols.append(col)
                    vals.append(self.idf[w] / norm)
        x = sparse.csr_matrix(
            (np.array(vals, np.float32), (rows, cols)), shape=(len(example_stems), self.weights.shape[0])
        )
        scores = (x @ self.weights).tocsr()
        out: list[list[tuple[int, float]]] = []
        for e in range(len(example_stems)):
            lo, hi = scores.indptr[e], scores.indptr[e + 1]
            data, idx = scores.data[lo:hi], scores.indices[lo:hi]
            keep = data >= minimum
            data, idx = data[keep], idx[keep]
            order = np.argsort(-data)[:top_k]
            out.append([(int(idx[k]), float(data[k])) for k in order])
        return out


def _gold(item: Any) -> str:
    return item.answer if item.answer in item.choices else ""


def holds_numbers(evidence: Evidence, share: float) -> bool:
    """Whether the example holds `share` of the item's numbers, and two at least (an item with fewer than
    two has no numbers to tell it by)."""
    needed = max(MIN_NUMBERS, math.ceil(share * evidence.item_numbers))
    return evidence.item_numbers >= MIN_NUMBERS and len(evidence.numbers) >= needed


def evidence_reason(evidence: Evidence, english: bool, retrieval: float) -> str | None:
    """The kind of evidence a pair holds, before any model runs (only such pairs are embedded), or None."""
    if evidence.answer_conflict:
        return None  # the example states another final answer: another problem
    found = len(evidence.numbers)
    distinctive = sum(1 for n in evidence.numbers if n not in SMALL_NUMBERS)
    enough_numbers = holds_numbers(evidence, MATH_NUMBER_SHARE)
    if not english:  # the encoder reads English: only what survives translation confirms
        whole = found == evidence.item_numbers >= TRANSLATION_NUMBERS and distinctive >= 2
        return "translation" if whole else None
    if enough_numbers and distinctive:
        return "numbers"
    if enough_numbers and evidence.rare_words:
        return "small_numbers"
    if evidence.gold_choice and len(evidence.choices) >= MIN_CHOICES:
        return "choices"
    if (
        holds_numbers(evidence, PARTIAL_NUMBER_SHARE) and distinctive
    ):  # after the choices: a pair with both keeps the choices' lower bar
        return "partial_numbers"
    question_sized = evidence.example_words <= LENGTH_RATIO * evidence.item_words + LENGTH_SLACK
    if (
        len(evidence.rare_words) >= MIN_RARE
        and evidence.item_numbers < MIN_NUMBERS
        and question_sized
        and retrieval >= TEXT_RETRIEVAL
    ):
        return "rare_words"
    return None


COSINE = {
    "numbers": MATH_COSINE,
    "small_numbers": SMALL_NUMBERS_COSINE,
    "partial_numbers": PARTIAL_NUMBERS_COSINE,
    "choices": CHOICE_COSINE,
    "rare_words": TEXT_COSINE,
    "translation": -1.0,
    "translated_choices": -1.0,
}
UNENCODED = frozenset({"translation", "translated_choices"})  # confirmed without the (English) encoder


def confirmed(reason: str | None, cosine: float) -> str | None:
    """The evidence's kind (`evidence_reason`) when the cosine reaches what that kind needs, else None."""
    return reason if reason is not None and cosine >= COSINE[reason] else None


class SemanticStage:
    """The stage for one audit: the item table and the models, reused for every dataset."""

    def __init__(self, index: Any, options: Any, cache_dir: Any = None) -> None:
        name = options.embedding_model or DEFAULT_EMBEDDING_MODEL
        self.encoder = Encoder(name, options.device, options.embedding_dtype)
        self.judge = Judge(options.judge, options.device) if options.judge else None
        self.index = index
        self.table = ItemTable(list(index.items or []))
        self.item_vectors = ItemEmbeddings(self.encoder, index.index_hash, cache_dir)
        self.min_chars = options.semantic_min_chars
        self.glossary: Glossary | None = None  # CC-CEDICT, loaded on the first Chinese example
        self.choice_table: ItemTable | None = None

    def scan(
        self,
        texts: Iterable[str],
        skip: set[int],
        progress: Callable[[int], None] | None = None,
    ) -> tuple[list[ParaphraseMatch], SemanticStats]:
        """Paraphrase matches in `texts` (example numbers are positions), examples in `skip` left out."""
        stats = SemanticStats(model=self.encoder.name, dtype=self.encoder.dtype)
        started = time.perf_counter()
        added = self.item_vectors.added
        matches: list[ParaphraseMatch] = []
        iterator = iter(texts)
        offset = 0
        while batch := list(islice(iterator, BATCH)):
            matches.extend(self._batch(batch, offset, skip, stats))
            offset += len(batch)
            if progress:
                progress(len(batch))
        self.item_vectors.save()
        stats.examples = offset
        stats.confirmed = len(matches)
        stats.items_embedded = self.item_vectors.added - added
        stats.seconds = time.perf_counter() - started
        return matches, stats

    def _batch(
        self, batch: list[str], offset: int, skip: set[int], stats: SemanticStats
    ) -> list[ParaphraseMatch]:
        chosen = [
            (offset + k, text)
            for k, text in enumerate(batch)
            if isinstance(text, str) and len(text.strip()) >= self.min_chars and offset + k not in skip
        ]
        stats.considered += len(chosen)
        own, found, options = self._retrieve(chosen)
        stats.glossed += len(options)
        pairs = []  # (chosen row, item, retrieval, evidence, reason before the cosine)
        for k, hits in enumerate(found):
            number, text = chosen[k]
            english = bool(hits) and k not in options and _ascii_share(text) >= 0.5  # read only when needed
            for i, share in hits:
                item = self.table.items[i]
                evidence = gather(
                    text, own[k], self.table.numbers[i], item.short_answer, item.choices, _gold(item),
                    self.table.rare[i], self.table.sizes[i],
                )  # fmt: skip
                reason = evidence_reason(evidence, english, share)
                if k in options and reason is None:
                    reason = self._translated_choices(evidence, options[k], own[k], i)
                if reason is not None or self.judge is not None:
                    pairs.append((k, i, share, evidence, reason))
        stats.pairs += len(pairs)
        rows = sorted({k for k, _, _, _, reason in pairs if reason not in UNENCODED})
        distinct = list(dict.fromkeys(chosen[k][1] for k in rows))  # a repeated example is embedded once
        stats.embedded += len(distinct)
        encoded = dict(zip(distinct, self.encoder.encode(distinct), strict=True))
        vectors = {k: encoded[chosen[k][1]] for k in rows}
        wanted = sorted({i for k, i, *_ in pairs if k in vectors})
        items = self.item_vectors.get(wanted, {i: self.table.queries[i] for i in wanted})
        best: dict[int, ParaphraseMatch] = {}
        for k, i, share, evidence, reason in pairs:
            number, text = chosen[k]
            cosine = float(vectors[k] @ items[i]) if k in vectors else 0.0
            verdict = confirmed(reason, cosine)
            score = None
            if verdict is None and self.judge is not None and cosine >= JUDGE_COSINE:
                stats.judged += 1
                score = self.judge.score(text, self.table.items[i].text())
                verdict = "judge" if score >= JUDGE_YES else None
            if verdict:
                match = ParaphraseMatch(number, i, cosine, share, verdict, evidence, score, text)
                if k not in best or match.score > best[k].score:
                    best[k] = match
        return [best[k] for k in sorted(best)]

    def _retrieve(
        self, chosen: list[tuple[int, str]]
    ) -> tuple[list[set[str]], list[list[tuple[int, float]]], dict[int, dict[str, set[str]]]]:
        """Per example: its stems, its candidate items, and (Chinese examples only) its glossed lettered
        options. A Chinese example is read through the glossary and retrieved against the items' questions
        and choices (a translation keeps both)."""
        own = [stems(text) for _, text in chosen]
        found = self.table.retrieve(own)
        chinese = [k for k, (_, text) in enumerate(chosen) if has_cjk(text) and _ascii_share(text) < 0.5]
        if not chinese:
            return own, found, {}
        if self.glossary is None:  # loaded on the first Chinese example: English data never pays for it
            self.glossary = Glossary()
            self.choice_table = ItemTable(self.table.items, with_choices=True)
        glossed = [self.glossary.stems(chosen[k][1]) for k in chinese]
        hits = self.choice_table.retrieve(glossed, GLOSSED_TOP_K, GLOSSED_RETRIEVAL_MIN)
        for k, words, candidates in zip(chinese, glossed, hits, strict=True):
            own[k], found[k] = words, candidates
        return own, found, {k: gloss_options(self.glossary, chosen[k][1]) for k in chinese}

    def _translated_choices(
        self, evidence: Evidence, options: dict[str, set[str]], example: set[str], item: int
    ) -> str | None:
        """`translated_choices` when a Chinese example's options translate the item's choices (the
        evidence then records the aligned choices and the coverage), else None."""
        choices = self.table.items[item].choices
        if not options or len(choices) < MIN_CHOICES:
            return None
        coverage = question_coverage(example, self.table.question_weights(item))
        aligned = align(options, choices, _gold(self.table.items[item]), coverage)
        evidence.choices, evidence.gold_choice = aligned.aligned, aligned.gold
        evidence.coverage, evidence.question_coverage = aligned.score, aligned.question_coverage
        return "translated_choices" if aligned.confirms() else None


def open_stage(index: Any, options: Any) -> SemanticStage:
    """The stage for an audit (loads the encoder and the judge: a bad model fails here, exit 2)."""
    return SemanticStage(index, options, cache_dir(options.cache_dir))


def scan_dataset(
    stage: SemanticStage,
    ref: str,
    options: Any,
    skip: set[int],
    progress: Callable[[int], None] | None = None,
) -> tuple[list[ParaphraseMatch], SemanticStats]:
    """The stage over one dataset, read a second time rather than kept from the lexical pass: memory stays
    bounded by a batch whatever the dataset's size, and reading costs a small fraction of the encoder's time.
    Rows are numbered as in the first read (bad rows skipped the same way, over-long texts as empty); a read
    error ends the stream (the lexical pass has already recorded it and the verdict fails closed). The
    audit turns the matches into findings of severity `paraphrase`."""
    log = ReadLog(ref, skip_bad_rows=options.skip_bad_rows, max_line=options.max_line)

    def texts() -> Iterator[str]:
        try:
            for text in dataset_texts(
                ref, options.text_field, log=log, only_text_field=options.only_text_field
            ):
                yield "" if len(text) > options.max_line else text
        except (DatasetError, RecursionError):
            return

    return stage.scan(texts(), skip, progress=progress)
