"""Recall, false flags and throughput of the semantic stage (issue 14), on whole real files.

Against every benchmark in ../shared/data/hf (as a default audit), with the default embedding model:

- recall: the LLM Decontaminator's rephrased GSM8K test set (row i rephrases test item i; a hit is item i
  found in row i), its three rephrased English MMLU subjects and their Chinese translations (aligned by
  row with the subject's MMLU test items; empty rows count as misses), each also as the worst recall over
  50 random halves of its rows (what one draw of such data can fall to);
- false flags: the 5,000 Alpaca rows and the clean corpora of ../shared/data (any flag is false), GSM8K
  train (7,473 questions in the test set's style: the hardest negatives), each flagged row listed, and the
  rephrased and translated MMLU rows again with their own subjects' items taken out of the index (same-domain
  negatives: questions of the same kind whose items are absent);
- throughput: examples per second through the stage, per file and over Alpaca (what real data costs), with
  item embeddings computed on first need (the check) and again from the cache (a second audit); the load
  average is printed: the machine is shared and the encoder's speed follows it.

The rephrased files are read by their `text` field (`audit --only-text-field text`): each row also holds a
language label, metadata that a default read would append to the example.

    .venv/bin/python perf/semantic_accuracy.py [--data ../shared/data] [--json out.json]

Exit 0 when every target of the issue is met, 1 otherwise (the figures are printed either way).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mergeguard.auditor import AuditOptions, dataset_texts, load_benchmark_index  # noqa: E402
from mergeguard.auditor.semantic import SemanticStage  # noqa: E402

SUBJECTS = ("abstract_algebra", "high_school_us_history", "sociology")
CLEAN = (
    "alpaca/alpaca_5000.json",
    "codealpaca/code_alpaca_2k.json",
    "hh_rlhf/harmless-base_test.jsonl.gz",
    "dolly_hhrlhf/dolly_hhrlhf_train_small.jsonl",
    "ultrafeedback_binarized_sample/train_clean.jsonl",
    "ultrafeedback_binarized_sample/eval_clean.jsonl",
    "truthy_dpo/truthy_dpo_v0.1.jsonl",
    "decon_demo/demo.jsonl",
)
HALF_DRAWS = 50
TARGETS = {
    "gsm8k": 0.90,
    "mmlu_english": 0.80,
    "mmlu_chinese": 0.60,
    "gsm8k_train_flagged": 0.005,
    "examples_per_s": 1000.0,
}


def run(stage: SemanticStage, path: Path, field: str | None = None) -> tuple[list[str], list, dict]:
    """The stage over one file; `field`: read only that field (a rephrased file's row also carries its
    language label, metadata rather than the example: as `audit --only-text-field text`)."""
    texts = list(dataset_texts(str(path), only_text_field=field))
    matches, stats = stage.scan(texts, set())
    return texts, matches, stats.to_json()


def rephrased_mmlu(data: Path, subject: str, kind: str) -> Path:
    """The LLM Decontaminator's file of one MMLU subject, `kind` rephrase_english or chinese."""
    return (
        data / "corpora" / "llm_decontaminator_rephrased" / f"{subject}_test_{kind}_filtered_question.jsonl"
    )


def aligned(index, matches, texts, benchmark: str, subset: str | None) -> list[bool]:
    """Per row, whether its own item was found: row i of the file rephrases the i-th item of the subset."""
    own = [
        i
        for i, ref in enumerate(index.refs)
        if ref.benchmark == benchmark and (subset is None or ref.subset == subset)
    ]
    found = {m.example for m in matches if m.example < len(own) and m.item == own[m.example]}
    return [row in found for row in range(len(texts))]


def worst_half(found: list[bool], draws: int = HALF_DRAWS) -> float:
    """The lowest recall over `draws` random halves of the rows (seeded): how far one draw of data like
    this can fall below the whole file's figure."""
    rng = random.Random(0)
    size = len(found) // 2
    return min(sum(rng.sample(found, size)) / size for _ in range(draws))


def without_subjects(hf: Path, root: Path) -> Path:
    """A benchmarks folder like `hf` (links) whose MMLU test split lacks SUBJECTS' items."""
    out = root / "hf-without-subjects"
    (out / "mmlu").mkdir(parents=True)
    for folder in hf.iterdir():
        if folder.name != "mmlu":
            (out / folder.name).symlink_to(folder)
    (out / "mmlu" / "dev.jsonl").symlink_to(hf / "mmlu" / "dev.jsonl")
    with (hf / "mmlu" / "test.jsonl").open(encoding="utf-8") as lines:
        kept = [line for line in lines if json.loads(line)["subject"] not in SUBJECTS]
    (out / "mmlu" / "test.jsonl").write_text("".join(kept), encoding="utf-8")
    return out


