"""Giving freed buffers back to the system during long runs.

A backup allocates and frees megabyte-sized buffers (file contents, compressed frames) on
several threads. glibc keeps freed memory in per-thread arenas, so the resident size
creeps up to the sum of every thread's high-water mark; `malloc_trim` returns the free
pages of every arena, and `limit_arenas` keeps the worker threads to a couple of arenas
(each extra arena is one more high-water mark). Elsewhere (musl, macOS) these are no-ops.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

#: glibc's mallopt parameter number for the arena limit.
M_ARENA_MAX = -8
#: Arenas a process keeps (glibc's default is 8 per core).
ARENAS = 2
#: Bytes a caller may allocate and free between two trims. Each trim gives back pages the
#: next buffers fault in again, in the first backup on threads that hold the GIL (a copy
#: into a fresh frame): every 32 MiB made 150 000 page faults, every 64 MiB 104 000 and a
#: first backup 8 % faster, for no more peak memory with the volume's members at 4 MiB
#: (docs/BENCHMARKS.md, seventh session).
TRIM_EVERY = 64 * 1024 * 1024


def _libc_function(name: str) -> Callable[..., int] | None:
    try:
        # the symbols already loaded into this process (find_library would run ldconfig)
        libc = ctypes.CDLL(None)
        function: Callable[..., int] = getattr(libc, name)
    except (OSError, AttributeError):
        return None
    return function


_trim = _libc_function("malloc_trim")
_mallopt = _libc_function("mallopt")


def limit_arenas() -> None:
    """Cap the number of malloc arenas; call before starting worker threads."""
    if _mallopt is not None:
        _mallopt(M_ARENA_MAX, ARENAS)


class Trimmer:
    """Calls malloc_trim once per TRIM_EVERY bytes reported with `add`."""

    def __init__(self, every: int = TRIM_EVERY) -> None:
        self.every = every
        self._since = 0

    def add(self, nbytes: int) -> None:
        self._since += nbytes
        if self._since >= self.every:
            self._since = 0
            if _trim is not None:
                _trim(0)
