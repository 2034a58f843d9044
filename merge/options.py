"""What a merge's caller passes in and gets back: its options, its progress reports and its result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mergeguard.merge.plan import SourceModel
    from mergeguard.merge.workers import WorkerPool


@dataclass
class Progress:
    """What a progress callback receives after each tensor."""

    tensors_done: int
    tensors_total: int
    bytes_done: int
    bytes_total: int
    name: str


@dataclass
class MergeOptions:
    """How to run a merge (mergekit's command-line options, under the same names)."""

    device: str = "cpu"
    random_seed: int | None = None
    out_shard_size: int | str = "5B"
    copy_tokenizer: bool = True
    allow_crimes: bool = False
    allow_pickle: bool = False
    strict: bool = False
    force: bool = False
    quiet: bool = False
    lazy_unpickle: bool = False  # accepted for mergekit compatibility; reading is always lazy
    low_cpu_memory: bool = False  # accepted for mergekit compatibility; memory is always bounded
    write_model_card: bool = True
    backend: str = "auto"  # "auto": numpy kernels where they apply, else torch; "numpy" or "torch" to force
    local_files_only: bool = False
    progress: Callable[[Progress], None] | None = None
    unsafe_truncate_embeddings: bool = False  # cut differing vocabularies to the smallest (same ids assumed)
    allow_unknown_keys: bool = False  # read by `load_config` callers; recorded in the result and the card
    mergekit_rounding: bool = False  # round intermediates to half precision as mergekit does (torch path)
    card_datasets: list[str] = field(default_factory=list)  # added to the card's `datasets:` (inherited ones)
    card_section: str = ""  # markdown appended to the card (the guard's contamination section)
    # called once the merge's work is under way (worker processes busy), so that a caller's own checks
    # overlap it; raising there aborts the merge and nothing is written
    on_started: Callable[[], None] | None = None


@dataclass
class MergeResult:
    """What was merged and written: enough for lineage records and a summary line."""

    out_dir: Path
    method: str
    models: dict[str, Path]
    parents: dict[str, dict[str, Any]]
    base_model: str | None
    tensors: int
    bytes: int
    seconds: float
    warnings: list[str] = field(default_factory=list)
    unknown_keys: list[str] = field(default_factory=list)  # ignored under --allow-unknown-keys (in the card)


def under_way(options: MergeOptions, models: dict[str, SourceModel], pool: WorkerPool) -> None:
    """The merge has started: run the caller's `on_started` and warm the model card writer's imports (the
    import would otherwise hold the GIL that the planning needs; the merge's reads and waits release it)."""
    if options.on_started is not None:
        options.on_started()
    if options.write_model_card:
        modules = ["huggingface_hub.repocard_data"]
        if any((model.path / "README.md").is_file() for model in models.values()):
            modules.append("huggingface_hub.repocard")  # reads the inputs' cards (`read_model_card`)
        pool.warm_imports(modules)
