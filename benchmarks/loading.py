"""Loading a benchmark's rows, from a local folder or the Hugging Face hub, into normalized items.

A local folder is laid out like `../shared/data/hf`: `<dir>/<benchmark>/<split>.<ext>` (BBH and MuSR: one file
per subtask, `<dir>/<benchmark>/<subtask>.<ext>`), ext one of `.jsonl`, `.jsonl.gz`, `.json`, `.parquet`,
`.csv`, rows in the hub schema. The local copy wins over the hub. The hub path goes through
`datasets.load_dataset(id, config, split=...)`, which also serves the local HF cache offline.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergeguard import paths
from mergeguard.benchmarks.custom import custom_item, load_custom_spec
from mergeguard.benchmarks.items import ITEMS_VERSION, Item, RowContext, converter
from mergeguard.benchmarks.registry import REGISTRY, BenchmarkSpec, get_spec, suite_names
from mergeguard.errors import BenchmarkError, MergeguardError

EXTENSIONS = (".jsonl", ".jsonl.gz", ".json", ".parquet", ".csv")

Row = dict[str, Any]


@dataclass
class LoadedBenchmark:
    """A benchmark's items and where they came from; `content_hash` changes when the data or the
    row-to-item conversion does (the auditor keys its index cache on it)."""

    spec: BenchmarkSpec
    items: list[Item]
    source: str
    content_hash: str
    files: list[Path] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.spec.name


# ---------------------------------------------------------------- local files


def _file_stems(spec: BenchmarkSpec) -> list[tuple[str, str | None]]:
    """(file stem, subset) per expected local file, in item order."""
    if spec.subsets:
        return [(subset, subset) for subset in spec.subsets]
    return [(spec.split, None)]


def _find_file(folder: Path, stem: str) -> Path | None:
    for ext in EXTENSIONS:
        candidate = folder / f"{stem}{ext}"
        if candidate.is_file():
            return candidate
    return None


def _expected_names(spec: BenchmarkSpec) -> str:
    stems = [stem for stem, _ in _file_stems(spec)]
    shown = stems[0] if len(stems) == 1 else f"<{'|'.join(stems[:3])}{'|...' if len(stems) > 3 else ''}>"
    return f"{shown}{{{','.join(EXTENSIONS)}}}"


def _spec_local_files(spec: BenchmarkSpec, benchmarks_dir: Path | None) -> list[Path]:
    if spec.data_files:
        return [Path(name) for name in spec.data_files]
    if benchmarks_dir is None:
        return []
    folder = Path(benchmarks_dir) / spec.name
    if not folder.is_dir():
        return []
    found = [(stem, _find_file(folder, stem)) for stem, _ in _file_stems(spec)]
    present = [path for _, path in found if path is not None]
    missing = [stem for stem, path in found if path is None]
    if present and missing:
        raise BenchmarkError(
            f"{spec.name}: {folder} has {len(present)} of its {len(found)} files; missing: "
            f"{', '.join(missing)}",
            hint=f"add the missing files as <name>{{{','.join(EXTENSIONS)}}} or remove the folder",
        )
    return present


def local_files(name: str, benchmarks_dir: Path) -> list[Path]:
    """The benchmark's split files under `benchmarks_dir` (BBH: 27 files), [] when there is no local copy."""
    return _spec_local_files(get_spec(name), benchmarks_dir)


def _json_lines(data: bytes) -> list[Row]:
    # split on b"\n" only: str.splitlines() would also cut at U+2028 and friends inside strings
    lines = [line for line in data.split(b"\n") if line.strip()]
    try:  # one parse of a JSON array is faster than a parse per line (README, "Performance")
        rows = json.loads(b"[" + b",".join(lines) + b"]")
    except ValueError:  # find the bad line for the message
        rows = None
    if isinstance(rows, list) and len(rows) == len(lines):
        return rows
    return [_json_line(number, line) for number, line in enumerate(data.split(b"\n"), 1) if line.strip()]


