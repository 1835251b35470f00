"""Worker threads at background priority: the calling thread only, once."""

from __future__ import annotations

import os
import threading

from durafs.priority import BACKGROUND_NICE, background_thread


def _nice(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def test_lowers_the_calling_thread_only_and_once() -> None:
    main_before = _nice(threading.get_native_id())
    seen: dict[str, int] = {}

    def worker() -> None:
        tid = threading.get_native_id()
        seen["before"] = _nice(tid)
        background_thread()
        seen["after"] = _nice(tid)
        background_thread()  # a second call changes nothing
        seen["again"] = _nice(tid)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["after"] == min(seen["before"] + BACKGROUND_NICE, 19)
    assert seen["again"] == seen["after"]
    assert _nice(threading.get_native_id()) == main_before  # per thread, not per process
