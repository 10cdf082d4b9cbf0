"""The C allocator's settings for CPU training (glibc only).

PyTorch's CPU tensors come from ``malloc``. glibc serves a block larger than its mmap threshold with a fresh
``mmap`` and returns it to the system when it is freed; the threshold adapts to what a program frees, but never
above 32 MiB on 64-bit systems. The activations of a convolutional step on a batch of 256 are larger than that
(the plain CNN's first feature map on TC's 60x60 input is 118 MB), so every step maps them again and the kernel
zeroes every page on first touch: about a gigabyte of page faults per step for that model, a third of its time
(``benchmarks/bench_train.py --candidates`` times it). :func:`keep_freed_memory` has glibc serve every block from
its heap and keep what is freed for the next step; the arithmetic is untouched, only where the bytes live. The
cost is that the process keeps its peak memory until it exits (a training process's peak is reached in its
first step anyway).

``torchstn train`` calls it for training on the CPU unless ``TORCHSTN_MALLOC=system``; a program that trains with
:func:`torchstn.train.train` in its own process may call it itself. The environment variables
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<bytes>`` do the same for any program.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from functools import cache

__all__ = ["keep_freed_memory", "mallopt"]

# <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

#: The heap's free top is returned to the system only beyond this many bytes (mallopt takes an int: 2 GiB).
KEEP_TRIM_THRESHOLD = 2**31 - 1


@cache
def _libc() -> ctypes.CDLL | None:
    """glibc, or None elsewhere (musl, macOS, Windows: they have no ``mallopt`` with these meanings)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc


def mallopt(param: int, value: int) -> bool:
    """glibc's ``mallopt(param, value)``; False where there is no glibc or glibc refused the value."""
    libc = _libc()
    return libc is not None and bool(libc.mallopt(param, value))


def keep_freed_memory() -> bool:
    """Serve every ``malloc`` from the heap and keep freed memory in the process (see the module's doc).

    Returns:
        Whether the settings were applied: False without glibc, or with ``TORCHSTN_MALLOC=system`` in the
        environment.
    """
    if os.environ.get("TORCHSTN_MALLOC", "").strip().lower() == "system":
        return False
    return mallopt(M_MMAP_MAX, 0) and mallopt(M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD)
