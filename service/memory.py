"""Giving freed memory back to the system after a burst (glibc; elsewhere a no-op).

Freed heap pages stay mapped: after a burst of large requests, a worker would keep the
burst's peak as its resident size. `malloc_trim(0)` returns every free page of the
heap, so the scheduler calls it once a worker is idle after a burst (see
service/scheduler.py and docs/decisions.md for what it gives back).
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any, Optional


@functools.cache
def _libc() -> Optional[Any]:
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols, libc's among them
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None  # not glibc (musl, macOS)


def trim() -> None:
    """Returns the heap's free pages to the system."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
