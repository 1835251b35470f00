"""How long runs treat Python's cyclic garbage collector.

Backups and restores make many objects per file that live until the end of their phase,
and hardly any reference cycles: the collector would traverse the survivors again and
again and free nothing. It runs holding the GIL, so every thread waits for it.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

#: Collector thresholds during a backup. With the defaults (700, 10, 10) the corpus's
#: first backup spent 0.3 s in 330 collections, during which no thread ran Python.
RELAXED_THRESHOLDS = (50_000, 20, 20)


@contextmanager
def gc_paused() -> Iterator[None]:
    """No collection at all (for a walk that frees nothing until it ends)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextmanager
def gc_frozen() -> Iterator[None]:
    """Keep the objects that exist now out of every collection until the block ends."""
    if gc.get_freeze_count():  # someone else froze objects: leave that alone
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@contextmanager
def gc_relaxed(thresholds: tuple[int, int, int] = RELAXED_THRESHOLDS) -> Iterator[None]:
    """Objects that exist now frozen, and collections far rarer, until the block ends:
    cycles made meanwhile (exceptions with their tracebacks) are still collected."""
    before = gc.get_threshold()
    gc.set_threshold(*thresholds)
    try:
        with gc_frozen():
            yield
    finally:
        gc.set_threshold(*before)
