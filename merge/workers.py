"""The worker processes of the numpy merge loop, as one object that its caller owns: `WorkerPool`.

Processes, not threads: the kernels make thousands of short numpy calls, and two threads handing the GIL
back and forth run slower than one. A pool is sized from the cores this process may use. Its workers ignore
Ctrl-C and SIGTERM from their first instruction (the parent handles both and stops them) and die with
their parent, even one killed with kill -9 (`die_with_parent`). This module is what a spawned worker
imports: it stays light.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import TracebackType
from typing import Any

from mergeguard.merge.memory import die_with_parent, tune_malloc

try:
    import threadpoolctl
except ImportError:  # optional: without it, workers are spawned (a forked one would keep the BLAS threads)
    threadpoolctl = None  # type: ignore[assignment]

START_METHODS = ("fork", "spawn")
STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
"""The parent's to handle (Ctrl-C reaches the whole process group, and so may a service manager's SIGTERM):
the workers ignore them, and the parent stops them."""


def machine_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it, else all of them)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


class WorkerPool:
    """Worker processes for merges, started on demand or early (`start`), stopped by `close` (or `with`).

    workers: how many processes (default: `machine_cores()`); fewer than 2 means the merge runs in the
    calling process. start_method: "fork" or "spawn"; None chooses when the workers start: fork only from
    a one-thread process on Linux, else spawn (`can_fork`). A pool serves one merge at a time; the engine
    stops its processes when a merge ends, and the pool starts fresh ones for the next merge.
    """

    def __init__(self, workers: int | None = None, start_method: str | None = None) -> None:
        if start_method is not None and start_method not in START_METHODS:
            raise ValueError(f"start_method must be one of {START_METHODS} or None, not {start_method!r}")
        self.workers = machine_cores() if workers is None else workers
        self.start_method = start_method
        self.jobs_submitted = 0
        self._executor: ProcessPoolExecutor | None = None
        self._warming: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._executor is not None

    def start(self) -> None:
        """Start the worker processes now (no-op when started, or with fewer than two workers), so that their
        start overlaps the caller's other work (a spawned worker imports numpy first)."""
        if self._executor is None and self.workers > 1:
            method = self.start_method or ("fork" if can_fork() else "spawn")
            with _stop_signals_held():
                self._executor = _new_executor(self.workers, method)

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run fn(*args) in a worker (starting the workers if needed)."""
        self.start()
        if self._executor is None:
            raise ValueError(f"a pool of {self.workers} worker runs nothing: use the calling process")
        self.jobs_submitted += 1
        return self._executor.submit(fn, *args)

    def close(self, wait_running: bool = False) -> None:
        """Stop the workers, dropping queued jobs; `wait_running` waits for running ones (which may write)."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=wait_running, cancel_futures=True)

    def cancel(self, futures: Iterable[Future[Any]]) -> None:
        """Cancel the jobs not yet running and stop the workers, after waiting for the running ones."""
        pending = list(futures)
        for future in pending:
            future.cancel()
        self.close(wait_running=bool(pending))

    def warm_imports(self, modules: list[str]) -> None:
        """Import `modules` in a background thread while the workers compute (the model card's, written at
        the end); the reads and waits of the merge release the GIL that the import needs."""
        if self._warming is not None and self._warming.is_alive():
            return
        self._warming = threading.Thread(target=_import_quietly, args=(modules,), daemon=True)
        self._warming.start()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def _import_quietly(modules: list[str]) -> None:
    """Import `modules`; a failure is left for the real import to report."""
    for module in modules:
        if module in sys.modules:
            continue
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - reported by the foreground import
            return


def can_fork() -> bool:
    """Whether fork may start the workers: a one-thread process on Linux, with threadpoolctl to limit BLAS.

    A forked worker is ready in milliseconds with numpy and the kernels already imported; a spawned one
    imports them first. Forking a process with other threads running (Python's, or native ones such as an
    OpenMP pool) can deadlock the child on a lock held at the fork; OpenBLAS's pool is the one exception
    (`blas_pool_threads`).
    """
    if not sys.platform.startswith("linux") or threadpoolctl is None or threading.active_count() > 1:
        return False
    native = os_threads()
    return native == 1 or native - blas_pool_threads() == 1


def blas_pool_threads() -> int:
    """The threads of OpenBLAS's own pthreads pool in this process (numpy's BLAS, started when numpy is
    imported). They do not forbid a fork: OpenBLAS stops its pool before any fork (a pthread_atfork
    handler) and restarts it when next needed, so no lock of theirs is held in the child."""
    if threadpoolctl is None or "numpy" not in sys.modules:
        return 0
    return sum(
        max(0, int(info["num_threads"]) - 1)  # the calling thread is the pool's first
        for info in threadpoolctl.threadpool_info()
        if info.get("internal_api") == "openblas" and info.get("threading_layer") == "pthreads"
    )


def os_threads() -> int:
    """This process's threads as the kernel counts them (native ones included)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 2  # unknown: assume threads, and spawn


@contextmanager
def _stop_signals_held() -> Iterator[None]:
    """`STOP_SIGNALS` ignored and blocked in this thread while it starts children, which inherit both (a
    spawned child keeps only the ignoring: multiprocessing unblocks them when it starts its resource
    tracker). Blocked, a signal that arrives meanwhile stays pending here and is handled once the
    handlers are back, instead of being lost."""
    mask = (
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS) if hasattr(signal, "pthread_sigmask") else None
    )
    saved: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
        saved = {number: signal.signal(number, signal.SIG_IGN) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in saved.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _new_executor(count: int, method: str) -> ProcessPoolExecutor:
    """`count` processes started now (each by a first job), with a single-threaded BLAS each."""
    forked = method == "fork"
    with nullcontext() if forked else _spawn_environment():
        executor = ProcessPoolExecutor(
            count,
            mp_context=multiprocessing.get_context(method),
            initializer=_worker_init,
            initargs=(forked, os.getpid()),
        )
        for _ in range(count):  # starts a process per call, without waiting
            executor.submit(os.getpid)
    return executor


@contextmanager
def _spawn_environment() -> Iterator[None]:
    """No `__main__` script path while workers spawn: a script run as __main__ (the `mergeguard` console
    script) would be re-run in every worker, importing the whole CLI; the jobs need only mergeguard's."""
    main = sys.modules["__main__"]
    script = main.__dict__.pop("__file__", None) if getattr(main, "__spec__", None) is None else None
    try:
        yield
    finally:
        if script is not None:
            main.__file__ = script


def _worker_init(forked: bool = False, parent: int | None = None) -> None:
    """A worker's first steps: die with the parent, one BLAS thread, and the parent's signals ignored."""
    if parent is not None:
        die_with_parent(parent)  # first: a worker must never outlive a parent killed with kill -9
    os.environ["OPENBLAS_NUM_THREADS"] = "1"  # read when this worker imports numpy (a spawned one does)
    if forked and threadpoolctl is not None:  # numpy's BLAS came with the parent, with its thread count
        threadpoolctl.threadpool_limits(1, user_api="blas")
    tune_malloc()
    for number in STOP_SIGNALS:  # the parent's to handle: it stops the workers
        signal.signal(number, signal.SIG_IGN)  # (a signal held back since the start is dropped)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
