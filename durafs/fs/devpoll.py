# SPDX-License-Identifier: GPL-3.0-or-later
"""Adaptive polling of the FUSE device in pyfuse3's request loop.

pyfuse3 waits for every request with ``trio.lowlevel.wait_readable`` on ``/dev/fuse``: the
trio thread sleeps in ``epoll_wait`` and the kernel wakes it for the next request. A
client such as ``ls -l`` or ``cat`` sends its next request tens of microseconds after
getting an answer, so a busy mount sleeps and is woken once per request, and on a
virtual machine a wake-up across CPUs costs more than answering the request: an
``ls -lR`` of a 20 700-entry tree from memory took 2.1–2.9 s this way, and 0.9–1.1 s when
the loop first polls the device for up to `SPIN` seconds before sleeping (the same tree
in C with libfuse's own loop: 2.0 s; `scripts/bench/fuse_floor.py`).

Polling is cut short, and the loop sleeps as before, when anything else needs the trio
thread (another task is runnable, a worker thread's result or a signal waits to be
delivered), after `MAX_STREAK` requests in a row (so the other tasks always get a turn),
and when a spin went unanswered: the next wait then sleeps at once, and polling resumes
only after a request that came within `SPIN` of the previous one. An idle mount never
spins; a busy one spends less CPU than sleeping and waking cost it.

pyfuse3's tasks take a lock around each wait (one task waits on the device, the others
park, ready to read while it handles a request that waits). trio's own lock hands itself
to the parked task at each release, so the tasks took turns and every request cost a
pass through trio's scheduler; `ReadLock` lets the task that released it take it again.
With both, the listing above takes 0.7–0.9 s through durafs's mount.

pyfuse3 reaches trio through its module attribute ``trio``: the hook ``pyfuse3.asyncio``
uses to run it on asyncio. `install` points that attribute at `TrioWithPolling`, which is
trio itself except for ``lowlevel.wait_readable`` and ``Lock``; `uninstall` puts trio
back.
"""

from __future__ import annotations

import select
import time
import types
from typing import Any

import pyfuse3
import trio

#: Seconds the loop polls the device for the next request before it sleeps.
SPIN = 300e-6
#: Requests answered in a row without a scheduler pass, at most.
MAX_STREAK = 64
#: Seconds between two looks, while polling, at whether a worker thread's result waits.
CHECK_INTERVAL = 50e-6


class Poller:
    """Decides, per wait, whether to poll the device first; see the module docstring.

    Used by the trio thread only."""

    def __init__(self, spin: float = SPIN, max_streak: int = MAX_STREAK) -> None:
        self.spin = spin
        self.max_streak = max_streak
        self.streak = 0
        self.spinning = True  # off after a spin nobody answered, until requests come fast
        self._fd = -1
        self._poll = select.poll()
        #: Tasks parked in a `ReadLock` that were woken and have not run yet.
        self.woken = 0
        #: Waits answered by polling, and sleeps (statistics for benchmarks and tests).
        self.polled = 0
        self.slept = 0

    async def wait_readable(self, fd: Any) -> None:
        """Return when *fd* (pyfuse3's session descriptor) has a request."""
        if fd != self._fd:
            self._poll = select.poll()
            self._poll.register(fd, select.POLLIN)
            self._fd = fd
        if self.streak < self.max_streak:
            # A request already queued is taken at once: asking trio whether other tasks
            # wait costs more than a request, and the streak bounds how long they wait.
            if self._poll.poll(0):
                self._took()
                return
            if self.spinning and not self._others_waiting():
                if self._ready_within(self.spin):
                    self._took()
                    return
                self.spinning = False  # nobody came: the client paused
        self.streak = 0
        self.slept += 1
        started = time.perf_counter()
        await trio.lowlevel.wait_readable(fd)
        # a request soon after the last answer: the client is busy, polling pays again
        self.spinning = time.perf_counter() - started < self.spin

    def _took(self) -> None:
        self.streak += 1
        self.polled += 1

    def _others_waiting(self) -> bool:
        """Whether another task (not one a `ReadLock` woke, which would only park again),
        a worker thread's result or a signal waits for the thread."""
        stats = trio.lowlevel.current_statistics()
        return bool(stats.tasks_runnable > self.woken or stats.run_sync_soon_queue_size)

    def _ready_within(self, seconds: float) -> bool:
        now = time.perf_counter()
        end, check = now + seconds, now + CHECK_INTERVAL
        while True:
            if self._poll.poll(0):
                return True
            now = time.perf_counter()
            if now >= end:
                return False
            if now >= check:  # trio's statistics cost as much as a few polls
                if _results_waiting():
                    return False
                check = now + CHECK_INTERVAL


def _results_waiting() -> bool:
    return bool(trio.lowlevel.current_statistics().run_sync_soon_queue_size)


class _Lowlevel(types.SimpleNamespace):
    """``trio.lowlevel`` with a polling ``wait_readable``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(trio.lowlevel, name)


class ReadLock:
    """pyfuse3's read lock, without a scheduler pass per request.

    pyfuse3 takes it around each wait for the device, so that one task at a time waits
    (the others park here, ready to read while the first handles a request that waits).
    trio.Lock hands itself to the parked task at every release, so tasks took turns and
    each request cost a pass through trio's scheduler. This lock lets the releasing task
    take it again at once and wakes one parked task, which parks again if it finds it
    taken. At most one woken task is on its way at a time; the poller counts it
    (`Poller.woken`), so that it does not stop the polling.
    """

    def __init__(self, poller: Poller) -> None:
        self._poller = poller
        self._held = False
        self._lot = trio.lowlevel.ParkingLot()

    async def __aenter__(self) -> None:
        while self._held:
            await self._lot.park()
            self._poller.woken -= 1
        self._held = True

    async def __aexit__(self, *exc: object) -> None:
        self._held = False
        if self._lot and not self._poller.woken:
            self._lot.unpark()
            self._poller.woken += 1


class TrioWithPolling(types.ModuleType):
    """What pyfuse3 sees as ``trio``: trio, but for ``lowlevel.wait_readable`` and
    ``Lock`` (which pyfuse3 uses for its read lock only)."""

    def __init__(self, poller: Poller) -> None:
        super().__init__("trio")
        self.lowlevel = _Lowlevel(wait_readable=poller.wait_readable)
        self.Lock = lambda: ReadLock(poller)

    def __getattr__(self, name: str) -> Any:
        return getattr(trio, name)


def install(poller: Poller) -> None:
    """Have pyfuse3's request loop wait through *poller* (one mount per process)."""
    if getattr(pyfuse3, "trio", None) is not trio:
        raise RuntimeError("pyfuse3 does not reach trio through pyfuse3.trio, or another "
                           "event loop is installed: device polling is not possible")
    pyfuse3.trio = TrioWithPolling(poller)  # type: ignore[attr-defined]


def uninstall() -> None:
    pyfuse3.trio = trio  # type: ignore[attr-defined]
