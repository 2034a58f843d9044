"""Process settings of a merge through libc: glibc malloc tuned so that big freed blocks go back to the
system while block-sized ones stay, and worker processes that die with their parent."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1


def tune_malloc() -> None:
    """Ask glibc to serve big blocks with mmap and keep few arenas, so freed tensors leave the process.

    Without this, freed multi-megabyte tensors stay in malloc's heaps and the peak RSS of a merge grows
    by a few hundred MB (README, Performance).
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: 1 MiB (also stops the dynamic threshold growing)
        libc.mallopt(-8, 2)  # M_ARENA_MAX
        # M_TRIM_THRESHOLD: keep up to 64 MiB of freed heap (the numpy kernels' block-sized temporaries)
        # instead of returning it and faulting it back in on the next block (system time: README, Performance)
        libc.mallopt(-1, 64 << 20)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return


def die_with_parent(parent: int) -> None:
    """End this (worker) process when `parent` ends, even by kill -9, which runs no cleanup in the parent:
    an orphaned worker would otherwise wait for work forever. On Linux the kernel sends SIGKILL
    (prctl PR_SET_PDEATHSIG); elsewhere a daemon thread watches the parent id. Call it in the child."""
    guarded = False
    if sys.platform.startswith("linux"):
        try:
            guarded = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            guarded = False
    if os.getppid() != parent:  # the parent ended before the guard was in place
        os._exit(1)
    if not guarded:
        threading.Thread(target=_watch_parent, args=(parent,), name="mergeguard-parent", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)