def absent_items(args: argparse.Namespace, root: Path) -> dict[str, int]:
    """Same-domain hard negatives: the rephrased and translated MMLU rows audited against every benchmark
    with their own subjects' items taken out of MMLU (the other 54 subjects stay); any flag is false."""
    options = AuditOptions(
        benchmarks_dir=without_subjects(args.data / "hf", root),
        cache_dir=root / "cache-absent",
        semantic=True,
        embedding_dtype=args.embedding_dtype,
    )
    index, _ = load_benchmark_index(options)
    stage = SemanticStage(index, options, root / "cache-absent")
    flags: dict[str, int] = {}
    for kind, name in (("english", "rephrase_english"), ("chinese", "chinese")):
        flags[kind] = 0
        for subject in SUBJECTS:
            texts, matches, _ = run(stage, rephrased_mmlu(args.data, subject, name), "text")
            flags[kind] += len(matches)
            for m in matches:
                ref = index.refs[m.item]
                print(f"    {subject} {kind} row {m.example} -> {ref.benchmark}/{ref.subset} ({m.reason}, "
                      f"score {m.score:.2f}): {texts[m.example][:80]!r}")  # fmt: skip
        print(f"{'MMLU ' + kind + ', own subjects absent':58} false flags {flags[kind]}/505 (same domain)")
    return flags


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--embedding-dtype", default="auto", help="auto, float32 or bfloat16 (as `audit`)")
    args = parser.parse_args()
    corpora = args.data / "corpora"
    rephrased = corpora / "llm_decontaminator_rephrased"
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        options = AuditOptions(
            benchmarks_dir=args.data / "hf",
            cache_dir=Path(tmp),
            semantic=True,
            embedding_dtype=args.embedding_dtype,
        )
        index, _ = load_benchmark_index(options)
        stage = SemanticStage(index, options, Path(tmp))
        print(f"index of {len(index.refs)} items and stage ready in {time.perf_counter() - started:.1f} s "
              f"(encoder dtype {stage.encoder.dtype})")  # fmt: skip
        print("load average (1, 5, 15 min) at start: {:.1f} {:.1f} {:.1f} on {} cores".format(
            *os.getloadavg(), os.cpu_count()))  # fmt: skip
        out: dict = {"recall": {}, "false_flags": {}, "throughput": {}}

        def show(name: str, stats: dict, line: str) -> None:
            out["throughput"][name] = stats["examples_per_s"]
            print(f"{name:58} {line}  ({stats['examples']} rows, {stats['embedded']} embedded, "
                  f"{stats['examples_per_s']}/s)")  # fmt: skip

        texts, matches, stats = run(stage, rephrased / "rephrase_gsm8k.jsonl", "text")
        found = aligned(index, matches, texts, "gsm8k", None)
        hits, rows = sum(found), len(found)
        out["recall"]["gsm8k"] = hits / rows
        worst = out["recall"]["gsm8k_worst_half"] = worst_half(found)
        show("rephrase_gsm8k", stats, f"recall {hits}/{rows} = {hits / rows:.3f}")
        print(f"{f'rephrase_gsm8k, worst of {HALF_DRAWS} random halves':58} recall {worst:.3f}")
        totals: dict[str, list[bool]] = {"english": [], "chinese": []}
        for subject in SUBJECTS:
            for kind, name in (("english", "rephrase_english"), ("chinese", "chinese")):
                texts, matches, stats = run(stage, rephrased_mmlu(args.data, subject, name), "text")
                found = aligned(index, matches, texts, "mmlu", subject)
                hits, rows = sum(found), len(found)
                totals[kind] += found
                out["recall"][f"mmlu_{subject}_{kind}"] = hits / rows
                show(f"{subject} {kind}", stats, f"recall {hits}/{rows} = {hits / rows:.3f}")
        for kind, found in totals.items():
            hits, rows = sum(found), len(found)
            out["recall"][f"mmlu_{kind}"] = hits / rows
            worst = out["recall"][f"mmlu_{kind}_worst_half"] = worst_half(found)
            print(f"{'MMLU ' + kind + ' (three subjects)':58} recall {hits}/{rows} = {hits / rows:.3f}, "
                  f"worst of {HALF_DRAWS} random halves {worst:.3f}")  # fmt: skip
        for name in CLEAN:
            texts, matches, stats = run(stage, corpora / name)
            out["false_flags"][name] = len(matches)
            show(name, stats, f"false flags {len(matches)}")
            for m in matches:
                key, row = index.items[m.item].key, texts[m.example][:90]
                print(f"    row {m.example} -> {key} ({m.reason}, cosine {m.cosine:.2f}): {row!r}")
        _, _, stats = run(stage, corpora / CLEAN[0])
        show("alpaca again (item embeddings cached)", stats, "same rows, second pass")
        texts, matches, stats = run(stage, corpora / "gsm8k_train" / "train.jsonl.gz")
        out["false_flags"]["gsm8k_train"] = len(matches)
        share = len(matches) / len(texts)
        show("gsm8k_train (hardest negatives)", stats, f"flagged {len(matches)}/{len(texts)} = {share:.2%}")
        for m in matches:
            key, why = index.items[m.item].key, m.evidence.to_json()
            print(f"    train row {m.example} -> {key} ({m.reason}, cosine {m.cosine:.2f}, {why}):")
            print(f"      {texts[m.example][:160]!r}")
        out["false_flags"]["absent_items"] = absent_items(args, Path(tmp))
    print("load average (1, 5, 15 min) at end: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    alpaca_speed = out["throughput"]["alpaca/alpaca_5000.json"]
    checks = {
        "gsm8k recall >= 0.90": out["recall"]["gsm8k"] >= TARGETS["gsm8k"],
        "MMLU English recall >= 0.80": out["recall"]["mmlu_english"] >= TARGETS["mmlu_english"],
        "MMLU Chinese recall >= 0.60 (the issue's aim)": out["recall"]["mmlu_chinese"]
        >= TARGETS["mmlu_chinese"],
        "0 false flags on Alpaca and the clean corpora": not any(out["false_flags"][n] for n in CLEAN),
        "0 false flags on rephrases and translations of absent items": not any(
            out["false_flags"]["absent_items"].values()
        ),
        "GSM8K train flagged <= 0.5%": share <= TARGETS["gsm8k_train_flagged"],
        "Alpaca >= 1,000 examples/s": alpaca_speed >= TARGETS["examples_per_s"],
    }
    out["checks"] = checks
    for name, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
