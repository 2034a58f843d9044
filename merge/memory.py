"""glibc malloc settings for merges: big freed blocks go back to the system, block-sized ones stay."""

from __future__ import annotations


def tune_malloc() -> None:
    """Ask glibc to serve big blocks with mmap and keep few arenas, so freed tensors leave the process.

    Without this, freed multi-megabyte tensors stay in malloc's heaps and the peak RSS of a merge grows
    by a few hundred MB (measured: ties on 350M-parameter models, 985 MB -> 807 MB).
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD: 1 MiB (also stops the dynamic threshold growing)
        libc.mallopt(-8, 2)  # M_ARENA_MAX
        # M_TRIM_THRESHOLD: keep up to 64 MiB of freed heap (the numpy kernels' block-sized temporaries)
        # instead of returning it and faulting it back in on the next block (measured: 2 s of system time)
        libc.mallopt(-1, 64 << 20)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return
