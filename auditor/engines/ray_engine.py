"""The Ray engine: Ray Data reads the datasets and runs the unit of work with `map_batches` on a cluster.

Parquet (local files, or any URL Ray reads: s3://, gs://, abfs://, file://, ...) and JSON Lines at a URL are
read by Ray Data itself (`read_parquet`, `read_json`), in order (`preserve_order`), and each batch of rows
goes to `ScanRows`, an actor that holds the index (put in the object store once, its arrays read
zero-copy). Other local sources (JSON Lines files, `save_to_disk` folders, hub streams) are read as the
local engines read them, so that a bad row is named by file and line: their tasks (shards, or chunks of
texts the driver read) go out in windows of Ray Datasets. Either way the results come back to the driver in
input order and are assembled as the local engines' are, so the findings are the same.

Ray Data retries a task whose worker or node dies and restarts the actors it lost (`max_restarts=-1`), and
a retried task reads its rows again from the start, so nothing is lost or counted twice. Without an address
a local Ray is started (and stopped at the end); with one, the driver joins that cluster, after checking in
seconds that its head answers.
"""

from __future__ import annotations

import pickle
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain, islice
from typing import Any

from mergeguard.auditor.datasets import ReadLog, check_text_field, example_text
from mergeguard.auditor.engines.reading import Scanned, checked_texts, data_files
from mergeguard.auditor.engines.shared_index import index_arrays, index_from_arrays
from mergeguard.auditor.engines.tasks import Job, Task, TaskResult, run_task
from mergeguard.auditor.engines.work import Partial, scan_batch
from mergeguard.auditor.index import BenchmarkIndex
from mergeguard.errors import DatasetError, MergeguardError

CONNECT_TIMEOUT = 3.0  # seconds for the cluster's head to answer before the audit gives up
# Tasks per Ray Dataset: many shards (descriptors are tiny; fewer windows, fewer pipeline drains), few chunks
# of texts (each window's texts wait in the object store).
SHARD_WINDOW, TEXT_WINDOW = 256, 16
JSON_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")


