"""mergeguard.auditor: contamination audits of fine-tune datasets against benchmark test sets.

`audit_models`, `audit_datasets` and `audit_config` return an `AuditReport`; `build_index` and
`scan_examples` are the core (benchmark MinHash index, and detection in a stream of texts); `scan_batch`
and `combine` are the engines' unit of work (`open_engine`, `scan_dataset`: in processes or on Ray).
"""

from __future__ import annotations

from mergeguard.lazy import lazy_exports

_HOME = {  # public name -> the module that defines it, imported on first use (the scanner pulls numpy)
    "AuditOptions": "options",
    "audit_config": "audit",
    "audit_datasets": "audit",
    "audit_models": "audit",
    "load_benchmark_index": "audit",
    "dataset_texts": "datasets",
    "example_text": "datasets",
    "open_dataset": "datasets",
    "Match": "detect",
    "ScanResult": "detect",
    "scan_examples": "detect",
    "BenchmarkIndex": "index",
    "build_from_items": "index",
    "build_index": "index",
    "Lineage": "lineage",
    "resolve_lineage": "lineage",
    "ProbeOptions": "probe",
    "ProbeReport": "probe",
    "probe_model": "probe",
    "probe_models": "probe",
    "reports_json": "probe",
    "AuditReport": "report",
    "BenchmarkRate": "report",
    "Finding": "report",
    "ModelVerdict": "report",
    "ProbeVerdict": "report",
    "ParaphraseMatch": "semantic",
    "SemanticStage": "semantic",
    "Encoder": "embeddings",
    "open_engine": "engines",
    "scan_dataset": "engines",
    "Partial": "engines.work",
    "combine": "engines.work",
    "scan_batch": "engines.work",
}

__getattr__ = lazy_exports(__name__, _HOME)


__all__ = [
    "AuditOptions",
    "AuditReport",
    "BenchmarkIndex",
    "BenchmarkRate",
    "Encoder",
    "Finding",
    "Lineage",
    "Match",
    "ModelVerdict",
    "ProbeOptions",
    "ProbeReport",
    "ProbeVerdict",
    "ParaphraseMatch",
    "Partial",
    "ScanResult",
    "SemanticStage",
    "audit_config",
    "audit_datasets",
    "audit_models",
    "build_from_items",
    "build_index",
    "combine",
    "dataset_texts",
    "example_text",
    "load_benchmark_index",
    "open_dataset",
    "open_engine",
    "probe_model",
    "probe_models",
    "reports_json",
    "resolve_lineage",
    "scan_batch",
    "scan_dataset",
    "scan_examples",
]
