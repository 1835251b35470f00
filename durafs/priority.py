"""Worker threads give way to the thread a user is waiting on.

In the mount, the trio thread answers every request while worker threads decode chunks,
most of them ahead of any reader; with the file reader (`cat`, `rsync`) that makes more
runnable threads than the machine has cores, and the scheduler shared the CPUs evenly, so
requests waited behind readahead. A worker thread runs at a lower priority instead.

On Linux the nice value belongs to each thread: `setpriority` on a thread id changes that
thread only. Raising one's own nice value needs no privilege; lowering it again would, so a
thread stays at background priority for its life (trio keeps its worker threads for reuse,
and they all do background work).
"""

from __future__ import annotations

import os
import threading

#: How much less CPU share a background thread gets: nice 5 weighs about a third of nice 0.
BACKGROUND_NICE = 5

_local = threading.local()


def background_thread() -> None:
    """Put the calling thread at background priority (once; later calls are free).

    Where the system has no per-thread priorities or refuses, nothing changes: priority is
    an optimisation only."""
    if getattr(_local, "background", False):
        return
    _local.background = True
    tid = threading.get_native_id()
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(current + BACKGROUND_NICE, 19))
    except (OSError, AttributeError):  # AttributeError: no get/setpriority on this system
        pass
