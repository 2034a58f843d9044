"""How well the model-side probe finds contamination, on tiny models trained for real (CPU, a few minutes).

Per training seed: a base pre-trained on a little English, an independent model (the base's reference), a
clean fine-tune, and per benchmark a contaminated fine-tune (the clean data plus PLANTED real test items of
that benchmark, answers included) and a linear 50/50 merge of it with the clean fine-tune. Each benchmark is
probed on its first PLANTED + UNPLANTED items. Reported per seed and benchmark: the per-item AUROC of
planted vs unplanted items (the item `score`, and the controlled `gain`), the benchmark test's p-value for
the contaminated fine-tune, the merge, the clean fine-tune and the base; for GSM8K also a fine-tune on its
train split (`corpora/gsm8k_train` beside the benchmarks: the domain and format without the test items).
GSM8K is also probed with that train split as the held-out control (`--heldout`: 150 of its 7,473 items
drawn at random, so about 2 of the in-domain fine-tune's 100 among them); the other benchmarks have no
non-test split offline and run the answer-link test alone. Then the probe's cost per item against a plain
batched transformers forward pass over the texts it scores.

    python perf/probe_accuracy.py --benchmarks-dir ../shared/data/hf [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

BENCHMARKS = ("arc_challenge", "arc_easy", "gsm8k", "hellaswag", "mmlu")
PLANTED, UNPLANTED = 100, 50
MAX_TOKENS = 128  # per text: the question's end and the answer's start always stay (tiny models, CPU)
# The tiny models hold 256 positions and are fine-tuned on 64-token windows: the CLI's default 512 runs past
# what they know (GSM8K merges, seeds 0-2: p 0.09-0.48 at 512). Fine-tuning on 256-token windows (batch 2,
# the same tokens per step) was tried for GSM8K on seeds 0-1 and moved the merge's p either way
# (0.0012 -> 0.0024, 0.0018 -> 0.00063): not adopted.
# The contaminated fine-tunes run a number of epochs, not of steps: a fixed 900 steps gave ARC, HellaSwag
# and MMLU 22-25 passes over their data but GSM8K, whose items are 3x longer (335 tokens), 10.7; with
# every benchmark at EPOCHS the planted items are seen as often whatever their length.
EPOCHS = 23  # what 900 steps gave the short-item benchmarks, whose setup is unchanged
BLOCK, BATCH = 64, 8


def epoch_steps(tokenizer_dir: Path, texts: list[str], epochs: float = EPOCHS) -> int:
    """Training steps for `epochs` passes over `texts` as tiny.train_finetune streams them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokens = sum(len(ids) + 1 for ids in tokenizer(texts)["input_ids"])  # + the EOS between texts
    return math.ceil(epochs * tokens / (BLOCK * BATCH))


def auroc(positive: list[float], negative: list[float]) -> float:
    """Probability that a planted item scores above an unplanted one (ties count half)."""
    wins = sum((p > n) + 0.5 * (p == n) for p in positive for n in negative)
    return wins / (len(positive) * len(negative))


