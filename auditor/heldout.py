"""The probe's second control: items of another split of the same benchmark (`probe --heldout BENCH=SPLIT`).

The answer-link test (probe.py) needs nothing but the test set, but a 50/50 merge can dilute the link below
what 150 items resolve while the items' text stays memorised. Text memorisation needs a control of the same
kind of text that the model is not suspected of having seen: items of the benchmark's train or validation
split, drawn from the same pool as its test split. The statistic per item is the suspect's mean
log-probability over the whole item minus the reference's (what the family knows cancels); test items should
gain no more than held-out ones, so a one-sided Mann-Whitney test over the two groups asks whether they do.

A fine-tune on the held-out split itself makes its items the more familiar ones: the test stays calm (it
cannot then see test contamination; the answer-link test still can). Splits that are not drawn from one
pool (HellaSwag's validation holds activity categories its train split lacks) weaken that null: prefer a
split the benchmark's authors cut at random.

On perf/probe_accuracy.py's tiny models, GSM8K against 150 random items of its train split (14 seeds), this
test alone: contaminated fine-tunes p <= 2.3e-20, their 50/50 merges p <= 7.4e-9 (the answer-link test missed
one at 0.026), clean fine-tunes p >= 0.12, fine-tunes on 100 train-split items p >= 0.31, bases against an
independent model under 0.05 on 2 of 14 (0.013, 0.044: what a calibrated test does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mergeguard.benchmarks.loading import LoadedBenchmark, load_spec
from mergeguard.errors import BenchmarkError, ProbeError


def load_heldout(
    bench: LoadedBenchmark, source: str, benchmarks_dir: Path | None, use_hub: bool
) -> list[Any]:
    """The benchmark's items from `source`: a file in the benchmark's hub schema (a path that exists, or
    one with a file extension), else a split name, loaded like the benchmark (local folder, then the hub).
    An unreadable or missing source is a ProbeError, never a probe without its control."""
    spec = bench.spec
    if spec.subsets:
        raise ProbeError(
            f"--heldout {spec.name}: a benchmark stored per subtask has no single held-out split",
            hint=f"drop --heldout {spec.name}",
        )
    path = Path(source).expanduser()
    as_file = path.exists() or bool(path.suffix)
    other = (
        dataclasses.replace(spec, data_files=(str(path),), split=f"heldout:{path.name}")
        if as_file
        else dataclasses.replace(spec, split=source)
    )
    if not as_file and source == spec.split:
        raise ProbeError(
            f"--heldout {spec.name}={source} is the split being probed",
            hint="name another split (train, validation) or a file of other items",
        )
    if as_file and not path.is_file():
        raise ProbeError(f"--heldout {spec.name}: no file {path}", hint="check the path")
    try:
        loaded = load_spec(other, benchmarks_dir, use_hub=use_hub)
    except BenchmarkError as error:
        raise ProbeError(f"--heldout {spec.name}: {error.message}", hint=error.hint) from None
    return loaded.items


def pick_heldout(items: Sequence[Any], probed: Sequence[Any], size: int, seed: int) -> list[Any]:
    """A seeded random `size` of the held-out items (a split's first rows may be ordered), leaving out any
    whose question is one of the probed items' (a copy across splits is not a control)."""
    asked = {item.question.strip() for item in probed}
    usable = [i for i in items if i.question.strip() and i.answer.strip() and i.question.strip() not in asked]
    if len(usable) <= size:
        return list(usable)
    chosen = np.random.default_rng(seed).choice(len(usable), size=size, replace=False)
    return [usable[int(i)] for i in sorted(chosen)]


def heldout_test(test_gains: Sequence[float], heldout_gains: Sequence[float]) -> tuple[float, float]:
    """(p, effect): one-sided Mann-Whitney U, test items' gains above held-out items'; `effect` is the
    difference of the means over the pooled standard deviation."""
    from scipy.stats import mannwhitneyu

    test = np.asarray([g for g in test_gains if np.isfinite(g)], dtype=np.float64)
    held = np.asarray([g for g in heldout_gains if np.isfinite(g)], dtype=np.float64)
    p = float(mannwhitneyu(test, held, alternative="greater").pvalue)
    pooled = np.sqrt(
        (test.var(ddof=1) * (len(test) - 1) + held.var(ddof=1) * (len(held) - 1))
        / (len(test) + len(held) - 2)
    )
    effect = float((test.mean() - held.mean()) / pooled) if pooled > 0 else 0.0
    return p, effect
