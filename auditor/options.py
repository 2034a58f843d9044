"""What an audit compares against and when it calls contamination: light, so that `merge --no-audit`
and the CLI can build options without importing the scanner (numpy, datasketch)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergeguard.progress import ProgressCallback

DEFAULT_NGRAM = 5
DEFAULT_CONTAINMENT = 0.5
EMBEDDING_DTYPES = ("auto", "float32", "bfloat16")  # the semantic stage's encoder (embeddings.resolve_dtype)
MAX_LINE = 16 << 20  # bytes of one dataset line, JSON array element or example text: a bound on memory


@dataclass
class AuditOptions:
    """What to audit against and when to call it contamination."""

    benchmarks: list[str] | None = None  # names or suites; None: every benchmark that loads
    benchmarks_dir: Path | None = None
    custom_specs: list[Path] = field(default_factory=list)
    cache_dir: Path | None = None
    num_perm: int = 128
    ngram: int = DEFAULT_NGRAM
    threshold_rate: float = 0.01
    fail_on_verbatim: bool = True
    containment: float = DEFAULT_CONTAINMENT
    text_field: str | None = None  # a field added to the default text fields
    only_text_field: str | None = None  # the one field read instead of the defaults
    dataset_overrides: dict[str, list[str]] = field(default_factory=dict)
    progress: ProgressCallback | None = None  # hears the long steps (indexing, hashing); the CLI draws them
    # Bad rows or files of a dataset fail the audit (`incomplete`/`unreadable`) unless skipped on request;
    # the choice is part of `thresholds`, so it is recorded with the report and keys audit reuse.
    skip_bad_rows: bool = False
    max_line: int = MAX_LINE
    # The semantic stage (paraphrases, translations): off unless asked; see auditor/semantic.py.
    semantic: bool = False
    embedding_model: str | None = None  # sentence-transformers folder or hub id; None: the default model
    embedding_dtype: str = "auto"  # auto (bfloat16 where the hardware has it), float32 or bfloat16
    judge: str | None = None  # a local causal LM that confirms close candidates the evidence leaves open
    device: str = "cpu"
    semantic_min_chars: int = 30  # shorter examples are not embedded
    # Where the scans run (`mergeguard.auditor.engines`); the findings are the same whichever.
    engine: str = "local"  # local (this machine) or ray
    workers: int | None = None  # local worker processes; None: the machine's cores
    ray_address: str | None = None  # a Ray cluster to join (engine ray); None: start a local Ray

    @property
    def thresholds(self) -> dict[str, Any]:
        semantic: dict[str, Any] = {}
        if self.semantic:  # absent otherwise: a lexical-only audit's thresholds are as before
            model = self.embedding_model or "default"
            semantic = {
                "semantic": model,
                "judge": self.judge,
                "min_chars": self.semantic_min_chars,
                "embedding_dtype": self.embedding_dtype,
            }
        return {
            **semantic,
            "rate": self.threshold_rate,
            "fail_on_verbatim": self.fail_on_verbatim,
            "containment": self.containment,
            "ngram": self.ngram,
            "num_perm": self.num_perm,
            "skip_bad_rows": self.skip_bad_rows,
        }