def _json_line(number: int, line: bytes) -> Row:
    """One JSON line; an error names the file's line, not the position inside the joined array."""
    try:
        return json.loads(line)
    except UnicodeDecodeError as error:
        raise ValueError(f"line {number} is not UTF-8 text (byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"line {number} is not JSON ({error.msg} at column {error.colno})") from None


def _decode(path: Path, data: bytes) -> list[Row]:
    """Rows of one data file; `data` is its raw bytes (already read for hashing)."""
    name = path.name.lower()
    try:
        if name.endswith(".gz"):
            data = gzip.decompress(data)
            name = name[:-3]
        if name.endswith(".jsonl"):
            return _json_lines(data)
        if name.endswith(".json"):
            text = data.decode("utf-8")
            try:
                loaded = json.loads(text)
            except json.JSONDecodeError:  # datasets' to_json writes JSON lines under a .json name
                return _json_lines(data)
            if isinstance(loaded, dict):
                loaded = loaded.get("data", loaded.get("rows", [loaded]))
            if not isinstance(loaded, list):
                raise ValueError(f"it holds a JSON {type(loaded).__name__} where a list of rows belongs")
            return loaded
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            return pq.read_table(io.BytesIO(data)).to_pylist()
        if name.endswith(".csv"):
            return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    except (ValueError, OSError, EOFError) as error:  # EOFError: a truncated .gz
        raise BenchmarkError(
            f"cannot read {path}: {error}", hint="the file must be rows in the benchmark's hub schema"
        ) from None
    raise BenchmarkError(f"unsupported data file {path}", hint=f"use one of {', '.join(EXTENSIONS)}")


def _hash_start(spec: BenchmarkSpec) -> Any:
    digest = hashlib.sha256()
    recipe = [ITEMS_VERSION, spec.name, spec.format, spec.row_filter, spec.fields]
    digest.update(json.dumps(recipe, default=str).encode())
    return digest


def _load_local(spec: BenchmarkSpec, files: list[Path]) -> LoadedBenchmark:
    digest = _hash_start(spec)
    subsets: Sequence[str | None] = (
        [subset for _, subset in _file_stems(spec)] if spec.subsets else [None] * len(files)
    )
    parts: list[tuple[str, str | None, list[Row]]] = []
    for path, subset in zip(files, subsets, strict=True):
        if not path.is_file():
            raise BenchmarkError(
                f"{spec.name}: data file {path} does not exist", hint="fix the path in the benchmark spec"
            )
        data = path.read_bytes()
        digest.update(f"\0{path.name}\0{len(data)}\0".encode())
        digest.update(data)
        split = subset if spec.subsets_from == "split" and subset else spec.split
        parts.append((split, subset, _decode(path, data)))
    items = _to_items(spec, parts)
    source = str(files[0].parent) if len({f.parent for f in files}) == 1 else ", ".join(map(str, files))
    return LoadedBenchmark(spec, items, source, digest.hexdigest(), list(files))


# ---------------------------------------------------------------- rows -> items


def _keep(spec: BenchmarkSpec, row: Row) -> bool:
    return all(str(row.get(key)) == value for key, value in spec.row_filter)


def _to_items(spec: BenchmarkSpec, parts: Iterable[tuple[str, str | None, list[Row]]]) -> list[Item]:
    """Convert rows; the index counts kept rows within each file/subtask (as lm-eval's doc_id does)."""
    if spec.is_custom:

        def convert(row: Row, ctx: RowContext) -> Item:
            return custom_item(spec, row, ctx)
    else:
        convert = converter(spec.format)
    items: list[Item] = []
    for split, subset, rows in parts:
        kept = [row for row in rows if _keep(spec, row)] if spec.row_filter else rows
        for index, row in enumerate(kept):
            try:
                items.append(convert(row, RowContext(spec.name, split, index, subset)))
            except MergeguardError:
                raise
            except (KeyError, TypeError, ValueError, SyntaxError) as error:
                raise BenchmarkError(
                    f"{spec.name}: row {index}{f' of {subset}' if subset else ''} does not fit the "
                    f"{spec.format} schema ({type(error).__name__}: {error})",
                    hint=f"the rows must be {spec.hf_id or 'the spec'}'s hub schema",
                ) from None
    return items


# ---------------------------------------------------------------- hub


def hub_load_dataset(path: str, name: str | None, split: str) -> Iterable[Row]:
    """`datasets.load_dataset(path, name, split=split)`; the one call that reaches the hub (tests redirect
    it to a local data file). Fails fast when the hub is unreachable and the HF cache lacks the dataset,
    instead of waiting out datasets' retries for every benchmark."""
    if not hub_cache_hit(path) and not hub_reachable():
        raise ConnectionError("huggingface.co is not reachable and the dataset is not in the HF cache")
    import datasets

    return datasets.load_dataset(path, name, split=split)


_REACHABLE: dict[str, bool] = {}


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether huggingface.co answers a TCP connect (asked once per process; offline env vars say no)."""
    if "hub" not in _REACHABLE:
        offline = any(os.environ.get(var, "").lower() in ("1", "true", "yes") for var in _OFFLINE_VARS)
        if offline:
            _REACHABLE["hub"] = False
        elif any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY")):
            _REACHABLE["hub"] = True  # behind a proxy a direct probe says nothing; let datasets try
        else:
            host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
            try:
                socket.create_connection((host.split(":")[0], 443), timeout=timeout).close()
                _REACHABLE["hub"] = True
            except OSError:
                _REACHABLE["hub"] = False
    return _REACHABLE["hub"]


_OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def hub_cache_hit(hf_id: str) -> bool:
    """Whether the HF caches hold this dataset (checked without importing datasets)."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")).expanduser()
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets")).expanduser()
    hub_cache = Path(os.environ.get("HF_HUB_CACHE", home / "hub")).expanduser()
    return (datasets_cache / hf_id.replace("/", "___")).is_dir() or (
        hub_cache / f"datasets--{hf_id.replace('/', '--')}"
    ).is_dir()


