"""What an audit returns: findings, per-model verdicts, per-benchmark rates, as plain dataclasses and JSON.

The JSON shape (`AuditReport.to_json`) is documented in the README's "mergeguard audit" section; the
database stores it as is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Severity(StrEnum):
    """How strongly a finding matches its benchmark item, strongest first (the order ranks evidence).
    `paraphrase`: the semantic stage's finding (reworded or translated item, confirmed by evidence); counted.
    `passage`: only the shared source text an item quotes (a reading passage) is there: listed, never counted.
    """

    VERBATIM = "verbatim"
    PARTIAL = "partial"
    QUESTION_ONLY = "question_only"
    PARAPHRASE = "paraphrase"
    PASSAGE = "passage"

    @property
    def rank(self) -> int:
        """Higher is stronger: verbatim 4 ... passage 0."""
        return SEVERITY_RANK[self]


class Verdict(StrEnum):
    """A model's (or dataset's) verdict; str values, so JSON and the database keep the same strings.
    `incomplete`: a declared dataset was read only in part; `unreadable`: one gave no text at all. Both fail
    closed: never clean. `unaudited`: a merge made under --no-audit (never an audit's verdict)."""

    CLEAN = "clean"
    CONTAMINATED = "contaminated"
    UNDECLARED = "undeclared"
    INCOMPLETE = "incomplete"
    UNREADABLE = "unreadable"
    UNAUDITED = "unaudited"


class ProbeVerdict(StrEnum):
    """A model-side probe's verdict on one benchmark (or a model): `suspect`, the model tells the benchmark's
    test items from unseen controls; `no_signal`, it does not; `inconclusive`, too few items to tell."""

    SUSPECT = "suspect"
    NO_SIGNAL = "no_signal"
    INCONCLUSIVE = "inconclusive"


SEVERITY_RANK: dict[str, int] = {s.value: len(Severity) - 1 - i for i, s in enumerate(Severity)}
PASSAGE, PARAPHRASE = Severity.PASSAGE, Severity.PARAPHRASE
# The guard, the CLI and the database take verdicts from here (the names below are kept for callers).
CLEAN, CONTAMINATED, UNDECLARED = Verdict.CLEAN, Verdict.CONTAMINATED, Verdict.UNDECLARED
INCOMPLETE, UNREADABLE, UNAUDITED = Verdict.INCOMPLETE, Verdict.UNREADABLE, Verdict.UNAUDITED
VERDICTS = (CLEAN, CONTAMINATED, UNDECLARED, INCOMPLETE, UNREADABLE)  # what an audit can say
UNREAD = (INCOMPLETE, UNREADABLE)
# How bad a merge's worst input is, worst first: a merge inherits the first of these found in its inputs.
VERDICT_ORDER = (CONTAMINATED, UNREADABLE, INCOMPLETE, UNDECLARED, CLEAN)
# A dataset's read status: all of it, all but the bad rows the user chose to skip, or one of UNREAD.
COMPLETE, SKIPPED = "complete", "skipped"
SCHEMA_VERSION = 1


@dataclass
class Finding:
    """One benchmark item found in one training example."""

    model: str | None
    dataset: str
    example: int  # 0-based index of the training example in its dataset
    benchmark: str
    split: str
    item: int  # 0-based row index in the benchmark split
    item_id: str | None
    score: float  # containment of the item's informative n-grams in the example, 0..1
    severity: str  # a Severity value (passage: source text only, never counted)
    inherited_from: str | None  # the ancestor whose dataset holds it, None for the model's own
    evidence: str  # the matched span of the training text
    subset: str | None = None
    item_text: str = ""  # the benchmark item (question, choices, answer), for display
    context_before: str = ""
    context_after: str = ""
    # a paraphrase's evidence: reason, cosine, retrieval, numbers, answer, choices, gold_choice, rare_words
    semantic: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BenchmarkRate:
    """How much of one benchmark a subject (model or dataset) holds."""

    benchmark: str
    split: str
    items: int
    contaminated: int
    rate: float
    worst: str | None  # the worst severity found, None when nothing was
    verdict: str


@dataclass
class ModelVerdict:
    """The verdict on one model (or, for `audit --dataset`, one dataset: kind == "dataset")."""

    model: str
    verdict: str  # a Verdict value, one of VERDICTS
    # {ref, declared_by, inherited_from, source, status, examples, skipped, reasons}: status is complete,
    # skipped (bad rows skipped with --skip-bad-rows, `skipped` counts them), incomplete or unreadable
    datasets: list[dict[str, Any]] = field(default_factory=list)
    rates: list[BenchmarkRate] = field(default_factory=list)
    inherited_from: list[str] = field(default_factory=list)  # ancestors whose data is part of the verdict
    kind: str = "model"
    problems: list[str] = field(default_factory=list)


@dataclass
class AuditReport:
    """The whole audit. `contaminated` and `unread` are what the exit status and the merge guard act on."""

    findings: list[Finding]
    models: list[ModelVerdict]
    benchmark_rates: dict[str, dict[str, Any]]
    index_hash: str
    thresholds: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    semantic: dict[str, Any] | None = None  # the semantic stage's model, cost and timing (when it ran)

    @property
    def contaminated(self) -> bool:
        return any(model.verdict == CONTAMINATED for model in self.models)

    @property
    def undeclared(self) -> list[str]:
        return [model.model for model in self.models if model.verdict == UNDECLARED]

    @property
    def unread(self) -> list[str]:
        """Models (or datasets) whose declared data could not be read completely: not auditable."""
        return [model.model for model in self.models if model.verdict in UNREAD]

    def verdicts(self) -> dict[str, str]:
        """Each audited model's verdict (`audit --dataset` verdicts, about datasets, left out)."""
        return {model.model: model.verdict for model in self.models if model.kind == "model"}

    def merged_verdict(self) -> Verdict:
        """What a merge of the audited models is: as bad as its worst input (VERDICT_ORDER)."""
        found = set(self.verdicts().values())
        return next(verdict for verdict in VERDICT_ORDER if verdict in found or verdict == CLEAN)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "contaminated": self.contaminated,
            "findings": [finding.to_json() for finding in self.findings],
            "models": [asdict(model) for model in self.models],
            "benchmark_rates": self.benchmark_rates,
            "dataset_view": self.dataset_view(),
            "index_hash": self.index_hash,
            "thresholds": self.thresholds,
            "problems": self.problems,
            **({"semantic": self.semantic} if self.semantic is not None else {}),
        }

    def dataset_view(self) -> list[dict[str, Any]]:
        """Per dataset and benchmark: distinct items found and their share of the benchmark, so that a
        dataset holding most of a test set reads as that, not as a list of findings (`passages`: items
        whose quoted source text alone is there, not counted)."""
        return dataset_view(self.findings, self.benchmark_rates)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AuditReport:
        """The report back from `to_json()` (e.g. a stored audit that a merge reuses)."""
        models = []
        for entry in data.get("models", []):
            fields = {k: v for k, v in entry.items() if k in ModelVerdict.__dataclass_fields__}
            fields["rates"] = [BenchmarkRate(**rate) for rate in entry.get("rates", [])]
            models.append(ModelVerdict(**fields))
        findings = [
            Finding(**{k: v for k, v in f.items() if k in Finding.__dataclass_fields__})
            for f in data.get("findings", [])
        ]
        return cls(
            findings=findings,
            models=models,
            benchmark_rates=data.get("benchmark_rates", {}),
            index_hash=data.get("index_hash", ""),
            thresholds=data.get("thresholds", {}),
            problems=list(data.get("problems", [])),
            semantic=data.get("semantic"),
        )


