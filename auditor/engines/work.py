"""The audit's unit of work, the same in every engine: a batch of example texts plus the index in, the
batch's partial findings out; partials combine in input order into the dataset's scan result.

A partial holds the verified matches (example numbers counted from the batch's first example), which of
them alignment found, and per benchmark n-gram how many of the batch's examples hold it. The last part is
what makes the split exact: the scanner drops a dataset's own template n-grams (those in many of its
examples) only once the whole dataset is seen, so `combine` sums the counts and applies that step to all
matches at once. Every engine therefore reports exactly what `scan_examples` reports on the whole stream.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from mergeguard.auditor.detect import BATCH, Match, ScanResult, _Scanner, strongest_per_item
from mergeguard.auditor.engines.shared_index import KEY_HASHES
from mergeguard.auditor.index import BenchmarkIndex


@dataclass
class Partial:
    """What scanning a run of consecutive examples found, before the dataset-wide template step."""

    examples: int = 0
    matches: list[Match] = field(default_factory=list)
    aligned: list[int] = field(default_factory=list)  # positions in `matches` found by alignment
    count_rows: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # rows of bench_hashes
    count_values: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # examples holding each
    prefiltered: int = 0
    windows: int = 0
    candidates: int = 0


class Accumulator:
    """Partials appended in input order (example numbers shifted to the run's), n-gram counts summed in
    one dense array: a dataset's scan, or a shard's, built a batch at a time in bounded memory."""

    def __init__(self, index: BenchmarkIndex) -> None:
        self.counts = np.zeros(len(index.bench_hashes), dtype=np.int64)
        self.whole = Partial()

    def add(self, later: Partial) -> None:
        """Append the partial of the examples that follow those added so far (`later` is consumed)."""
        whole = self.whole
        base = len(whole.matches)
        for match in later.matches:
            match.example += whole.examples
        whole.matches.extend(later.matches)
        whole.aligned.extend(base + k for k in later.aligned)
        self.counts[later.count_rows] += later.count_values
        whole.examples += later.examples
        whole.prefiltered += later.prefiltered
        whole.windows += later.windows
        whole.candidates += later.candidates

    def partial(self) -> Partial:
        """Everything added, as one partial (the counts made sparse again, to travel)."""
        rows = np.flatnonzero(self.counts)
        return Partial(**{**vars(self.whole), "count_rows": rows, "count_values": self.counts[rows]})


def scan_batch(texts: list[str], index: BenchmarkIndex, containment: float, step: int = BATCH) -> Partial:
    """The unit of work: detection on one batch of example texts (example 0 is the batch's first), `step`
    texts at a time (the scanner's memory grows with it; its findings do not change)."""
    scanner = _Scanner(index, containment)
    scanner.key_hashes = getattr(index, KEY_HASHES, None)  # shared by the engines (None: computed)
    for start in range(0, len(texts), step):
        chunk = texts[start : start + step]
        scanner.batch([t if isinstance(t, str) else "" for t in chunk], start)
    rows = np.flatnonzero(scanner.example_counts)
    return Partial(
        examples=len(texts),
        matches=scanner.matches,
        aligned=[k for k, match in enumerate(scanner.matches) if id(match) in scanner.aligned],
        count_rows=rows.astype(np.int64),
        count_values=scanner.example_counts[rows],
        prefiltered=scanner.prefiltered,
        windows=scanner.windows,
        candidates=scanner.candidates,
    )


def combine(partials: Iterable[Partial], index: BenchmarkIndex, containment: float) -> ScanResult:
    """The dataset's scan result from its partials in input order: the template step over all the
    examples, then one match per (example, item), the strongest (as `scan_examples` does)."""
    total = Accumulator(index)
    for partial in partials:
        total.add(partial)
    whole = total.whole
    scanner = _Scanner(index, containment)
    scanner.examples = whole.examples
    scanner.example_counts = total.counts
    scanner.matches = whole.matches
    scanner.aligned = {id(whole.matches[k]) for k in whole.aligned}
    matches = strongest_per_item(index, scanner.finish())
    return ScanResult(matches, whole.examples, whole.prefiltered, whole.windows, whole.candidates)