def _load_hub(spec: BenchmarkSpec) -> LoadedBenchmark:
    digest = _hash_start(spec)
    parts: list[tuple[str, str | None, list[Row]]] = []
    for config, split, subset in spec.hub_parts():
        rows = [dict(row) for row in hub_load_dataset(spec.hf_id, config, split)]
        for row in rows:
            digest.update(json.dumps(row, sort_keys=True, default=str, ensure_ascii=False).encode())
            digest.update(b"\n")
        item_split = subset if spec.subsets_from == "split" and subset else split
        parts.append((item_split, subset, rows))
    return LoadedBenchmark(spec, _to_items(spec, parts), f"hub:{spec.hf_id}", digest.hexdigest(), [])


# ---------------------------------------------------------------- public entry points


def _resolve_dir(benchmarks_dir: Path | None) -> Path | None:
    return Path(benchmarks_dir) if benchmarks_dir is not None else paths.benchmarks_dir(None)


def load_spec(
    spec: BenchmarkSpec, benchmarks_dir: Path | None = None, *, use_hub: bool = True
) -> LoadedBenchmark:
    """Load one benchmark described by `spec` (registry or custom): local copy first, then the hub."""
    folder = _resolve_dir(benchmarks_dir)
    files = _spec_local_files(spec, folder)
    if files:
        return _load_local(spec, files)
    looked = f"{folder / spec.name}/{_expected_names(spec)}" if folder else "no local folder set"
    how = (
        f"put the rows at <DIR>/{spec.name}/{_expected_names(spec)} and pass --benchmarks-dir DIR "
        f"(or set {paths.BENCHMARKS_DIR_ENV})"
    )
    if spec.is_custom or not spec.hf_id:
        raise BenchmarkError(f"{spec.name}: no data files found ({looked})", hint=how)
    if not use_hub:
        raise BenchmarkError(f"{spec.name} is not available locally ({looked}); hub not tried", hint=how)
    try:
        return _load_hub(spec)
    except MergeguardError:
        raise
    except Exception as error:  # datasets raises many kinds: network, gated repo, missing config
        reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise BenchmarkError(
            f"{spec.name} is not available: local: {looked}; hub {spec.hf_id}: {reason}",
            hint=f"{how}, or make the hub reachable (`huggingface-cli login` for gated sets)",
        ) from None


def load_benchmark(name: str, benchmarks_dir: Path | None = None, *, use_hub: bool = True) -> LoadedBenchmark:
    """Load a registered benchmark: the local folder (`benchmarks_dir`, default $MERGEGUARD_BENCHMARKS_DIR)
    wins over the hub."""
    return load_spec(get_spec(name), benchmarks_dir, use_hub=use_hub)


def _wanted(names: list[str] | None, custom: Sequence[BenchmarkSpec]) -> list[BenchmarkSpec]:
    by_name = {spec.name: spec for spec in custom}
    if names is None:
        return [*REGISTRY.values(), *(spec for spec in custom if spec.name not in REGISTRY)]
    chosen: list[BenchmarkSpec] = []
    for name in names:
        if name in by_name:
            chosen.append(by_name[name])
        elif name in ("v1", "v2", "all"):
            chosen.extend(get_spec(member) for member in suite_names(name))
        else:
            chosen.append(get_spec(name))
    unique: dict[str, BenchmarkSpec] = {}
    for spec in chosen:
        unique.setdefault(spec.name, spec)
    return list(unique.values())


def load_benchmarks(
    names: list[str] | None,
    benchmarks_dir: Path | None,
    custom_specs: Sequence[Path] = (),
    *,
    use_hub: bool = True,
) -> tuple[list[LoadedBenchmark], list[str]]:
    """Load several benchmarks (None: every registered one plus the custom ones; names may also be a suite:
    v1, v2, all). Returns (loaded, problems): an unavailable benchmark becomes a one-line problem and the
    others still load. Unknown names and unreadable custom spec files raise."""
    custom = [spec for path in custom_specs for spec in load_custom_spec(Path(path))]
    loaded: list[LoadedBenchmark] = []
    problems: list[str] = []
    for spec in _wanted(names, custom):
        try:
            loaded.append(load_spec(spec, benchmarks_dir, use_hub=use_hub))
        except BenchmarkError as error:
            problems.append(str(error))
    return loaded, problems


def spec_status(spec: BenchmarkSpec, benchmarks_dir: Path | None) -> tuple[bool, str]:
    """(available?, where it would load from) without loading it or touching the network."""
    folder = _resolve_dir(benchmarks_dir)
    try:
        files = _spec_local_files(spec, folder)
    except BenchmarkError as error:
        return False, error.message
    if files:
        if spec.data_files:
            return all(path.is_file() for path in files), ", ".join(map(str, files))
        return True, str(files[0].parent)
    if spec.is_custom or not spec.hf_id:
        return False, "no data files"
    if hub_cache_hit(spec.hf_id):
        return True, f"hub:{spec.hf_id} (cached)"
    return False, f"hub:{spec.hf_id} (not cached: needs the network)"


def benchmark_status(name: str, benchmarks_dir: Path | None) -> tuple[bool, str]:
    """(available?, where it would load from): a local folder, the HF cache, or the hub (not reachable
    offline, so reported as unavailable)."""
    return spec_status(get_spec(name), benchmarks_dir)
