"""Accuracy and throughput of the contamination auditor on real data (issue 5).

Builds an evaluation set from ../shared/data: the 5,000 real Alpaca rows with real benchmark test items
planted in six disguises, plus near misses that must not be flagged (MMLU dev rows, GSM8K *train*
questions). Prints recall per disguise, findings on near misses and on untouched Alpaca rows, the same for a
plain 13-gram overlap baseline (the GPT-3 rule), and the throughput figures:

    .venv/bin/python perf/audit_accuracy.py [--data ../shared/data] [--per-disguise 80] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from mergeguard.auditor import AuditOptions, audit_datasets, build_index, dataset_texts, scan_examples
from mergeguard.auditor import signatures as sig
from mergeguard.auditor.index import SKIPPED
from mergeguard.auditor.normalize import shingles, tokens, word_bytes
from mergeguard.benchmarks.loading import load_benchmarks

TEMPLATES = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{q}\n\n### Response:\n{a}",
    "<|user|>\nPlease answer the following question.\n{q}\n<|assistant|>\nSure! The correct answer is: {a}",
    "Q: {q}\nA: {a}",
    "[INST] Solve this and explain briefly. {q} [/INST] Final answer: {a}",
]
DISGUISES = ["verbatim", "template", "case_punct_ws", "embedded", "question_only", "truncated"]


def prompt_of(item) -> str:
    return "\n".join([item.question, *item.choices])


def disguise(kind: str, item, rng: random.Random, host: dict) -> dict:
    q, a = prompt_of(item), item.answer
    if kind == "verbatim":
        return {"instruction": q, "input": "", "output": a}
    if kind == "template":
        return {"text": rng.choice(TEMPLATES).format(q=q, a=a)}
    if kind == "case_punct_ws":
        text = f"{q}\n{a}"
        text = "".join(c.upper() if rng.random() < 0.5 else c.lower() for c in text)
        text = re.sub(r"[.,?!;:'\"()]", lambda m: rng.choice(["", " ", m.group(0) * 2]), text)
        text = re.sub(r"\s+", lambda m: rng.choice([" ", "  ", "\n", "\t "]), text)
        return {"instruction": text, "input": "", "output": ""}
    if kind == "embedded":
        words = (host["output"] + " " + host["instruction"]).split()
        filler = words * max(1, 300 // max(1, len(words)))
        half = len(filler) // 2
        body = " ".join(filler[:half]) + "\n\n" + item.text() + "\n\n" + " ".join(filler[half:])
        return {"instruction": host["instruction"], "input": host["input"], "output": body}
    if kind == "question_only":
        return {"instruction": item.question, "input": "", "output": host["output"]}
    if kind == "truncated":
        words = item.text().split()
        return {"instruction": " ".join(words[: max(1, round(0.7 * len(words)))]), "input": "", "output": ""}
    raise ValueError(kind)


def baseline_13gram(items, texts: list[str]) -> list[set[int]]:
    """The GPT-3 rule: an example contains an item when they share any 13-gram of words."""
    owner: dict[int, list[int]] = defaultdict(list)
    hasher = sig.WordHashes()
    for i, item in enumerate(items):
        words = hasher.array(tokens(item.text()))
        for h in set(sig.shingle_hashes(words, 13).tolist()):
            owner[h].append(i)
    out = []
    for text in texts:
        found: set[int] = set()
        for h in set(sig.shingle_hashes(hasher.array(word_bytes(text)), 13).tolist()):
            found.update(owner.get(h, ()))
        out.append(found)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--per-disguise", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show-misses", action="store_true")
    args = parser.parse_args()
    hf = args.data / "hf"
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="audit-perf-"))

    # ------------------------------------------------------------ cold cache: index build
    t0 = time.perf_counter()
    loaded, problems = load_benchmarks(None, hf)
    t_load = time.perf_counter() - t0
    index = build_index(loaded, tmp / "cache")
    t_cold_index = time.perf_counter() - t0
    items = [it for b in loaded for it in b.items]
    print(
        f"benchmarks: {len(loaded)} loaded ({len(items)} items) in {t_load:.1f}s; index built in "
        f"{t_cold_index - t_load:.1f}s; skipped (not available here): "
        f"{', '.join(p.split(' is not')[0] for p in problems)}"
    )

    # ------------------------------------------------------------ the planted set
    alpaca = json.loads((args.data / "corpora/alpaca/alpaca_5000.json").read_text())
    plantable = [i for i, it in enumerate(items) if index.mode[i] != SKIPPED and it.question.strip()]
    by_bench = defaultdict(list)
    for i in plantable:
        by_bench[items[i].benchmark].append(i)
    rows: list[dict] = [dict(r) for r in alpaca]
    kinds: list[str] = ["alpaca"] * len(rows)
    truth: list[int | None] = [None] * len(rows)
    origin: list[str | None] = [None] * len(rows)  # a near miss's own question, from the benchmark's files
    for kind in DISGUISES:
        names = sorted(by_bench)
        for k in range(args.per_disguise):
            pool = by_bench[names[k % len(names)]]
            i = rng.choice(pool)
            rows.append(disguise(kind, items[i], rng, rng.choice(alpaca)))
            kinds.append(kind)
            truth.append(i)
            origin.append(None)
    mmlu_dev = [json.loads(line) for line in (hf / "mmlu/dev.jsonl").read_text().splitlines() if line]
    for row in mmlu_dev:
        choices = row["choices"]
        rows.append(
            {
                "instruction": row["question"] + "\n" + "\n".join(choices),
                "input": "",
                "output": choices[row["answer"]],
            }
        )
        kinds.append("near_miss_mmlu_dev")
        truth.append(None)
        origin.append(row["question"])
    gsm_train = json.loads((args.data / "corpora/gsm8k_train_dpo/gsm8k_dpo.json").read_text())
    for row in gsm_train[:300]:
        rows.append(row)
        kinds.append("near_miss_gsm8k_train")
        truth.append(None)
        origin.append(row.get("question") or row.get("prompt"))
    order = list(range(len(rows)))
    rng.shuffle(order)
    rows, kinds, truth = [rows[o] for o in order], [kinds[o] for o in order], [truth[o] for o in order]
    origin = [origin[o] for o in order]
    planted = tmp / "planted.jsonl"
    planted.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"planted set: {len(rows)} examples ({Counter(kinds)})")

    # ------------------------------------------------------------ detection (warm index)
    texts = list(dataset_texts(str(planted)))
    result = scan_examples(texts, index)
    found: dict[int, dict[int, str]] = defaultdict(dict)
    for m in result.matches:
        found[m.example][m.item] = m.severity
    base = baseline_13gram(items, texts)

    def same_item(a: int, b: int) -> bool:  # the same question in two benchmarks (math_hard is in math)
        return tokens(items[a].question) == tokens(items[b].question)

    print(f"\n{'set':24} {'n':>5} {'auditor':>9} {'13-gram':>9}   auditor severities")
    for kind in [*DISGUISES, "near_miss_mmlu_dev", "near_miss_gsm8k_train", "alpaca"]:
        ex = [e for e, k in enumerate(kinds) if k == kind]
        if kind in DISGUISES:
            hits = [e for e in ex if any(same_item(truth[e], i) for i in found.get(e, {}))]
            bhits = [e for e in ex if any(same_item(truth[e], i) for i in base[e])]
            sev = Counter(s for e in hits for i, s in found[e].items() if same_item(truth[e], i))
            if "--show-misses" in sys.argv:
                for e in sorted(set(ex) - set(hits)):
                    i = truth[e]
                    print(
                        f"    missed {items[i].benchmark}#{items[i].index} mode={index.mode[i]}: "
                        f"{texts[e][:100]!r}"
                    )
            print(
                f"{kind:24} {len(ex):5} {len(hits) / len(ex):9.3f} {len(bhits) / len(ex):9.3f}   "
                f"{dict(sev)}  (recall)"
            )
        else:
            flagged = [e for e in ex if found.get(e)]
            bflagged = [e for e in ex if base[e]]

            def duplicate(e: int, i: int) -> bool:  # the near miss's own question IS the test question
                return origin[e] is not None and tokens(items[i].question) == tokens(origin[e])

            real = [e for e in flagged if all(duplicate(e, i) for i in found[e])]
            note = ""
            if kind.startswith("near_miss"):
                breal = [e for e in bflagged if base[e] and all(duplicate(e, i) for i in base[e])]
                note = (
                    f"; real duplicates of a test question (checked against the benchmark files): "
                    f"{len(real)} auditor, {len(breal)} 13-gram; false positives: {len(flagged) - len(real)} "
                    f"auditor (target 0), {len(bflagged) - len(breal)} 13-gram"
                )
            print(f"{kind:24} {len(ex):5} {len(flagged):9d} {len(bflagged):9d}   (examples flagged{note})")
            if kind.startswith("near_miss"):
                for e in flagged:
                    for i in found[e]:
                        why = (
                            "REAL duplicate: its question is the test item's"
                            if duplicate(e, i)
                            else "FALSE POSITIVE: shares text with the test item"
                        )
                        print(
                            f"    {kind} row flagged ({why}): {items[i].benchmark}#{items[i].index} "
                            f"{texts[e][:90]!r}"
                        )
            if kind == "alpaca":
                for e in flagged:
                    for i, s in found[e].items():
                        ref = index.refs[i]
                        m = next(m for m in result.matches if m.example == e and m.item == i)
                        print(
                            f"    alpaca row flagged: {ref.benchmark}#{ref.index} {s} score {m.score:.2f}: "
                            f"{m.evidence()[1][:160]!r}\n      item: {items[i].question[:160]!r}"
                        )
    # ------------------------------------------------------------ throughput
    print()
    big = tmp / "alpaca_x5.jsonl"
    with big.open("w") as handle:
        for _ in range(5):
            for r in alpaca:
                handle.write(json.dumps(r) + "\n")
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        res = scan_examples(dataset_texts(str(big)), index)
        dt = time.perf_counter() - t
        best = max(best, res.examples / dt)
    print(
        f"end-to-end warm (load jsonl, normalize, hash, prefilter, MinHash windows, LSH, verify): "
        f"{best:,.0f} Alpaca examples/s (best of 3 over {res.examples} examples; target >= 25,000)"
    )
    sample = [word_bytes(t) for t in texts[:2000]]
    from datasketch import MinHash

    t = time.perf_counter()
    for words in sample:  # the usual datasketch loop: default sha1 hashfunc on each shingle's bytes
        m = MinHash(num_perm=128, seed=1)
        m.update_batch([s.encode() for s in shingles([w.decode() for w in words], index.ngram)])
    t_ds = time.perf_counter() - t
    ref_sigs = []
    for words in sample:  # the same loop with our hashfunc: the reference our arrays must equal
        m = MinHash(num_perm=128, seed=1, hashfunc=sig.shingle_hash)
        m.update_batch(shingles([w.decode() for w in words], index.ngram))
        ref_sigs.append(m.hashvalues)

    def ours_from_words(hasher: sig.WordHashes) -> tuple[np.ndarray, list[int]]:
        """Words of all examples -> one array of shingle hashes -> one batched signature call."""
        lens = np.array([len(w) for w in sample])
        flat = hasher.array([w for words in sample for w in words])
        hashes = sig.shingle_hashes(flat, index.ngram)
        ends = np.cumsum(lens)
        owner = np.repeat(np.arange(len(sample)), lens)[: len(hashes)]
        keep = np.arange(len(hashes)) + index.ngram <= ends[owner]
        counts = np.bincount(owner[keep], minlength=len(sample))
        nonempty = [k for k in range(len(sample)) if counts[k]]
        starts = np.cumsum([0] + [int(counts[k]) for k in nonempty])[:-1]
        return sig.set_minima(hashes[keep], starts, perms), nonempty

    perms = sig.permutations(128, 1)
    t = time.perf_counter()
    ours, nonempty = ours_from_words(sig.WordHashes())
    t_cold = time.perf_counter() - t
    warm = sig.WordHashes()
    ours_from_words(warm)
    t = time.perf_counter()
    ours, nonempty = ours_from_words(warm)
    t_ours = time.perf_counter() - t
    same = all(np.array_equal(ours[row], ref_sigs[k]) for row, k in enumerate(nonempty))
    print(
        f"signatures of {len(sample)} examples from their words: datasketch update_batch loop {t_ds:.2f}s "
        f"(default sha1 hashfunc); ours {t_ours:.3f}s with the word-hash memo warm ({t_ds / t_ours:.0f}x, "
        f"target >= 20x), {t_cold:.3f}s cold ({t_ds / t_cold:.0f}x); identical to datasketch with "
        f"hashfunc=shingle_hash: {same}"
    )
    t = time.perf_counter()
    report = audit_datasets([str(planted)], AuditOptions(benchmarks_dir=hf, cache_dir=tmp / "cold"))
    t_cold = time.perf_counter() - t
    print(
        f"cold-cache audit of the planted set ({len(rows)} examples) against all {len(loaded)} benchmarks: "
        f"{t_cold:.1f}s (target < 60 s); {len(report.findings)} findings, contaminated={report.contaminated}"
    )
    t = time.perf_counter()
    audit_datasets([str(planted)], AuditOptions(benchmarks_dir=hf, cache_dir=tmp / "cold"))
    print(f"same audit, warm cache: {time.perf_counter() - t:.1f}s")
    print(
        f"(pipeline counters on the planted set: {result.prefiltered} examples reached MinHash, "
        f"{result.windows} window queries, {result.candidates} candidates verified)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