def check_address(address: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Fail at once, with one clear line, when the cluster's head does not answer at `address`
    (host:port, or ray://host:port); `auto` (the cluster this machine belongs to) is left to Ray."""
    if address == "auto":
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise MergeguardError(f"--ray-address {address} is not HOST:PORT", hint="e.g. 10.0.0.5:6379")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as error:
        raise MergeguardError(
            f"cannot reach a Ray cluster at {address} ({error.strerror or error})",
            hint="start one with `ray start --head`, or check the address and the firewall",
        ) from error


@dataclass(frozen=True)
class RaySource:
    """What Ray Data reads of a dataset: its paths (files, folders or URLs) and their format."""

    paths: list[str]
    format: str  # "parquet" or "json" (JSON Lines)


def ray_source(ref: str) -> RaySource | None:
    """A URL (JSON Lines by its suffix, else parquet: a file or a folder), or local parquet (a file, or a
    folder of parquet files only); None: the dataset is read as the local engines read it."""
    if "://" in ref:
        return RaySource([ref], "json" if ref.lower().endswith(JSON_SUFFIXES) else "parquet")
    files = data_files(ref)
    if files and all(file.name.lower().endswith(".parquet") for file in files):
        return RaySource([str(file) for file in files], "parquet")
    return None


# The index of this worker process, built from the object store on its first batch: Ray reuses its worker
# processes, so each builds the index once, not once per batch (a build allocates ~50k item records).
_WORKER_INDEX: dict[str, BenchmarkIndex] = {}


def _index(index_ref: list[Any]) -> BenchmarkIndex:
    import ray

    key = index_ref[0].hex()
    if key not in _WORKER_INDEX:
        _WORKER_INDEX.clear()  # one audit's index at a time
        _WORKER_INDEX[key] = index_from_arrays(*ray.get(index_ref[0]))
    return _WORKER_INDEX[key]


def _scan_rows(batch: Any, index_ref: list[Any], job: Job, ref: str) -> dict[str, list[bytes]]:
    """Ray Data's function for rows it read (a pyarrow table): their texts, checked and counted as the
    local reader checks them, and their partial; one output row, the pickled TaskResult."""
    read = Scanned(ref, ReadLog(ref, job.read.skip_bad_rows, job.read.max_line))
    options = job.read
    texts = (example_text(row, options.text_field, options.only_text_field) for row in batch.to_pylist())
    checked = list(checked_texts(read, texts, options, lambda n: f"row {n} of a batch read by Ray Data"))
    return {
        "result": [pickle.dumps(TaskResult(0, scan_batch(checked, _index(index_ref), job.containment), read))]
    }


def _run_tasks(batch: dict[str, Any], index_ref: list[Any], job: Job) -> dict[str, list[bytes]]:
    """Ray Data's function for the engines' tasks: each row a pickled Task, each output row its result."""
    index = _index(index_ref)
    return {"result": [pickle.dumps(run_task(pickle.loads(task), index, job)) for task in batch["task"]]}


class RayEngine:
    """Datasets read by Ray Data, or tasks run by it; see the module."""

    def __init__(self, index: BenchmarkIndex, job: Job, address: str | None, workers: int | None) -> None:
        import ray

        if address:
            check_address(address)
        self.started = not ray.is_initialized()
        if self.started:
            ray.init(
                address=address or "local",  # "local": a new Ray, even if this machine runs a cluster
                num_cpus=None if address else workers,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.execution_options.preserve_order = True  # results in input order: example numbers hold
        self.index_ref = [ray.put(index_arrays(index))]  # in a list: Ray passes it on, unresolved
        self.job = job

    def read(self, scanned: Scanned) -> Iterator[TaskResult] | None:
        """The dataset read by Ray Data (see `ray_source`), or None: it goes out as tasks (`map`)."""
        source = ray_source(scanned.ref)
        return None if source is None else self._read(source, scanned.ref)

    def _read(self, source: RaySource, ref: str) -> Iterator[TaskResult]:
        import ray

        reader = ray.data.read_parquet if source.format == "parquet" else ray.data.read_json
        extra = {"lines": True} if source.format == "json" else {}
        seq = 0
        try:
            data = reader(source.paths, **extra)
            files = len(_listed_files(source))
            self._check_text_field(data, ref)
            batches = data.map_batches(
                _scan_rows,
                batch_size=self.job.chunk,
                batch_format="pyarrow",
                fn_kwargs={"index_ref": self.index_ref, "job": self.job, "ref": ref},
            )
            for row in batches.iter_rows():
                result: TaskResult = pickle.loads(row["result"])
                result.seq = seq
                if result.read is not None:
                    result.read.log.files = files if seq == 0 else 0  # the dataset's files, counted once
                seq += 1
                yield result
        except Exception as error:  # noqa: BLE001 - whatever Ray Data met reading it: the dataset is incomplete
            yield _stopped(seq, ref, source, error)

    def _check_text_field(self, data: Any, ref: str) -> None:
        """A named text field must exist in the first rows (as the local reader checks it)."""
        named = self.job.read.only_text_field or self.job.read.text_field
        if named:
            flag = "--only-text-field" if self.job.read.only_text_field else "--text-field"
            check_text_field(data.take(20), named, ref, flag)

    def map(self, tasks: Iterator[Task]) -> Iterator[TaskResult]:
        import ray

        first = next(tasks, None)
        if first is None:
            return
        size = SHARD_WINDOW if first.shard is not None else TEXT_WINDOW
        tasks = chain([first], tasks)
        while window := list(islice(tasks, size)):
            rows = [{"task": pickle.dumps(task)} for task in window]
            data = ray.data.from_items(rows, override_num_blocks=len(rows))
            results = data.map_batches(
                _run_tasks, batch_size=1, fn_kwargs={"index_ref": self.index_ref, "job": self.job}
            )
            for row in results.iter_rows():
                yield pickle.loads(row["result"])

    def close(self) -> None:
        import ray

        if self.started and ray.is_initialized():
            ray.shutdown()


def _listed_files(source: RaySource) -> list[tuple[Any, str]]:
    """The data files Ray Data reads, with their filesystem (a folder listed as Ray Data lists it: by the
    format's suffixes)."""
    import pyarrow.fs as pafs

    suffixes = JSON_SUFFIXES if source.format == "json" else (".parquet",)
    files = []
    for where in source.paths:
        if "://" in where:
            filesystem, path = pafs.FileSystem.from_uri(where)
        else:
            filesystem, path = pafs.LocalFileSystem(), where
        if filesystem.get_file_info(path).type == pafs.FileType.File:
            files.append((filesystem, path))
            continue
        listed = filesystem.get_file_info(pafs.FileSelector(path, recursive=True))
        names = sorted(
            info.path for info in listed if info.is_file and info.base_name.lower().endswith(suffixes)
        )
        files += [(filesystem, name) for name in names]
    return files


def _first_unreadable(source: RaySource) -> str | None:
    """The first parquet file whose footer cannot be read (asked only once a read failed: Ray Data's
    error does not name the file)."""
    import pyarrow.parquet as pq

    if source.format != "parquet":
        return None
    for filesystem, path in _listed_files(source):
        try:
            pq.read_metadata(path, filesystem=filesystem)
        except Exception:  # noqa: BLE001 - any reason it cannot be read is the one to name
            return path
    return None


def _stopped(seq: int, ref: str, source: RaySource, error: Exception) -> TaskResult:
    """The result that ends a dataset Ray Data could not read to the end (the part read still counts)."""
    read = Scanned(ref, ReadLog(ref))
    if isinstance(error, DatasetError):
        read.error = str(error)
    else:
        lines = [line for line in str(error).splitlines() if line.strip()]
        cause = (lines[-1] if lines else type(error).__name__)[:300]
        broken = _first_unreadable(source)
        where = f" (file {broken})" if broken else ""
        read.error = f"dataset {ref}: Ray Data could not read it{where}: {cause}"
    return TaskResult(seq, Partial(), read)
