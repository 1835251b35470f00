# SPDX-License-Identifier: GPL-3.0-or-later
"""Media requests: "bring medium X online", raised when an open needs an offline medium.

One `MediaRequests` per mount, used on the trio thread. There is at most one open request
per medium: the first open that needs the medium raises it, later ones join it (its
*waiters* count). While a request is open it is published as one JSON file in
``$DURAFS_HOME/requests/`` (written whole to a temporary name, then renamed, so a reader
never sees half a file), which is what ``durafs requests`` lists. A poller task per
request probes the medium every `POLL_SECONDS`; once the medium is online the request is
*served*: its file is removed and every waiter goes on. A waiter that gives up (its
timeout, or a signal to the waiting process) leaves; an unserved request nobody has
rejoined `GRACE_SECONDS` after its last waiter left is *withdrawn* (file removed, poller
cancelled).

Interrupts: pyfuse3 (3.5) neither registers libfuse's interrupt callback nor exposes
``fuse_req_interrupted``, so a FUSE_INTERRUPT from the kernel never reaches Python. The
kernel sends one when the process blocked in our ``open()`` gets a signal, and then keeps
it waiting (uninterruptibly, even for SIGKILL) until we answer. So a waiter watches the
requesting thread itself: `signal_pending` reads ``/proc/<tid>/status`` (the tid is the
request's ``ctx.pid``), and a pending signal that thread does not block (SigPnd/ShdPnd
minus SigBlk) ends the wait with `Interrupted` (EINTR).
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from durafs.engine.poolwriter import describe_offline
from durafs.errors import MediumOfflineError
from durafs.fs.errors import Interrupted
from durafs.index.rows import MediumRow

log = logging.getLogger(__name__)

#: How often an open request probes its medium (the daemon adds udev events later).
POLL_SECONDS = 1.0
#: How often a waiter checks whether the process it waits for got a signal.
INTERRUPT_POLL = 0.2
#: How long a request nobody waits for stays open: a syscall restarted after a signal
#: (SA_RESTART, Python's PEP 475) rejoins it instead of raising a new one.
GRACE_SECONDS = 1.0

Probe = Callable[[MediumRow], Awaitable[bool]]
#: Why a medium is offline though something is at its place, or None (see MediumStatus).
Explain = Callable[[MediumRow], str | None]


@dataclass(eq=False)
class MediaRequest:
    """One open request for one medium (see the module docstring)."""

    id: str
    medium: MediumRow
    reason: str
    since_ns: int
    #: Who waits: one entry per waiting open, as published.
    who: list[dict[str, Any]] = field(default_factory=list)
    #: What is at the medium's place instead (a damaged marker, another medium), as the
    #: last probe found: bringing "the medium" will not help, mending that will.
    offline_reason: str | None = None
    served: trio.Event = field(default_factory=trio.Event)
    poller: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def waiters(self) -> int:
        return len(self.who)

    def record(self, mountpoint: str) -> dict[str, Any]:
        """The JSON object published for ``durafs requests``."""
        m = self.medium
        return {
            "id": self.id,
            "medium": m.label,
            "medium_uuid": m.uuid,
            "pool": m.pool,
            "kind": m.kind,
            "location": m.location,
            "path": m.path,
            "reason": self.reason,
            "offline_reason": self.offline_reason,
            "since_ns": self.since_ns,
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since_ns / 1e9)),
            "waiters": self.waiters,
            "who": list(self.who),
            "mountpoint": mountpoint,
            "pid": os.getpid(),
            "pid_started": process_started(os.getpid()),
        }


class MediaRequests:
    """The open media requests of one mount; *probe* says whether a medium is online."""

    def __init__(
        self,
        directory: Path,
        *,
        mountpoint: str,
        probe: Probe,
        explain: Explain = lambda medium: None,
        poll: float = POLL_SECONDS,
        grace: float = GRACE_SECONDS,
    ) -> None:
        self.directory = directory
        self.mountpoint = mountpoint
        self.probe = probe
        self.explain = explain
        self.poll = poll
        self.grace = grace
        self._open: dict[int, MediaRequest] = {}
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        """Give the pollers a home; call once before the first `wait_online`."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._nursery = nursery

    def pending(self) -> list[MediaRequest]:
        return list(self._open.values())

    async def wait_online(
        self,
        medium: MediumRow,
        reason: str,
        *,
        give_up_after: float | None,
        interrupted: Callable[[], bool] = lambda: False,
        pid: int | None = None,
    ) -> None:
        """Raise or join the request for *medium*; return once it is online.

        MediumOfflineError after *give_up_after* seconds (None: never), `Interrupted` as soon as
        *interrupted()* says the waiting process got a signal. *pid*: the waiting thread,
        named in the published request.
        """
        waiter = {"pid": pid, "command": _command(pid), "reason": reason}
        request = self._join(medium, reason, waiter)
        try:
            with trio.move_on_after(float("inf") if give_up_after is None else give_up_after):
                while not request.served.is_set():
                    with trio.move_on_after(INTERRUPT_POLL):
                        await request.served.wait()
                    if not request.served.is_set() and interrupted():
                        raise Interrupted(f"{reason}: interrupted while waiting for "
                                          f"medium {medium.label}")
            if not request.served.is_set():
                why = f": {request.offline_reason}" if request.offline_reason else ""
                raise MediumOfflineError(f"{describe_offline(medium)} is offline "
                                         f"(needed for {reason}){why}")
        finally:
            self._leave(request, waiter)

    def _join(self, medium: MediumRow, reason: str, waiter: dict[str, Any]) -> MediaRequest:
        request = self._open.get(medium.id)
        if request is None:
            if self._nursery is None:
                raise RuntimeError("MediaRequests.start() was not called")
            request = MediaRequest(uuid.uuid4().hex[:16], medium, reason, time.time_ns(),
                                   offline_reason=self.explain(medium))
            self._open[medium.id] = request
            self._nursery.start_soon(self._poll, request)
            why = f"; {request.offline_reason}" if request.offline_reason else ""
            log.warning("media request %s: bring %s online (for %s)%s", request.id,
                        describe_offline(medium), reason, why)
        request.who.append(waiter)
        self._publish(request)
        return request

    def _leave(self, request: MediaRequest, waiter: dict[str, Any]) -> None:
        request.who.remove(waiter)
        if request.served.is_set() or self._open.get(request.medium.id) is not request:
            return
        self._publish(request)
        if request.waiters == 0 and self._nursery is not None:
            self._nursery.start_soon(self._withdraw_unless_rejoined, request)

    async def _withdraw_unless_rejoined(self, request: MediaRequest) -> None:
        await trio.sleep(self.grace)
        if request.waiters > 0 or request.served.is_set():
            return
        if self._open.get(request.medium.id) is not request:
            return
        del self._open[request.medium.id]
        request.poller.cancel()
        self._unpublish(request)
        log.warning("media request %s withdrawn: nobody waits for medium %s any more",
                    request.id, request.medium.label)

    async def _poll(self, request: MediaRequest) -> None:
        with request.poller:
            while True:
                await trio.sleep(self.poll)
                if await self.probe(request.medium):
                    break
                why = self.explain(request.medium)
                if why != request.offline_reason:  # e.g. the wrong disk went in
                    request.offline_reason = why
                    self._publish(request)
        if request.poller.cancel_called:
            return
        if self._open.get(request.medium.id) is request:
            del self._open[request.medium.id]
        self._unpublish(request)
        request.served.set()
        log.warning("media request %s served: medium %s is online", request.id,
                    request.medium.label)

    # -- the published files --------------------------------------------------------------
    # Tiny local writes on the trio thread: cheaper than a thread hop, and they keep the
    # request's state and its file in step without a lock.

    def _path(self, request: MediaRequest) -> Path:
        return self.directory / f"{request.id}.json"

    def _publish(self, request: MediaRequest) -> None:
        path = self._path(request)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            tmp.write_text(json.dumps(request.record(self.mountpoint), indent=1) + "\n")
            os.replace(tmp, path)
        except OSError as exc:  # the request still works; only its listing is missing
            log.error("cannot publish media request %s in %s: %s", request.id,
                      self.directory, exc)

    def _unpublish(self, request: MediaRequest) -> None:
        try:
            self._path(request).unlink()
        except FileNotFoundError:
            pass

    def close(self) -> None:
        """Withdraw every open request (the mount is going away)."""
        for request in list(self._open.values()):
            request.poller.cancel()
            self._unpublish(request)
        self._open.clear()


