"""What an audit returns: findings, per-model verdicts, per-benchmark rates, as plain dataclasses and JSON.

The JSON shape (`AuditReport.to_json`) is documented in the README's "mergeguard audit" section; the
database stores it as is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

SEVERITY_RANK = {"verbatim": 3, "partial": 2, "question_only": 1}
CLEAN, CONTAMINATED, UNDECLARED = "clean", "contaminated", "undeclared"
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
    severity: str  # verbatim | partial | question_only
    inherited_from: str | None  # the ancestor whose dataset holds it, None for the model's own
    evidence: str  # the matched span of the training text
    subset: str | None = None
    item_text: str = ""  # the benchmark item (question, choices, answer), for display
    context_before: str = ""
    context_after: str = ""

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
    verdict: str  # clean | contaminated | undeclared
    datasets: list[dict[str, Any]] = field(default_factory=list)  # {ref, declared_by, inherited_from}
    rates: list[BenchmarkRate] = field(default_factory=list)
    inherited_from: list[str] = field(default_factory=list)  # ancestors whose data is part of the verdict
    kind: str = "model"
    problems: list[str] = field(default_factory=list)


@dataclass
class AuditReport:
    """The whole audit. `contaminated` is what the exit status and the merge guard act on."""

    findings: list[Finding]
    models: list[ModelVerdict]
    benchmark_rates: dict[str, dict[str, Any]]
    index_hash: str
    thresholds: dict[str, Any]
    problems: list[str] = field(default_factory=list)

    @property
    def contaminated(self) -> bool:
        return any(model.verdict == CONTAMINATED for model in self.models)

    @property
    def undeclared(self) -> list[str]:
        return [model.model for model in self.models if model.verdict == UNDECLARED]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA_VERSION,
            "contaminated": self.contaminated,
            "findings": [finding.to_json() for finding in self.findings],
            "models": [asdict(model) for model in self.models],
            "benchmark_rates": self.benchmark_rates,
            "index_hash": self.index_hash,
            "thresholds": self.thresholds,
            "problems": self.problems,
        }

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
        )


def worst(severities: list[str]) -> str | None:
    return max(severities, key=SEVERITY_RANK.__getitem__) if severities else None


def rate_verdict(contaminated: int, items: int, severities: list[str], thresholds: dict[str, Any]) -> str:
    """contaminated when any verbatim finding (if so configured) or the rate reaches the threshold."""
    if thresholds.get("fail_on_verbatim", True) and "verbatim" in severities:
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
        hits = [f for f in findings if f.benchmark == name]
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
