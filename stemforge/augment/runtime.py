"""Process set-up for augmentation workers (DataLoader workers, benchmarks).

:func:`configure_worker` pins OpenCV's and the BLAS/OpenMP thread pools to one
thread (one worker process per core is the efficient layout for this per-sample
CPU work) and, on glibc, raises ``malloc``'s mmap and trim thresholds so that
freed image-sized buffers stay in the heap instead of being unmapped and faulted
in again.  The pipeline allocates a few dozen 64-1024 KB temporaries per
pattern.  With glibc's defaults, whether these are served from the heap depends
on the dynamic mmap threshold, i.e. on the process's allocation history: on the
2-core VM of benchmarks/RESULTS.md the default preset ran at either ~465 or
~330 patterns/s/core (~90k vs ~770k minor page faults per 2,500 patterns) for
the same code; with the tuning it runs at ~480 every time.  The cost is a
process that keeps up to ~64 MB of freed memory for reuse.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from typing import Any

import cv2

__all__ = ["configure_worker"]

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def _tune_glibc_malloc(keep_bytes: int = 64 << 20) -> bool:
    """Raise glibc's mmap/trim thresholds; return False where not glibc (nothing changed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, keep_bytes) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, 4 * keep_bytes) == 1
    ok &= mallopt(_M_TOP_PAD, keep_bytes) == 1
    return bool(ok)


def configure_worker(threads: int = 1, tune_malloc: bool = True) -> dict[str, Any]:
    """Prepare the current process to run augmentation pipelines.

    Call it once per process, e.g. in a ``torch.utils.data.DataLoader``
    ``worker_init_fn`` (together with :func:`stemforge.augment.reseed`).

    Parameters
    ----------
    threads : int
        Threads for OpenCV and for BLAS/OpenMP pools (via threadpoolctl when
        installed).
    tune_malloc : bool
        Raise glibc's mmap and trim thresholds (no effect elsewhere; see the
        module docstring).

    Returns
    -------
    dict
        What was done: ``{"threads": int, "malloc_tuned": bool}``.
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"configure_worker: threads must be a positive int, got {threads!r}")
    cv2.setNumThreads(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:  # optional dependency
        pass
    return {"threads": threads, "malloc_tuned": _tune_glibc_malloc() if tune_malloc else False}