def read_requests(directory: Path) -> list[dict[str, Any]]:
    """The published requests of every live mount, oldest first.

    Files left by a process that no longer exists (a crashed mount) are removed.
    """
    found = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    for name in names:
        if not name.endswith(".json") or name.startswith("."):
            continue
        path = directory / name
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # removed meanwhile, or not ours
        if not isinstance(record, dict) or not _alive(record.get("pid"),
                                                      record.get("pid_started")):
            _remove_stale(path)
            continue
        found.append(record)
    return sorted(found, key=lambda r: (r.get("since_ns", 0), r.get("id", "")))


def _command(pid: int | None) -> str:
    """The command name of process (or thread) *pid*, "?" if it is gone or unknown."""
    if pid is None:
        return "?"
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            return f.read().strip() or "?"
    except OSError:
        return "?"


def _alive(pid: object, started: object) -> bool:
    """Whether the mount that published a request still runs: its pid, not a zombie, and
    not a new process that got the same pid since (its start time differs)."""
    if not isinstance(pid, int) or pid <= 0 or not process_running(pid):
        return False
    return started is None or started == process_started(pid)


def process_started(pid: int) -> int | None:
    """When process *pid* started (clock ticks after boot), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rpartition(b")")[2].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def process_running(pid: int) -> bool:
    """Whether process *pid* exists and has not exited: a zombie (killed, not yet reaped)
    serves nothing and waits for nothing."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def _remove_stale(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def signal_pending(tid: int) -> bool:
    """True if thread *tid* has a signal pending that it does not block, or is gone.

    Reads ``/proc/<tid>/status``: SigPnd (thread), ShdPnd (process) and SigBlk masks.
    """
    try:
        with open(f"/proc/{tid}/status", "rb") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return True
    except OSError:
        return False
    masks: dict[bytes, int] = {}
    for line in text.splitlines():
        key, _, value = line.partition(b":")
        if key in (b"SigPnd", b"ShdPnd", b"SigBlk"):
            masks[key] = int(value.strip(), 16)
    pending = masks.get(b"SigPnd", 0) | masks.get(b"ShdPnd", 0)
    return bool(pending & ~masks.get(b"SigBlk", 0))
