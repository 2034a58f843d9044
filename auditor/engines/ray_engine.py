"""The Ray engine: the same tasks, run by Ray Data's `map_batches` on a Ray cluster.

The index goes into the object store once (`ray.put`; a worker process builds it from the arrays, read
zero-copy, on its first task); tasks go out in windows of Ray Datasets (`from_items` of the task
descriptors, one task per batch); results come back to the driver, which assembles them as the local
engines' are. Each task reads its own shard (a local file, or a URL through pyarrow's filesystems, which
Ray Data's readers use too): Ray Data's `read_parquet` does not keep the files' order (measured with
`preserve_order` on 40 files: 493 of 645 batches out of place), and a finding must name its row.

Ray Data runs its tasks with `max_retries=-1`: a task whose worker or node dies is run again elsewhere, and
it reads its shard (or takes its texts) from the start, so nothing is lost or counted twice. Without an
address a local Ray is started (and stopped at the end); with one, the driver joins that cluster, after
checking in seconds that its head answers.
"""

from __future__ import annotations

import pickle
import socket
from collections.abc import Iterator
from itertools import chain, islice
from typing import Any

from mergeguard.auditor.engines.shared_index import index_arrays, index_from_arrays
from mergeguard.auditor.engines.tasks import Job, Task, TaskResult, run_task
from mergeguard.auditor.index import BenchmarkIndex
from mergeguard.errors import MergeguardError

CONNECT_TIMEOUT = 3.0  # seconds for the cluster's head to answer before the audit gives up
# Tasks per Ray Dataset: many shards (descriptors are tiny; fewer windows, fewer pipeline drains), few chunks
# of texts (each window's texts wait in the object store).
SHARD_WINDOW, TEXT_WINDOW = 256, 16


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


# The index of this worker process, built from the object store on its first task: Ray reuses its worker
# processes, so each builds the index once per audit, not once per task (a build makes ~50k item records).
_WORKER_INDEX: dict[str, BenchmarkIndex] = {}


def _index(index_ref: list[Any]) -> BenchmarkIndex:
    import ray

    key = index_ref[0].hex()
    if key not in _WORKER_INDEX:
        _WORKER_INDEX.clear()  # one audit's index at a time
        _WORKER_INDEX[key] = index_from_arrays(*ray.get(index_ref[0]))
    return _WORKER_INDEX[key]


def _run_batch(batch: dict[str, Any], index_ref: list[Any], job: Job) -> dict[str, list[bytes]]:
    """Ray Data's function: each row is a pickled Task; each output row its pickled TaskResult."""
    index = _index(index_ref)
    return {"result": [pickle.dumps(run_task(pickle.loads(task), index, job)) for task in batch["task"]]}


class RayEngine:
    """Tasks run by Ray Data; see the module."""

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
        ray.data.DataContext.get_current().enable_progress_bars = False
        self.index_ref = [ray.put(index_arrays(index))]  # in a list: Ray passes it on, unresolved
        self.job = job

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
                _run_batch,
                batch_size=1,
                fn_kwargs={"index_ref": self.index_ref, "job": self.job},
            )
            for row in results.iter_rows():
                yield pickle.loads(row["result"])

    def close(self) -> None:
        import ray

        if self.started and ray.is_initialized():
            ray.shutdown()
