"""CPU process settings that make large-tensor training faster.

:func:`tune_cpu_allocator` is the one knob here. Why it matters: glibc's malloc serves every request
at or above its mmap threshold (128 KiB at start, raised dynamically up to 32 MiB on 64-bit) with a
fresh ``mmap`` and returns it with ``munmap`` on free. A [64, 1024, 128] float32 tensor is 32 MiB, so
on CPU every such activation and gradient is mapped afresh and page-faulted in (the kernel zeroes
each 4 KiB page) on each training step; at those sizes the process spends about as much time in the
kernel as in its own arithmetic. Raising the mmap threshold to 1 GiB makes malloc serve them from
its heap, and raising the trim threshold keeps the freed heap pages mapped for the next step, so
the pages are faulted in once per process instead of once per allocation.

The cost: freed memory stays with the process (its resident set does not shrink after a peak) until
``malloc_trim`` is called. The setting is process-wide, so benchmarks that apply it apply it to
every contestant alike.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt parameters (glibc <malloc.h>)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # 1 GiB: larger requests (rare) are still mmapped
TRIM_THRESHOLD = (1 << 31) - 1  # the parameter is an int: 2 GiB - 1 of free heap top before trimming

_applied = False


def tune_cpu_allocator() -> bool:
    """Raise glibc malloc's mmap and trim thresholds (see the module docstring); True when applied.

    glibc (Linux) only: elsewhere (macOS, Windows, musl) it does nothing and returns False.
    Idempotent: a second call returns True without calling mallopt again. It affects the whole
    process (every allocation through malloc, torch's CPU tensors included) and cannot be undone
    by this module; call it once, early, e.g. at the start of a training entry point.
    """
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error.
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    _applied = ok
    return ok
