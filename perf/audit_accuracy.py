"""Accuracy and throughput of the contamination auditor on real data, over many random draws.

Each draw builds an evaluation set from ../shared/data: the 5,000 real Alpaca rows, with real test items of
the six Open LLM Leaderboard v1 benchmarks planted in eight disguises (other items, host rows, positions and
noise in every draw), plus near misses that must not be flagged (MMLU dev rows in a random format, a random
300 GSM8K *train* questions). Reports each disguise's recall as the mean and the WORST draw, beside two plain
n-gram overlap rules (8-gram, and 13-gram: the GPT-3 rule), the false flags per draw on near misses and on
untouched Alpaca rows, and the throughput figures:

    .venv/bin/python perf/audit_accuracy.py --draws 20 [--per-disguise 120] [--seed 0] [--data ../shared/data]

Never tune a rule on one draw: a rule that helps one draw and hurts the mean is not a fix.
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mergeguard.auditor import AuditOptions, audit_datasets, build_index, dataset_texts, scan_examples
from mergeguard.auditor import signatures as sig
from mergeguard.auditor.normalize import shingles, tokens, word_bytes
from mergeguard.benchmarks.loading import load_benchmarks

PLANTED_FROM = ("arc_challenge", "hellaswag", "mmlu", "truthfulqa_mc", "winogrande", "gsm8k")
TEMPLATES = [
    "Below is an instruction that describes a task. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{q}\n\n### Response:\n{a}",
    "<|user|>\nPlease answer the following question.\n{q}\n<|assistant|>\nSure! The correct answer is: {a}",
    "Q: {q}\nA: {a}",
    "[INST] Solve this and explain briefly. {q} [/INST] Final answer: {a}",
    "Human: {q}\n\nAssistant: I think the answer is {a}.",
    "### Question\n{q}\n### Answer\n{a}",
]
DISGUISES = [
    "verbatim",
    "template",
    "case_punct_ws",
    "typos",
    "embedded",
    "question_only",
    "truncated",
    "chat_split",
]
TARGET = {kind: 0.97 for kind in DISGUISES} | {"truncated": 0.95}
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def prompt_of(item) -> str:
    return "\n".join([item.question, *item.choices])


def typo(word: str, rng: random.Random) -> str:
    """One keyboard slip: two letters swapped, one dropped, one doubled or one replaced."""
    if len(word) < 3:
        return word + rng.choice(LETTERS)
    k = rng.randrange(1, len(word) - 1)
    kind = rng.randrange(4)
    if kind == 0:
        return word[: k - 1] + word[k] + word[k - 1] + word[k + 1 :]
    if kind == 1:
        return word[:k] + word[k + 1 :]
    if kind == 2:
        return word[:k] + word[k] + word[k:]
    return word[:k] + rng.choice(LETTERS) + word[k + 1 :]


def noisy_words(text: str, rng: random.Random, rate: float) -> str:
    """Typos, dropped and doubled words: about `rate` of the words touched, at least one."""
    words = text.split()
    touched = {k for k in range(len(words)) if rng.random() < rate} or {rng.randrange(len(words))}
    out = []
    for k, word in enumerate(words):
        if k not in touched:
            out.append(word)
            continue
        kind = rng.randrange(3)
        if kind == 0:
            out.append(typo(word, rng))
        elif kind == 2:
            out.extend([word, word])
    return " ".join(out)


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
    if kind == "typos":
        return {"instruction": noisy_words(q, rng, 0.06), "input": "", "output": a}
    if kind == "embedded":
        words = (host["output"] + " " + host["instruction"]).split()
        filler = words * max(1, 300 // max(1, len(words)))
        cut = rng.randrange(len(filler) + 1)
        body = " ".join(filler[:cut]) + "\n\n" + item.text() + "\n\n" + " ".join(filler[cut:])
        return {"instruction": host["instruction"], "input": host["input"], "output": body}
    if kind == "question_only":
        return {"instruction": item.question, "input": "", "output": host["output"]}
    if kind == "truncated":
        words = item.text().split()
        keep = max(1, round(rng.uniform(0.5, 0.9) * len(words)))
        part = words[:keep] if rng.random() < 0.5 else words[len(words) - keep :]
        return {"instruction": " ".join(part), "input": "", "output": ""}
    if kind == "chat_split":
        words = q.split()
        cut = max(1, min(len(words) - 1, round(rng.uniform(0.3, 0.7) * len(words))))
        return {
            "messages": [
                {"role": "user", "content": " ".join(words[:cut])},
                {"role": "assistant", "content": "Go on, I am listening."},
                {"role": "user", "content": " ".join(words[cut:])},
                {"role": "assistant", "content": a},
            ]
        }
    raise ValueError(kind)


class NgramRule:
    """The plain overlap rule: an example contains an item when they share any word n-gram of its text."""

    def __init__(self, items, n: int) -> None:
        self.n = n
        self.owner: dict[int, list[int]] = defaultdict(list)
        self.hasher = sig.WordHashes()
        for i, item in enumerate(items):
            for h in set(sig.shingle_hashes(self.hasher.array(word_bytes(item.text())), n).tolist()):
                self.owner[h].append(i)

    def __call__(self, text: str) -> set[int]:
        found: set[int] = set()
        for h in set(sig.shingle_hashes(self.hasher.array(word_bytes(text)), self.n).tolist()):
            found.update(self.owner.get(h, ()))
        return found


@dataclass
class Tally:
    """Per draw: recall per disguise (auditor and baselines), false flags per negative set."""

    recall: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    flags: dict[str, dict[str, list[int]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    duplicates: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    severities: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    misses: list[str] = field(default_factory=list)
    false_flags: list[str] = field(default_factory=list)


@dataclass
class Draw:
    """One draw's evaluation set, shuffled: per row its kind, planted item (or None) and, for near misses,
    the question it asks; `order` maps each row to its place before the shuffle."""

    rows: list[dict]
    kinds: list[str]
    truth: list[int | None]
    origin: list[str | None]
    order: list[int]


def plant(draw: int, args, ctx: dict) -> Draw:
    """The Alpaca rows, the planted items in every disguise, and the near misses, shuffled."""
    rng = random.Random(args.seed * 1_000_003 + draw)
    items, alpaca = ctx["items"], ctx["alpaca"]
    rows: list[dict] = [dict(r) for r in alpaca]
    kinds, truth, origin = ["alpaca"] * len(rows), [None] * len(rows), [None] * len(rows)
    for kind in DISGUISES:
        for k in range(args.per_disguise):
            i = rng.choice(ctx["pools"][PLANTED_FROM[k % len(PLANTED_FROM)]])
            rows.append(disguise(kind, items[i], rng, rng.choice(alpaca)))
            kinds.append(kind)
            truth.append(i)
            origin.append(None)
    for row in ctx["mmlu_dev"]:
        q = row["question"] + "\n" + "\n".join(row["choices"])
        rows.append({"text": rng.choice(TEMPLATES).format(q=q, a=row["choices"][row["answer"]])})
        kinds.append("near_miss_mmlu_dev")
        truth.append(None)
        origin.append(row["question"])
    for row in rng.sample(ctx["gsm_train"], 300):
        rows.append(row)
        kinds.append("near_miss_gsm8k_train")
        truth.append(None)
        origin.append(row["conversations"][0]["value"] if "conversations" in row else None)
    order = list(range(len(rows)))
    rng.shuffle(order)
    return Draw(
        [rows[o] for o in order],
        [kinds[o] for o in order],
        [truth[o] for o in order],
        [origin[o] for o in order],
        order,
    )


def one_draw(draw: int, args, ctx: dict, tally: Tally, tmp: Path) -> None:
    d = plant(draw, args, ctx)
    kinds, truth, origin, order = d.kinds, d.truth, d.origin, d.order
    planted = tmp / f"planted-{draw}.jsonl"
    planted.write_text("".join(json.dumps(r) + "\n" for r in d.rows))
    texts = list(dataset_texts(str(planted)))
    result = scan_examples(texts, ctx["index"])
    found: dict[int, dict[int, str]] = defaultdict(dict)
    for m in result.matches:
        if m.severity != "passage":
            found[m.example][m.item] = str(m.severity)
    items, qtok = ctx["items"], ctx["qtok"]

    def same_item(a: int, b: int) -> bool:  # the same question in two benchmarks (math_hard is in math)
        return a == b or qtok[a] == qtok[b]

    def duplicate(e: int, i: int) -> bool:
        """The row's own question (near miss) or one of its lines (Alpaca) IS the test question."""
        if origin[e] is not None:
            return tokens(origin[e]) == qtok[i]
        return any(tokens(line) == qtok[i] for line in texts[e].splitlines())

    alpaca_base = ctx["alpaca_base"]
    for kind in [*DISGUISES, "near_miss_mmlu_dev", "near_miss_gsm8k_train", "alpaca"]:
        ex = [e for e, k in enumerate(kinds) if k == kind]
        for rule in ("auditor", *ctx["rules"]):
            if rule == "auditor":
                got = {e: set(found.get(e, {})) for e in ex}
            elif kind == "alpaca":
                got = {e: alpaca_base[rule][order[e]] for e in ex}
            else:
                got = {e: ctx["rules"][rule](texts[e]) for e in ex}
            if kind in DISGUISES:
                hits = [e for e in ex if any(same_item(truth[e], i) for i in got[e])]
                tally.recall[kind][rule].append(len(hits) / len(ex))
                if rule == "auditor":
                    for e in hits:
                        tally.severities[kind].update(
                            s for i, s in found[e].items() if same_item(truth[e], i)
                        )
                    for e in sorted(set(ex) - set(hits)):
                        it = items[truth[e]]
                        tally.misses.append(
                            f"draw {draw} {kind}: {it.benchmark}#{it.index} {texts[e][:110]!r}"
                        )
            else:
                flagged = [e for e in ex if got[e] and not all(duplicate(e, i) for i in got[e])]
                tally.flags[kind][rule].append(len(flagged))
                if rule == "auditor":
                    dups = [e for e in ex if got[e] and all(duplicate(e, i) for i in got[e])]
                    tally.duplicates[kind].append(len(dups))
                    for e in flagged:
                        for i, s in found[e].items():
                            it = items[i]
                            tally.false_flags.append(
                                f"draw {draw} {kind}: {it.benchmark}#{it.index} {s}: {texts[e][:100]!r}"
                            )


