# SPDX-License-Identifier: GPL-3.0-or-later
"""Large files streamed through the workers while the walk goes on.

A large file is read, cut and encoded by one worker (`StreamReader`), which hands each
chunk over through a bounded queue as soon as it is encoded, so memory stays bounded
whatever the file's size. The walking thread takes the chunks (`Streams.pump`) whenever
it looks, and stores them in order. At most *max_streams* files (one per worker) stream
at once, each holding a worker while its queue is full, and the walking thread pumps them
all whenever it waits, so none can hold up another; later large files wait their turn
while the walk goes on.
"""

from __future__ import annotations

import collections
import concurrent.futures
import queue
from collections.abc import Callable

from durafs.engine.filereader import END, RESTART, FileRead, ReadRequest, StreamItem, StreamReader
from durafs.engine.pipeline import Job, StreamJob, Unit
from durafs.engine.scan import ScanItem
from durafs.format.frames import StoredChunk

#: Chunks a streamed file's worker may have encoded ahead of the walking thread.
STREAM_AHEAD = 3
#: Seconds between looks at a streaming file's queue while waiting for another job.
STREAM_POLL = 0.002

Submit = Callable[..., "concurrent.futures.Future[FileRead]"]


class Streams:
    """The files streaming now and those waiting their turn (see the module docstring).

    *jobs* is the run's queue of jobs in walk order, which a started stream joins; *store*
    takes each chunk (unit, stored chunk, offset in the file), *finish* a file's read once
    its last chunk is stored; `submit` runs a function on a worker.
    """

    def __init__(self, reader: StreamReader, jobs: collections.deque[Job], *,
                 max_streams: int, store: Callable[[Unit, StoredChunk, int], None],
                 finish: Callable[[Unit, ScanItem, FileRead], object]) -> None:
        self.reader = reader
        self.max_streams = max_streams
        self.submit: Submit | None = None  # a worker pool's, once the run has one
        self._jobs = jobs
        self._store = store
        self._finish = finish
        self.active: list[StreamJob] = []
        self._waiting: collections.deque[tuple[Unit, ScanItem]] = collections.deque()

    def full(self) -> bool:
        return len(self.active) >= self.max_streams

    def wait_turn(self, unit: Unit, item: ScanItem) -> None:
        """Stream *item*'s file once a file streaming now has ended."""
        self._waiting.append((unit, item))

    def start(self, unit: Unit, item: ScanItem) -> None:
        assert self.submit is not None, "no workers yet"
        chunks: queue.Queue[StreamItem] = queue.Queue(STREAM_AHEAD)
        future = self.submit(self.reader.read, ReadRequest(item.path, item.st), chunks)
        job = StreamJob(unit, item, chunks, future)
        self.active.append(job)
        self._jobs.append(job)

    def pump_all(self, *, until_done: bool = False) -> None:
        """Store the chunks every streaming worker has ready; with *until_done*, go on
        until no file streams (the waiting ones included)."""
        while self.active:
            for job in list(self.active):
                self.pump(job)
            if not until_done or not self.active:
                return
            self.pump(self.active[0], wait=STREAM_POLL)

    def pump(self, job: StreamJob, *, wait: float = 0.0) -> None:
        """Store the chunks *job*'s worker has ready, waiting up to *wait* seconds for the
        first; once its END is taken, the job is finished."""
        while not job.ended:
            try:
                got = job.chunks.get(timeout=wait) if wait else job.chunks.get_nowait()
            except queue.Empty:
                return
            wait = 0.0
            if got == END:
                job.ended = True
            elif got == RESTART:
                job.unit.pieces = []
            else:
                assert not isinstance(got, str)
                self._store(job.unit, got[1], got[0])
        self._end(job)

    def _end(self, job: StreamJob) -> None:
        if job.finished:
            return
        job.finished = True
        self.active = [s for s in self.active if s is not job]  # jobs compare by value
        self._finish(job.unit, job.item, job.future.result())
        if self._waiting:
            self.start(*self._waiting.popleft())
