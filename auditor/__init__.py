"""mergeguard.auditor: contamination audits of fine-tune datasets against benchmark test sets.

`audit_models`, `audit_datasets` and `audit_config` return an `AuditReport`; `build_index` and
`scan_examples` are the core (benchmark MinHash index, and detection in a stream of texts).
"""

from mergeguard.auditor.audit import (
    AuditOptions,
    audit_config,
    audit_datasets,
    audit_models,
    load_benchmark_index,
)
from mergeguard.auditor.datasets import dataset_texts, example_text, open_dataset
from mergeguard.auditor.detect import Match, ScanResult, scan_examples
from mergeguard.auditor.index import BenchmarkIndex, build_from_items, build_index
from mergeguard.auditor.lineage import Lineage, resolve_lineage
from mergeguard.auditor.report import AuditReport, BenchmarkRate, Finding, ModelVerdict

__all__ = [
    "AuditOptions",
    "AuditReport",
    "BenchmarkIndex",
    "BenchmarkRate",
    "Finding",
    "Lineage",
    "Match",
    "ModelVerdict",
    "ScanResult",
    "audit_config",
    "audit_datasets",
    "audit_models",
    "build_from_items",
    "build_index",
    "dataset_texts",
    "example_text",
    "load_benchmark_index",
    "open_dataset",
    "resolve_lineage",
    "scan_examples",
]
