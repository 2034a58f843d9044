"""The benchmark index as flat arrays that many processes can share read-only.

The local engine writes them once as `.npy` files and every worker memory-maps them (the pages are the OS
page cache's, one copy however many workers); the Ray engine puts the same arrays in the object store once
(Ray hands numpy arrays to tasks zero-copy). Lookup tables that detection would otherwise build per process
(the n-gram bitmaps, the MinHash permutations) are built here, once, and shared too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from mergeguard.auditor import signatures as sig
from mergeguard.auditor.index import BenchmarkIndex, ItemRef

META = "meta.json"
_META_FIELDS = ("num_perm", "seed", "ngram", "index_hash", "benchmarks")
_LOOKUPS = ("_perms", "_bitmap", "_exact_bitmap")  # built on first use by detection: built once here
KEY_HASHES = "_key_hashes"  # each unit's whole-key hash, which every scanner would otherwise compute


def index_arrays(index: BenchmarkIndex) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The index as (named arrays, JSON metadata): everything detection reads, no benchmark text."""
    index.in_bench(np.empty(0, np.uint32))  # builds the bitmaps
    index.exact_hits(np.empty(0, np.uint32))
    _ = index.perms
    arrays: dict[str, np.ndarray] = {}
    for spec in fields(index):
        value = getattr(index, spec.name)
        if isinstance(value, np.ndarray):
            arrays[spec.name] = value
        elif isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], np.ndarray):
            arrays[f"{spec.name}.ptr"], arrays[f"{spec.name}.data"] = value
    for klass, (keys, items) in index.tables.items():
        arrays[f"table.{klass}.keys"], arrays[f"table.{klass}.items"] = keys, items
    arrays[KEY_HASHES] = key_hashes(index)
    meta = {name: getattr(index, name) for name in _META_FIELDS}
    meta["refs"] = [list(vars(ref).values()) for ref in index.refs]
    meta["class_min"] = {str(k): v for k, v in index.class_min.items()}
    return arrays, meta


def index_from_arrays(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> BenchmarkIndex:
    """The index back from `index_arrays`' output (the arrays are used as they are: mapped or shared)."""
    plain, pairs = {}, {}
    for spec in fields(BenchmarkIndex):
        if spec.name in arrays:
            plain[spec.name] = arrays[spec.name]
        elif f"{spec.name}.ptr" in arrays:
            pairs[spec.name] = (arrays[f"{spec.name}.ptr"], arrays[f"{spec.name}.data"])
    lookups = {name: arrays[name] for name in (*_LOOKUPS, KEY_HASHES) if name in arrays}
    plain = {name: value for name, value in plain.items() if name not in lookups}
    index = BenchmarkIndex(
        refs=[ItemRef(*row) for row in meta["refs"]],
        tables={int(k): (arrays[f"table.{k}.keys"], arrays[f"table.{k}.items"]) for k in meta["class_min"]},
        class_min={int(k): v for k, v in meta["class_min"].items()},
        **{name: meta[name] for name in _META_FIELDS},
        **plain,
        **pairs,
    )
    for name, value in lookups.items():
        setattr(index, name, value)
    return index


def key_hashes(index: BenchmarkIndex) -> np.ndarray:
    """Each unit's whole-key hash, as the scanner computes it (`sig.run_hashes` of its key words): shared,
    it costs one computation and one copy instead of one per batch (and a power table per process)."""
    shared = getattr(index, KEY_HASHES, None)
    if shared is not None:
        return shared
    ptr, data = index.key_words
    return sig.run_hashes(data.astype(np.uint64), ptr[:-1], ptr[1:] - ptr[:-1])


def export_index(index: BenchmarkIndex, folder: Path) -> Path:
    """Write the index's arrays as `.npy` files under `folder/<index hash>` (once: an existing complete
    copy is reused; a new one is written to a temporary folder and renamed into place)."""
    target = Path(folder) / index.index_hash
    if (target / META).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        arrays, meta = index_arrays(index)
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array))
        (tmp / META).write_text(json.dumps(meta))
        with contextlib.suppress(OSError):  # another process wrote it first
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def open_index(folder: Path) -> BenchmarkIndex:
    """The index written by `export_index`, its arrays memory-mapped read-only (shared, never copied)."""
    folder = Path(folder)
    meta = json.loads((folder / META).read_text())
    arrays = {path.name[:-4]: _mapped(path) for path in folder.glob("*.npy")}
    return index_from_arrays(arrays, meta)


def _mapped(path: Path) -> np.ndarray:
    """One array memory-mapped read-only (an empty one, which cannot be mapped, read as it is)."""
    try:
        return np.load(path, mmap_mode="r")
    except ValueError:
        return np.load(path)
