"""glibc malloc settings for a daemon that holds large message bodies for a moment.

glibc serves an allocation above its mmap threshold (128 KiB at start) with its own mapping, given
back to the kernel when freed. But the threshold is dynamic: each time such a block is freed, the
threshold rises to its size (up to 32 MiB), so after the first 24 MB message every later buffer of
that size comes from the heap arenas, which fragment and are seldom returned. After rounds of large
mail the daemon then stayed hundreds of MB above its baseline (scripts/bench_memory.py: 20 x 24 MB,
RSS settled at 235-258 MB; with the threshold fixed, 102-113 MB).

Setting the threshold explicitly turns the dynamic adjustment off (mallopt(3)). Not glibc (musl,
macOS): nothing to do, ``tune`` returns False.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3         # glibc's mallopt parameter number (malloc.h)
MMAP_THRESHOLD = 128 * 1024   # glibc's own starting value, now fixed


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def tune() -> bool:
    """Fix the mmap threshold so large message buffers always go back to the kernel when freed."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