def train_family(root: Path, seed: int, hf: Path, benchmarks: tuple[str, ...] = BENCHMARKS) -> dict[str, Any]:
    """The seed's models: base, independent, clean, and per benchmark a contaminated fine-tune and a merge."""
    from mergeguard import tiny
    from mergeguard.auditor.probe import render_item
    from mergeguard.benchmarks import load_benchmark
    from mergeguard.merge import MergeOptions, load_config, run_merge
    from mergeguard.merge.sanity import sample_text

    tok = tiny.train_tokenizer(root / "tokenizer")
    english = sample_text().split("\n\n") + tiny.training_corpus()
    base = tiny.train_finetune(
        tiny.build_model(root / "init", "llama", seed=seed, num_layers=2, tokenizer_dir=tok),
        root / "base",
        english,
        150,
        seed,
        3e-3,
    )
    independent = tiny.train_finetune(
        tiny.build_model(root / "init2", "llama", seed=seed + 100, num_layers=2, tokenizer_dir=tok),
        root / "independent",
        english,
        150,
        seed + 100,
        3e-3,
    )
    clean_texts = clean_data()
    card, fast = {"base_model": str(base)}, {"block_size": BLOCK, "batch_size": BATCH}
    clean = tiny.train_finetune(base, root / "clean", clean_texts, 150, seed, 1e-3, card, **fast)
    family: dict[str, Any] = {
        "base": base,
        "independent": independent,
        "clean": clean,
        "leaky": {},
        "merged": {},
        "steps": {},
    }
    for name in benchmarks:
        items = [i for i in load_benchmark(name, hf).items if i.question.strip() and i.answer.strip()]
        planted = ["".join(render_item(i.question, i.answer)) for i in items[:PLANTED]]
        texts = clean_texts + planted
        steps = epoch_steps(tok, texts)
        leaky = tiny.train_finetune(base, root / f"leaky-{name}", texts, steps, seed, 3e-3, card, **fast)
        config = root / f"linear-{name}.yml"
        config.write_text(
            f"merge_method: linear\nmodels:\n  - model: {leaky}\n    parameters: {{weight: 0.5}}\n"
            f"  - model: {clean}\n    parameters: {{weight: 0.5}}\ndtype: float32\n",
            encoding="utf-8",
        )
        out = root / f"merged-{name}"  # force: a rerun that trains the family again replaces its own merge
        merged = run_merge(load_config(config), out, MergeOptions(quiet=True, force=True)).out_dir
        family["leaky"][name], family["merged"][name], family["steps"][name] = leaky, merged, steps
    return family


def clean_data() -> list[str]:
    """The clean fine-tune's texts: arithmetic and writing instructions with their answers."""
    from mergeguard.demo.data import arithmetic_instructions, writing_instructions

    rows = arithmetic_instructions(100, seed=1) + writing_instructions(100, seed=2)
    return [f"{r['instruction']}\n{r['output']}" for r in rows]


def gsm8k_train(hf: Path) -> Path:
    """GSM8K's train split, where the shared data keeps it: beside the benchmarks, under `corpora/`."""
    return hf.parent / "corpora" / "gsm8k_train" / "train.jsonl.gz"


def train_in_domain(root: Path, seed: int, hf: Path, family: dict[str, Any]) -> Path | None:
    """A fine-tune on the clean data plus PLANTED items of GSM8K's *train* split (never its test), shown
    and trained on as the contaminated fine-tunes' test items are: a model that learnt the benchmark's
    domain and format but saw none of its test items, which the probe must not call suspect. None when
    the train split is not beside the benchmarks (`corpora/gsm8k_train`)."""
    from mergeguard import tiny
    from mergeguard.auditor.probe import render_item

    source = gsm8k_train(hf)
    if not source.exists():
        return None
    with gzip.open(source, "rt", encoding="utf-8") as lines:
        rows = [json.loads(line) for line in itertools.islice(lines, PLANTED)]
    texts = clean_data() + ["".join(render_item(row["question"], row["answer"])) for row in rows]
    steps = epoch_steps(root / "tokenizer", texts)
    card, fast = {"base_model": str(family["base"])}, {"block_size": BLOCK, "batch_size": BATCH}
    return tiny.train_finetune(
        family["base"], root / "in-domain-gsm8k", texts, steps, seed, 3e-3, card, **fast
    )


def trained_family(root: Path, seed: int, hf: Path, benchmarks: tuple[str, ...]) -> dict[str, Any]:
    """`train_family` in `root`, or the family a previous run left there (its `family.json`) when it holds
    every benchmark asked for."""
    record = root / "family.json"
    family = json.loads(record.read_text(encoding="utf-8"), object_hook=_paths) if record.exists() else None
    if family is None or not set(benchmarks) <= set(family["leaky"]):
        family = train_family(root, seed, hf, benchmarks)
    if "gsm8k" in benchmarks and family.get("in_domain") is None:  # added later: trained alone when missing
        family["in_domain"] = train_in_domain(root, seed, hf, family)
    record.write_text(json.dumps(family, default=str), encoding="utf-8")
    return family


