"""Auditor core: normalization, datasketch-identical signatures, the LSH tables, detection on real items."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH
from datasketch.hashfunc import sha1_hash32
from hypothesis import given, settings
from hypothesis import strategies as st
from real_benchmarks import items_of, load_real

from mergeguard.auditor import build_index, scan_examples
from mergeguard.auditor import signatures as sig
from mergeguard.auditor.index import EXACT_MODE, INDEX_STEP, NGRAM_MODE, ROWS_PER_BAND, build_from_items
from mergeguard.auditor.normalize import batch_bytes, normalize, shingles, tokens, word_bytes
from mergeguard.progress import ProgressEvent

BENCHMARKS = ["truthfulqa_mc", "gsm8k", "arc_challenge", "mmlu"]


@pytest.fixture(scope="session")
def loaded(shared_data: Path):
    return load_real(BENCHMARKS, shared_data)


@pytest.fixture(scope="session")
def index_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audit-cache")


@pytest.fixture(scope="session")
def index(loaded, index_cache: Path):
    return build_index(loaded, index_cache)


@pytest.fixture(scope="session")
def alpaca(shared_data: Path) -> list[str]:
    rows = json.loads((shared_data / "corpora/alpaca/alpaca_5000.json").read_text())
    return ["\n".join([r["instruction"], r["input"], r["output"]]) for r in rows]


def item_of(loaded, benchmark: str, row: int):
    return items_of(loaded, benchmark)[row]


def position(index, benchmark: str, row: int) -> int:
    return next(i for i, r in enumerate(index.refs) if r.benchmark == benchmark and r.index == row)


# ---------------------------------------------------------------- normalization


def test_normalize_folds_case_width_punctuation_and_keeps_digits() -> None:
    assert normalize("Hello,   WORLD!\n It's 3.14") == "hello world it s 3 14"
    assert normalize("ＦＵＬＬ width Straße") == "full width strasse"
    assert tokens("a_b") == ["a", "b"]
    assert shingles(["a", "b", "c"], 2) == ["a b", "b c"] and shingles(["a"], 2) == []


@given(st.text(max_size=80))
@settings(max_examples=200, deadline=None)
def test_fast_ascii_path_equals_the_regex_path(text: str) -> None:
    assert word_bytes(text) == [w.encode() for w in tokens(text)]


@given(st.lists(st.text(max_size=40), max_size=6))
@settings(max_examples=150, deadline=None)
def test_batch_buffer_and_vectorized_word_hashes_equal_the_per_text_ones(texts: list[str]) -> None:
    buf = batch_bytes(texts)
    assert [part.split() for part in buf.split(b"\x00")] == [word_bytes(t) for t in texts] or not texts
    hashes, _ = sig.buffer_word_hashes(np.frombuffer(buf, dtype=np.uint8))
    assert hashes.tolist() == [sig.word_hash(w) for t in texts for w in word_bytes(t)]


# ---------------------------------------------------------------- signatures


def test_permutations_are_datasketch_ones() -> None:
    for seed, num_perm in [(1, 128), (7, 64)]:
        assert np.array_equal(
            sig.permutations(num_perm, seed), MinHash(num_perm=num_perm, seed=seed).permutations
        )


@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=40), st.integers(1, 2**31))
@settings(max_examples=40, deadline=None)
def test_signature_identical_to_datasketch_default_hashfunc(values: list[str], seed: int) -> None:
    reference = MinHash(num_perm=64, seed=seed)
    reference.update_batch([v.encode() for v in values])
    hashes = np.array([sha1_hash32(v.encode()) for v in values], dtype=np.uint32)
    ours = sig.signature(hashes, sig.permutations(64, seed))
    assert ours.dtype == reference.hashvalues.dtype and np.array_equal(ours, reference.hashvalues)


def test_batched_shingle_signatures_identical_to_datasketch(alpaca: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sig, "CHUNK", 97)  # sets straddle chunk boundaries
    texts = alpaca[:60]
    hasher, perms = sig.WordHashes(), sig.permutations(128, 1)
    sets = [sig.shingle_hashes(hasher.array(word_bytes(t)), 5) for t in texts]
    sets = [s for s in sets if len(s)]
    starts = np.cumsum([0] + [len(s) for s in sets])[:-1]
    ours = sig.set_minima(np.concatenate(sets), starts, perms)
    for row, text in enumerate(t for t in texts if len(tokens(t)) >= 5):
        reference = MinHash(num_perm=128, seed=1, hashfunc=sig.shingle_hash)
        reference.update_batch(shingles(tokens(text), 5))
        assert np.array_equal(ours[row], reference.hashvalues)
    assert sig.shingle_hashes(hasher.array([b"a", b"b"]), 5).size == 0


def test_empty_sets_are_refused_not_collided() -> None:
    perms = sig.permutations(16, 1)
    assert np.array_equal(sig.signature(np.empty(0, np.uint32), perms), MinHash(num_perm=16).hashvalues)
    with pytest.raises(ValueError, match="at least one hash"):
        sig.set_minima(np.array([1, 2], np.uint32), np.array([0, 2]), perms)


def test_band_tables_answer_like_datasketch_minhashlsh(index, alpaca: list[str]) -> None:
    klass = int(np.bincount(index.klass[index.sig_items]).argmax())
    rows = np.flatnonzero(index.klass[index.sig_items] == klass)
    queries = index.signatures[rows[:40]].copy()
    queries[:, ::2] = 0  # perturb half of the values: some bands still collide, others do not
    lsh: MinHashLSH = index.lsh(klass)
    assert (lsh.b, lsh.r) == (index.bands, ROWS_PER_BAND)
    got_rows, got_items = index.query(klass, queries)
    for q in range(len(queries)):
        expected = set(lsh.query(sig.to_minhash(queries[q], index.perms)))
        assert set(got_items[got_rows == q].tolist()) == expected
    assert any(len(lsh.query(sig.to_minhash(index.signatures[r], index.perms))) for r in rows[:5])


# ---------------------------------------------------------------- the index and its cache


def test_index_cache_is_reused_and_holds_no_benchmark_text(
    loaded, index, index_cache: Path, monkeypatch
) -> None:
    import mergeguard.auditor.index as index_module

    monkeypatch.setattr(index_module, "build_from_items", lambda *a, **k: pytest.fail("rebuilt a warm index"))
    again = build_index(loaded, index_cache)
    assert again.index_hash == index.index_hash and len(again.refs) == len(index.refs)
    assert np.array_equal(again.signatures, index.signatures)
    blob = b"".join(p.read_bytes() for p in index_cache.rglob("*") if p.is_file())
    question = item_of(loaded, "gsm8k", 0).question
    assert question[:40].encode() not in blob and b"Janet" not in blob


def test_modes_guard_short_items(index) -> None:
    assert (index.mode == NGRAM_MODE).sum() > 0.9 * len(index.refs)
    assert (index.mode == EXACT_MODE).sum() > 0  # short TruthfulQA questions are matched as exact text


# ---------------------------------------------------------------- detection


def test_item_inside_a_long_example_is_found_with_its_severity(loaded, index, alpaca: list[str]) -> None:
    item = item_of(loaded, "gsm8k", 17)
    long_host = " ".join(alpaca[:6])
    texts = [
        long_host + "\n" + item.question + "\n" + item.answer + "\n" + long_host,  # verbatim, mid-text
        "Q: " + item.question.upper() + "\nA: I am not sure.",  # question only, case changed
        alpaca[10],
    ]
    result = scan_examples(texts, index)
    found = {(m.example, index.refs[m.item].benchmark, index.refs[m.item].index): m for m in result.matches}
    assert found[(0, "gsm8k", 17)].severity == "verbatim" and found[(0, "gsm8k", 17)].score == 1.0
    assert found[(1, "gsm8k", 17)].severity == "question_only"
    assert not [m for m in result.matches if m.example == 2]
    before, span, after = found[(0, "gsm8k", 17)].evidence()
    assert normalize(span).startswith(" ".join(tokens(item.question)[:12]))
    assert len(tokens(span)) >= 0.8 * len(tokens(item.question))


def test_short_truthfulqa_question_inside_text_needs_its_answer(loaded, index) -> None:
    truthfulqa = items_of(loaded, "truthfulqa_mc")
    k, item = next(
        (k, it)
        for k, it in enumerate(truthfulqa)
        if index.mode[position(index, "truthfulqa_mc", k)] == EXACT_MODE and len(tokens(it.question)) < 8
    )
    texts = [
        f"I wondered: {item.question} {item.answer}",
        f"I wondered: {item.question} No idea, sorry.",
        f"{item.question}\nNo idea, sorry.",  # a line that is the whole question is that item
    ]
    hits = {(m.example, index.refs[m.item].index): m.severity for m in scan_examples(texts, index).matches}
    assert (0, k) in hits and (1, k) not in hits
    assert hits[(2, k)] == "question_only"


def test_untouched_alpaca_rows_and_near_misses_are_clean(
    loaded, index, alpaca: list[str], shared_data
) -> None:
    dev = [json.loads(line) for line in (shared_data / "hf/mmlu/dev.jsonl").read_text().splitlines()]
    texts = alpaca[:1500] + [r["question"] + "\n" + "\n".join(r["choices"]) for r in dev]
    matches = [m for m in scan_examples(texts, index).matches if m.severity != "passage"]
    assert not [m for m in matches if m.example < 1500]
    # MMLU dev rows are few-shot examples, not test items; the few flagged are real overlaps: their own
    # question (from the dev file) is a test question word for word (MMLU ships such duplicates).
    assert len({m.example for m in matches}) <= 10
    for m in matches:
        test_question = tokens(
            item_of(loaded, index.refs[m.item].benchmark, index.refs[m.item].index).question
        )
        assert tokens(dev[m.example - 1500]["question"]) == test_question, texts[m.example][:80]


def test_a_shared_reading_passage_without_the_items_question_is_a_passage_note(loaded, index) -> None:
    mmlu = items_of(loaded, "mmlu")
    k = next(k for k in range(len(mmlu)) if len(index.row(index.stem, position(index, "mmlu", k))) >= 3)
    item = mmlu[k]
    lines = [line for line in item.question.splitlines() if line.strip()]
    passage = "\n".join(lines[:-1])
    texts = [
        passage + "\nWhich of the following would the author most likely have opposed?\nTaxes\nWar\nTrade",
        passage + "\n" + lines[-1],  # the same passage with this item's own question: a finding
        item.text(),
    ]
    mine = [m for m in scan_examples(texts, index).matches if index.refs[m.item].index == k]
    assert {m.example for m in mine if m.severity != "passage"} == {1, 2}
    assert {m.example for m in mine if m.severity == "passage"} <= {0}


def test_a_sibling_of_a_many_item_template_is_not_a_finding(loaded, index) -> None:
    mmlu = items_of(loaded, "mmlu")
    k, item = next(
        (k, it)
        for k, it in enumerate(mmlu)
        if it.question.startswith("As of 2019, about what percentage of people from Turkey agree")
    )
    assert sum(it.question.startswith("As of 2019, about what percentage of") for it in mmlu) >= 10
    sibling = item.question.replace("people from Turkey", "Americans")  # the MMLU dev row, its own choices
    texts = [sibling + "\n" + "\n".join(["31%", "46%", "61%", "76%"]), item.question]
    hits = {m.example for m in scan_examples(texts, index).matches if index.refs[m.item].index == k}
    assert hits == {1}


def test_batches_do_not_change_findings(loaded, index, alpaca: list[str]) -> None:
    picks = [item_of(loaded, "mmlu", k) for k in (5, 700, 3000)] + [item_of(loaded, "gsm8k", 40)]
    texts = list(alpaca[:30])
    for j, item in enumerate(picks):  # long and short hosts, so that windows of some examples are skipped
        texts.insert(3 + 7 * j, " ".join(alpaca[40 + j : 46 + j]) + "\n" + item.text() + "\n" + alpaca[j])
    whole = {(m.example, m.item, m.severity) for m in scan_examples(texts, index).matches}
    one_by_one = {(m.example, m.item, m.severity) for m in scan_examples(texts, index, batch_size=1).matches}
    assert whole == one_by_one and len({e for e, _, _ in whole}) >= len(picks)


def test_dataset_template_ngrams_are_ignored(loaded, index) -> None:
    item = item_of(loaded, "arc_challenge", 3)
    template = "Answer the following science question from the exam paper with care please."
    texts = [f"{template} Example {k}: the weather was fine and dry." for k in range(120)] + [item.question]
    matches = scan_examples(texts, index).matches
    assert {m.example for m in matches} == {120}


def test_index_build_reports_progress_through_a_callback(loaded) -> None:
    """The library never draws: a build reports one step, INDEX_STEP, in items, to the callback passed in
    (a list's `append` here), from 0 to every item, then its end."""
    items = items_of(loaded, "truthfulqa_mc")
    events: list[ProgressEvent] = []
    build_from_items(items, progress=events.append)
    assert {e.step for e in events} == {INDEX_STEP}
    assert events[0] == ProgressEvent(INDEX_STEP, 0, len(items))
    assert events[-1] == ProgressEvent(INDEX_STEP, len(items), len(items), finished=True)
    done = [e.done for e in events]
    assert done == sorted(done) and len(set(done)) >= 4  # hashing, informative n-grams, modes, tables