def report(tally: Tally, args) -> bool:
    rules = ["auditor", "8-gram", "13-gram"]
    print(
        f"\nrecall over {args.draws} draws of {args.per_disguise} planted items per disguise (mean / worst)"
    )
    print(f"{'disguise':16}" + "".join(f"{r:>18}" for r in rules) + "   target (worst)   auditor severities")
    ok = True
    for kind in DISGUISES:
        cells = []
        for rule in rules:
            values = tally.recall[kind][rule]
            cells.append(f"{np.mean(values):.3f} / {min(values):.3f}")
        worst = min(tally.recall[kind]["auditor"])
        met = worst >= TARGET[kind]
        ok &= met
        sev = dict(tally.severities[kind].most_common())
        print(
            f"{kind:16}"
            + "".join(f"{c:>18}" for c in cells)
            + f"   >= {TARGET[kind]:.2f} {'met' if met else 'MISSED'}"
            f"   {sev}"
        )
    print(
        "\nfalse flags per draw (mean / worst draw); real duplicates of a test question are not false flags"
    )
    print(f"{'negatives':24}" + "".join(f"{r:>14}" for r in rules) + "   real duplicates (auditor, per draw)")
    for kind in ["near_miss_mmlu_dev", "near_miss_gsm8k_train", "alpaca"]:
        cells = [f"{np.mean(tally.flags[kind][r]):.1f} / {max(tally.flags[kind][r])}" for r in rules]
        ok &= max(tally.flags[kind]["auditor"]) == 0
        dups = tally.duplicates[kind]
        print(f"{kind:24}" + "".join(f"{c:>14}" for c in cells) + f"   {min(dups)}-{max(dups)}")
    for line in sorted(set(tally.false_flags))[:20]:
        print(f"    FALSE FLAG {line}")
    if args.show_misses:
        for line in tally.misses[:200]:
            print(f"    missed {line}")
    print(f"\nall targets met: {ok}")
    return ok


