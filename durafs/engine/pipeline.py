"""The units of work of a backup's pipeline (see backup.py): tree entries on their way to
the index, and the jobs whose results the walking thread stores."""

from __future__ import annotations

import concurrent.futures
import queue
from dataclasses import dataclass, field

from durafs.engine.filereader import FileRead, StreamItem
from durafs.engine.scan import ScanItem
from durafs.format.frames import StoredChunk
from durafs.index.rows import Entry


@dataclass
class Unit:
    """One tree entry on its way to the TreeWriter; files gather their pieces here."""

    entry: Entry
    reading: bool = False
    attempt: int = 0
    skip: bool = False
    outstanding: int = 0
    pieces: list[tuple[int, bytes, int]] = field(default_factory=list)


class Done:
    """A result computed on the spot, with the two Future methods the queue uses."""

    __slots__ = ("_value",)

    def __init__(self, value: StoredChunk) -> None:
        self._value = value

    def done(self) -> bool:
        return True

    def result(self) -> StoredChunk:
        return self._value


@dataclass(slots=True)
class ChunkJob:
    """One chunk of a file read on the walking thread, being hashed and compressed."""

    unit: Unit
    attempt: int
    future: concurrent.futures.Future[StoredChunk] | Done
    offset: int
    size: int

    def cids(self) -> list[bytes]:
        return [self.future.result().id]


@dataclass(slots=True)
class BatchJob:
    """Whole files read, cut and encoded by a worker (see filereader.py)."""

    units: list[Unit]
    items: list[ScanItem]
    future: concurrent.futures.Future[list[FileRead]]
    size: int

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