def worst(severities: list[str]) -> str | None:
    return max(severities, key=SEVERITY_RANK.__getitem__) if severities else None


def rate_verdict(contaminated: int, items: int, severities: list[str], thresholds: dict[str, Any]) -> str:
    """contaminated when any verbatim finding (if so configured) or the rate reaches the threshold."""
    if thresholds.get("fail_on_verbatim", True) and Severity.VERBATIM in severities:
        return CONTAMINATED
    if items and contaminated / items >= thresholds.get("rate", 0.01):
        return CONTAMINATED
    return CLEAN


def benchmark_rates(
    findings: list[Finding], sizes: dict[str, tuple[str, int]], thresholds: dict[str, Any]
) -> list[BenchmarkRate]:
    """One row per benchmark: distinct contaminated items among `findings` (of one subject)."""
    rows = []
    for name, (split, items) in sizes.items():
        hits = [f for f in findings if f.benchmark == name and f.severity != PASSAGE]
        distinct = len({f.item for f in hits})
        severities = [f.severity for f in hits]
        rows.append(
            BenchmarkRate(
                benchmark=name,
                split=split,
                items=items,
                contaminated=distinct,
                rate=distinct / items if items else 0.0,
                worst=worst(severities),
                verdict=rate_verdict(distinct, items, severities, thresholds),
            )
        )
    return rows


CONTAINS_BENCHMARK = 0.9  # share of a benchmark's items in one dataset: "this dataset contains the benchmark"
CONTAINS_MOST = 0.5


def dataset_view(findings: list[Finding], rates: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, benchmark) with findings: `found` distinct items (passages aside), `items` in
    the benchmark, `share`, `passages`, and `summary`, a sentence such as "816/817 of truthfulqa_mc
    (99.9%): this dataset contains the benchmark"."""
    found: dict[tuple[str, str], set[int]] = {}
    passages: dict[tuple[str, str], set[int]] = {}
    for f in findings:
        key = (f.dataset, f.benchmark)
        (passages if f.severity == PASSAGE else found).setdefault(key, set()).add(f.item)
        found.setdefault(key, set())
    rows = []
    for (dataset, benchmark), hit in found.items():
        items = int(rates.get(benchmark, {}).get("items", 0))
        share = len(hit) / items if items else 0.0
        summary = f"{len(hit)}/{items} of {benchmark} ({share:.1%})"
        if share >= CONTAINS_BENCHMARK:
            summary += ": this dataset contains the benchmark"
        elif share >= CONTAINS_MOST:
            summary += ": this dataset contains most of the benchmark"
        notes = len(passages.get((dataset, benchmark), ()))
        if notes:
            summary += f"; {notes} passage note{'s' if notes > 1 else ''} (source text only, not counted)"
        rows.append(
            {
                "dataset": dataset,
                "benchmark": benchmark,
                "found": len(hit),
                "items": items,
                "share": round(share, 4),
                "passages": notes,
                "summary": summary,
            }
        )
    return rows