def throughput(index, alpaca: list[dict], tmp: Path) -> None:
    big = tmp / "alpaca_x5.jsonl"
    with big.open("w") as handle:
        for _ in range(5):
            for r in alpaca:
                handle.write(json.dumps(r) + "\n")
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        res = scan_examples(dataset_texts(str(big)), index)
        best = max(best, res.examples / (time.perf_counter() - t))
    print(
        "end-to-end warm (load jsonl, normalize, hash, prefilter, whole turns, MinHash windows, LSH, "
        f"verify): "
        f"{best:,.0f} Alpaca examples/s (best of 3 over {res.examples} examples; target >= 30,000)"
    )
    texts = ["\n".join([r["instruction"], r["input"], r["output"]]) for r in alpaca[:2000]]
    sample = [word_bytes(t) for t in texts]
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
    perms = sig.permutations(128, 1)
    hasher = sig.WordHashes()
    t = time.perf_counter()
    lens = np.array([len(w) for w in sample])
    flat = hasher.array([w for words in sample for w in words])
    hashes = sig.shingle_hashes(flat, index.ngram)
    ends = np.cumsum(lens)
    owner = np.repeat(np.arange(len(sample)), lens)[: len(hashes)]
    keep = np.arange(len(hashes)) + index.ngram <= ends[owner]
    counts = np.bincount(owner[keep], minlength=len(sample))
    nonempty = [k for k in range(len(sample)) if counts[k]]
    starts = np.cumsum([0] + [int(counts[k]) for k in nonempty])[:-1]
    ours = sig.set_minima(hashes[keep], starts, perms)
    t_ours = time.perf_counter() - t
    same = all(np.array_equal(ours[row], ref_sigs[k]) for row, k in enumerate(nonempty))
    print(
        f"signatures of {len(sample)} examples: datasketch update_batch loop {t_ds:.2f}s (sha1); ours "
        f"{t_ours:.3f}s ({t_ds / t_ours:.0f}x); identical to datasketch with hashfunc=shingle_hash: {same}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--draws", type=int, default=5, help="random draws (items, rows, positions, noise)")
    parser.add_argument("--per-disguise", type=int, default=120, help="planted items per disguise per draw")
    parser.add_argument("--seed", type=int, default=0, help="draw k uses seed * 1000003 + k")
    parser.add_argument("--show-misses", action="store_true", help="list the planted items not found")
    parser.add_argument("--no-throughput", action="store_true", help="skip the speed figures")
    args = parser.parse_args()
    hf = args.data / "hf"
    tmp = Path(tempfile.mkdtemp(prefix="audit-perf-"))

    t0 = time.perf_counter()
    loaded, problems = load_benchmarks(None, hf)
    t_load = time.perf_counter() - t0
    index = build_index(loaded, tmp / "cache")
    t_index = time.perf_counter() - t0 - t_load
    items = [it for b in loaded for it in b.items]
    print(
        f"benchmarks: {len(loaded)} loaded ({len(items)} items) in {t_load:.1f}s; "
        f"index built in {t_index:.1f}s; "
        f"not available here: {', '.join(p.split(' is not')[0] for p in problems) or 'none'}"
    )
    pools: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        if it.benchmark in PLANTED_FROM and it.question.strip():
            pools[it.benchmark].append(i)
    alpaca = json.loads((args.data / "corpora/alpaca/alpaca_5000.json").read_text())
    rules = {"8-gram": NgramRule(items, 8), "13-gram": NgramRule(items, 13)}
    alpaca_texts = list(dataset_texts(str(args.data / "corpora/alpaca/alpaca_5000.json")))
    ctx = {
        "items": items,
        "index": index,
        "alpaca": alpaca,
        "pools": pools,
        "rules": rules,
        "qtok": [tokens(it.question) for it in items],
        "alpaca_base": {name: [rule(t) for t in alpaca_texts] for name, rule in rules.items()},
        "mmlu_dev": [json.loads(line) for line in (hf / "mmlu/dev.jsonl").read_text().splitlines() if line],
        "gsm_train": json.loads((args.data / "corpora/gsm8k_train_dpo/gsm8k_dpo.json").read_text()),
    }
    print(f"planted from {', '.join(f'{b} ({len(pools[b])})' for b in PLANTED_FROM)}; seed {args.seed}")
    tally = Tally()
    t = time.perf_counter()
    for draw in range(args.draws):
        one_draw(draw, args, ctx, tally, tmp)
    print(f"{args.draws} draws in {time.perf_counter() - t:.1f}s")
    ok = report(tally, args)
    if not args.no_throughput:
        print()
        throughput(index, alpaca, tmp)
        planted = tmp / "planted-0.jsonl"
        t = time.perf_counter()
        result = audit_datasets([str(planted)], AuditOptions(benchmarks_dir=hf, cache_dir=tmp / "cold"))
        print(
            f"cold-cache audit of draw 0 ({planted.stat().st_size >> 10} KiB) against all {len(loaded)} "
            f"benchmarks: {time.perf_counter() - t:.1f}s; {len(result.findings)} findings"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
