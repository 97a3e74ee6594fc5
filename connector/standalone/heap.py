"""Keep a long-running process's heap from holding on to what a burst of requests allocated.

glibc gives every thread that allocates its own arena (up to 8 per core) and raises its mmap
threshold to the largest block freed so far, so after a burst of large request bodies on many
threads the freed memory stays in arenas that are never returned: ``serve`` stayed near 950 MB
idle after an overload. Two ``mallopt`` settings make the burst go away again:

* ``M_ARENA_MAX`` 2 (what ``MALLOC_ARENA_MAX=2`` does, but it must be set before the first thread
  allocates, so from inside the process): request threads share two arenas;
* a fixed ``M_MMAP_THRESHOLD`` of 256 KiB (which also stops its dynamic growth): every block that
  large, a request body or a result, is its own mapping, unmapped the moment it is freed.

Elsewhere than glibc (musl, macOS) this does nothing: those allocators behave differently anyway.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
ARENA_MAX = 2
MMAP_THRESHOLD = 256 * 1024


def _libc():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


def limit_arenas() -> bool:
    """Apply the settings above; False where the C library has no mallopt."""
    libc = _libc()
    if libc is None:
        return False
    ok = all(libc.mallopt(option, value) == 1 for option, value in (
        (M_ARENA_MAX, ARENA_MAX), (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD)))
    if not ok:
        log.debug("mallopt refused a setting; the heap may keep freed memory after bursts")
    return ok
