"""Which stored audit a merge may reuse: a key that hashes everything an audit of its inputs reads.

Equal keys, equal audits: the guard hands back the stored report instead of auditing again (README, "Audit
reuse"). Cheap evidence only (hashes of small files, listings of folders), never the weights themselves.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mergeguard import __version__
from mergeguard.auditor.lineage import resolve_lineage
from mergeguard.auditor.options import AuditOptions
from mergeguard.evaluation.fingerprint import weights_info
from mergeguard.paths import benchmarks_dir


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stat_tree(root: Path, limit: int = 5000) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime) of the files under `root`: cheap evidence that nothing changed."""
    out = []
    for path in sorted(root.rglob("*"))[:limit]:
        if path.is_file():
            stat = path.stat()
            out.append((path.relative_to(root).as_posix(), stat.st_size, stat.st_mtime_ns))
    return out


def _dataset_state(ref: str, declared_by: Path | None) -> Any:
    """What a dataset reference points at now: a file's hash, a folder's listing, or the bare hub id."""
    for candidate in (Path(ref).expanduser(), (declared_by / ref) if declared_by else None):
        if candidate is None or not candidate.exists():
            continue
        if candidate.is_file():
            return ["file", str(candidate.resolve()), _sha256_file(candidate)]
        return ["dir", str(candidate.resolve()), _stat_tree(candidate)]
    return ["ref", ref]


def _benchmark_state(audit_options: AuditOptions) -> Any:
    """The benchmark data an audit would index: local files by listing, custom specs by content."""
    folder = benchmarks_dir(audit_options.benchmarks_dir)
    state: dict[str, Any] = {
        "names": audit_options.benchmarks,
        "dir": [str(folder.resolve()), _stat_tree(folder)] if folder and folder.is_dir() else None,
        "custom": [],
    }
    for spec in audit_options.custom_specs or []:
        spec = Path(spec)
        state["custom"].append(
            [str(spec.resolve()), _sha256_file(spec), _stat_tree(spec.parent)]
            if spec.is_file()
            else str(spec)
        )
    return state


def audit_key(models: list[str], audit_options: AuditOptions) -> str:
    """A hash of everything an audit of `models` reads: each model's weights fingerprint and card, every
    dataset in its lineage, the benchmark data and the thresholds. Equal keys, equal audits."""
    parts: list[Any] = [__version__, audit_options.thresholds, audit_options.text_field]
    if audit_options.only_text_field:
        parts.append(audit_options.only_text_field)
    parts.append(_benchmark_state(audit_options))
    for ref in models:
        lineage = resolve_lineage(ref, audit_options.dataset_overrides)
        folder = lineage.folder
        info = weights_info(folder) if folder is not None else None
        card = folder / "README.md" if folder is not None else None
        parts.append(
            [
                ref,
                info.fingerprint if info else None,
                _sha256_file(card) if card is not None and card.is_file() else None,
                lineage.ancestors,
                [[d.ref, d.declared_by, _dataset_state(d.ref, folder)] for d in lineage.datasets],
            ]
        )
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
