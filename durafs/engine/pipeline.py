"""The units of work of a backup's pipeline (see backup.py): tree entries on their way to
the index, and the jobs whose results the walking thread stores."""

from __future__ import annotations

import concurrent.futures
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from durafs.engine.filereader import FileRead, ReadRequest, StreamItem
from durafs.engine.scan import ScanItem
from durafs.format.frames import StoredChunk
from durafs.index.rows import Entry

T = TypeVar("T")


@dataclass
class Unit:
    """One tree entry on its way to the TreeWriter; files gather their pieces here."""

    entry: Entry
    reading: bool = False
    attempt: int = 0
    skip: bool = False
    outstanding: int = 0
    pieces: list[tuple[int, bytes, int]] = field(default_factory=list)


class Done(Generic[T]):
    """A result computed on the spot, with the two Future methods the queue uses."""

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value = value

    def done(self) -> bool:
        return True

    def result(self) -> T:
        return self._value


@dataclass(slots=True)
class ChunkJob:
    """One chunk of a file read on the walking thread, being hashed and compressed."""

    unit: Unit
    attempt: int
    future: concurrent.futures.Future[StoredChunk] | Done[StoredChunk]
    offset: int
    size: int

    def cids(self) -> list[bytes]:
        return [self.future.result().id]


@dataclass(slots=True)
class BatchJob:
    """Whole files read, cut and encoded by a worker (see filereader.py)."""

    units: list[Unit]
    items: list[ScanItem]
    future: concurrent.futures.Future[list[FileRead]] | Done[list[FileRead]]
    size: int
    #: Its number in the run: batches are stored in this order (see engine/packing.py).
    number: int = 0

    def cids(self) -> list[bytes]:
        return [stored.id for read in self.future.result() for _, stored in read.pieces]


@dataclass(slots=True)
class StreamJob:
    """A large file read, cut and encoded by a worker, its chunks coming through *chunks*
    while the walk goes on (see filereader.StreamReader). Its memory is bounded by the
    queue, so it adds nothing to the bytes in flight."""

    unit: Unit
    item: ScanItem
    chunks: queue.Queue[StreamItem]
    future: concurrent.futures.Future[FileRead]
    size: int = 0
    ended: bool = False
    finished: bool = False

    def cids(self) -> list[bytes]:
        return []


Job = ChunkJob | BatchJob | StreamJob


#: A batch of files this small in all (tiny files: a KiB or less each) is read on the
#: walking thread itself. Handing it to a worker cost more than the work: every system
#: call of a thread gives the GIL to one that waits for it, and takes two thread switches
#: to get it back (20 000 tiny files made 560 000 futex calls; read here, their backup
#: takes half the CPU time).
INLINE_BATCH_BYTES = 64 * 1024
#: Seconds per file past which a batch read on the walking thread counts as slow: files in
#: the page cache take ~25 µs, a disk seek or a network round trip milliseconds; waits for
#: the GIL, which the volume and catalog threads hold now and then, stay well below.
INLINE_SLOW_PER_FILE = 1e-3
#: ... but never below this for a whole batch.
INLINE_SLOW_MIN = 0.02
#: Slow batches in a row that make a slow source (one is a passing stall).
INLINE_SLOW_BATCHES = 3


class InlineReads:
    """Whether the walking thread reads a batch of tiny files itself. Only while that is
    fast: from a source that makes reads wait (a cold disk, a network file system) the
    workers read, two at a time and while the walk goes on, so after a few slow batches in
    a row every later one goes to them."""

    def __init__(self) -> None:
        self.enabled = True
        self._slow = 0  # slow batches in a row

    def wanted(self, size: int) -> bool:
        """Whether a batch of *size* bytes in all is to be read here."""
        return self.enabled and size <= INLINE_BATCH_BYTES

    def read(self, read_batch: Callable[[list[ReadRequest]], list[FileRead]],
             requests: list[ReadRequest]) -> Done[list[FileRead]]:
        """*read_batch* of *requests* on this thread, its time noted (see `took`)."""
        started = time.perf_counter()
        try:
            return Done(read_batch(requests))
        finally:
            self.took(time.perf_counter() - started, len(requests))

    def took(self, seconds: float, files: int) -> None:
        """Note that a batch of *files* took *seconds* here."""
        if seconds <= max(INLINE_SLOW_MIN, INLINE_SLOW_PER_FILE * files):
            self._slow = 0
            return
        self._slow += 1
        if self._slow >= INLINE_SLOW_BATCHES:
            self.enabled = False