def _paths(entry: dict[str, Any]) -> dict[str, Any]:
    return {key: Path(value) if isinstance(value, str) else value for key, value in entry.items()}


def heldout_source(bench: str, hf: Path) -> str | None:
    """The held-out split the probe may use as its second control (`--heldout`): GSM8K's train split where
    it lies beside the benchmarks (the only non-test split offline); None for the others."""
    source = gsm8k_train(hf)
    return str(source) if bench == "gsm8k" and source.exists() else None


def probe(model: Path, bench: str, hf: Path, reference: Path | None = None) -> Any:
    from mergeguard.auditor.probe import ProbeOptions, probe_model

    heldout = heldout_source(bench, hf)
    options = ProbeOptions(
        benchmarks=[bench],
        benchmarks_dir=hf,
        limit=PLANTED + UNPLANTED,
        max_tokens=MAX_TOKENS,
        batch_size=32,
        reference=str(reference) if reference else None,
        heldout={bench: heldout} if heldout else {},
    )
    return probe_model(str(model), options).benchmarks[0]


def cost(model_dir: Path, hf: Path, repeats: int = 7) -> dict[str, float]:
    """Seconds per item, best of N interleaved runs, over 200 ARC-Challenge items and their controls: the
    probe (`score_items`, tokenization included); a plain batched forward pass over the texts it scores
    (each item whole and its CONTROLS controls up to the end of their longest answer window: what the
    probe would feed without its key-value cache); one over every text whole; one over the items alone;
    one over the tokens the probe feeds (each item whole, each control's answer tokens alone as a sequence
    of its own, without the prompt they attend to on the cache)."""
    import torch

    from mergeguard.auditor.probe import control_encoded, item_pairs, load_model, score_items, tokenize
    from mergeguard.benchmarks import load_benchmark

    items = load_benchmark("arc_challenge", hf).items[:200]
    real, borrowed = item_pairs(items, seed=0)
    model, tokenizer = load_model(model_dir, "cpu", "auto", False)
    encoded = tokenize(tokenizer, real, MAX_TOKENS)
    controls = control_encoded(encoded, borrowed, MAX_TOKENS)
    alone = [ids for ids, *_ in encoded]
    whole = alone + [ids for ids, *_ in controls]
    fed = alone + [ids[: ends[-1]] for ids, _, ends in controls]
    fed_alone = alone + [ids[start : max(ends[-1] - 1, start + 1)] for ids, start, ends in controls]

    def plain(sequences: list[list[int]]) -> None:
        order = sorted(sequences, key=len)
        with torch.inference_mode():
            for s in range(0, len(order), 8):
                batch = order[s : s + 8]
                width = max(map(len, batch))
                ids = torch.tensor([row + [1] * (width - len(row)) for row in batch])
                mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in batch])
                model(input_ids=ids, attention_mask=mask)

    def probe() -> None:
        score_items(model, tokenizer, real, borrowed, batch_size=8, max_tokens=MAX_TOKENS, k=0.2)

    runs = {
        "probe": probe,
        "fed": lambda: plain(fed),
        "whole": lambda: plain(whole),
        "alone": lambda: plain(alone),
        "windows": lambda: plain(fed_alone),
    }
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):  # interleaved: a slow spell of the shared host hits all alike
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: seconds / len(real) for name, seconds in best.items()}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--benchmarks-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/hf"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dump", type=Path, help="also write each probe's per-item gains here (JSON Lines)")
    parser.add_argument("--skip-cost", action="store_true", help="no cost measurement")
    parser.add_argument(
        "--benchmarks", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS), help="a subset (default all)"
    )
    parser.add_argument(
        "--models",
        type=Path,
        help="keep each seed's trained models under DIR/seed-N and reuse them when there",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    hf = args.benchmarks_dir
    header = (
        f"{'seed':>4} {'benchmark':<14} {'steps':>5} {'AUROC score':>11} {'AUROC gain':>10}"
        + "".join(f" {name:>9}" for name in ("p leaky", "p merge", "p clean", "p base"))
        + "   merge p as is / amplified / held-out, window"
    )
    print(header)
    tally: dict[str, list[bool]] = {
        "leaky < 0.001": [],
        "merge < 0.001": [],
        "clean and base > 0.05": [],
        "in-domain > 0.05": [],
    }
    for seed in args.seeds:
        with tempfile.TemporaryDirectory(prefix="probe-perf-") as tmp:
            root = args.models / f"seed-{seed}" if args.models else Path(tmp)
            family = trained_family(root, seed, hf, tuple(args.benchmarks))
            for bench in args.benchmarks:
                leaky = probe(family["leaky"][bench], bench, hf)
                merged = probe(family["merged"][bench], bench, hf)
                clean = probe(family["clean"], bench, hf)
                base = probe(family["base"], bench, hf, reference=family["independent"])
                pos = [i.score for i in leaky.items[:PLANTED]]
                neg = [i.score for i in leaky.items[PLANTED:]]
                gpos = [i.gain for i in leaky.items[:PLANTED]]
                gneg = [i.gain for i in leaky.items[PLANTED:]]
                print(
                    f"{seed:>4} {bench:<14} {family['steps'][bench]:>5} "
                    f"{auroc(pos, neg):>11.3f} {auroc(gpos, gneg):>10.3f} "
                    + " ".join(f"{probe.p_value:>9.2g}" for probe in (leaky, merged, clean, base))
                    + f"   {merged.p_plain:.2g} / {_maybe(merged.p_amplified)} / {_maybe(merged.p_heldout)}"
                    + f", {merged.window}",
                    flush=True,
                )
                tally["leaky < 0.001"].append(leaky.p_value < 0.001)
                tally["merge < 0.001"].append(merged.p_value < 0.001)
                tally["clean and base > 0.05"] += [clean.p_value > 0.05, base.p_value > 0.05]
                if bench == "gsm8k" and family.get("in_domain"):
                    in_domain = probe(family["in_domain"], bench, hf)
                    tally["in-domain > 0.05"].append(in_domain.p_value > 0.05)
                    print(
                        f"{seed:>4} {'gsm8k':<14} fine-tune on GSM8K's train split: p {in_domain.p_value:.2g}"
                        f" (answer link {in_domain.p_plain:.2g}, held-out {_maybe(in_domain.p_heldout)})"
                    )
                if args.dump:
                    probes = {"leaky": leaky, "merged": merged, "clean": clean, "base": base}
                    dump(args.dump, seed, bench, probes)
            if seed == args.seeds[0] and not args.skip_cost:
                seconds = cost(family["clean"], hf)
                print(
                    f"cost per item: probe {seconds['probe'] * 1e3:.3f} ms; " + _ratios(seconds), flush=True
                )

    print("; ".join(f"{name}: {sum(hits)}/{len(hits)}" for name, hits in tally.items()), flush=True)


def _ratios(seconds: dict[str, float]) -> str:
    described = {
        "fed": "a plain forward pass over the texts it scores",
        "whole": "over every text whole",
        "alone": "over the items alone",
        "windows": "over the tokens it feeds",
    }
    parts = [
        f"{label} {seconds[name] * 1e3:.3f} ms (ratio {seconds['probe'] / seconds[name]:.2f}x)"
        for name, label in described.items()
    ]
    return ", ".join(parts) + " (CPU, one thread, tiny llama; each item has CONTROLS controls)"


def _maybe(value: float | None) -> str:
    return "-" if value is None else f"{value:.2g}"


def dump(path: Path, seed: int, bench: str, probes: dict[str, Any]) -> None:
    """One JSON line per probe: its per-item gains (planted first), to study the benchmark test offline."""
    with path.open("a", encoding="utf-8") as out:
        for name, result in probes.items():
            gains = [item.gain for item in result.items]
            row = {
                "seed": seed,
                "benchmark": bench,
                "model": name,
                "p_value": result.p_value,
                "p_plain": result.p_plain,
                "p_amplified": result.p_amplified,
                "p_heldout": result.p_heldout,
                "gains": gains,
            }
            out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
