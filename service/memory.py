"""Giving freed memory back to the system (glibc only; elsewhere these do nothing).

A burst of large requests leaves the worker's heap large: glibc raises its mmap
threshold after big blocks are freed (so later big blocks come from the heap), and
freed heap pages stay mapped until trimmed. Two remedies, both measured in
docs/decisions.md:

- a fixed mmap threshold: request bodies and model buffers of more than 256 KiB are
  mmapped and unmapped as soon as they are freed;
- `malloc_trim(0)` once the worker is idle after a burst (service/scheduler.py), for the
  small objects (decoded titles) freed throughout the heap.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from typing import Any, Optional

log = logging.getLogger("categorizer")
M_MMAP_THRESHOLD = -3  # mallopt parameters, from glibc's malloc.h
MMAP_THRESHOLD_BYTES = 256 * 1024


@functools.cache
def _libc() -> Optional[Any]:
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols, libc's among them
    except OSError:
        return None
    if not hasattr(libc, "malloc_trim") or not hasattr(libc, "mallopt"):
        return None  # not glibc (musl, macOS)
    return libc


def configure() -> None:
    """Fixes the mmap threshold, so big freed blocks return to the system at once."""
    libc = _libc()
    if libc is not None and not libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES):
        log.warning("mallopt(M_MMAP_THRESHOLD) failed; freed memory may return later")


def trim() -> None:
    """Returns the heap's free pages to the system."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
