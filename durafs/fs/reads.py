# SPDX-License-Identifier: GPL-3.0-or-later
"""Reading file data through the mount: availability at open, staging, the chunk cache
and readahead.

Three parts, each with its own threading rule:

* `Staging` (any thread, locked): whole volumes copied from media that had to be waited
  for into ``$DURAFS_HOME/staging``, named by volume uuid, LRU by last use (file mtime),
  at most *capacity* bytes. A staged copy is the stored bytes as they are on the medium
  (encrypted if the volume is); every chunk read from it is still checked against its id.
* `ChunkSource` (worker threads): one chunk's plaintext, from the staged copy if there is
  one, else through `VolumeAccess` (its own catalog connection) from the medium, which
  must be online by then (``wait=0``: the waiting happened at open, in trio).
* `Reader` (trio thread only, so no locks): the open files' reads. Decrypted chunks live
  in an LRU cache bounded by bytes; a chunk wanted by several readers is fetched once
  (later ones wait for the first); a sequential reader gets the next `READAHEAD_BYTES`
  of its file prefetched in worker threads. Files read in the order the backup stored
  them (``cp -a``, ``rsync``, ``find | xargs cat``: name order, depth first) get the
  chunks stored after theirs fetched ahead (`RUN_WINDOW` of one volume): small ones a run
  at a time (`RUN_BYTES`, one ranged read and one decryption pass), so most small files
  are answered from memory without a thread hop; big ones, after a file of big chunks
  was read to its end, each in its own job, so the next file's first chunks are decoded
  on both workers before it is opened. Blocking work runs under named
  `trio.CapacityLimiter`s, so a slow medium never stalls the trio thread (and with it
  ``ls`` in another shell).
"""

from __future__ import annotations

import bisect
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from durafs.engine.access import VolumeAccess
from durafs.engine.poolwriter import open_medium
from durafs.errors import DurafsError, MediumError, MediumOfflineError
from durafs.format.age import Buffer
from durafs.format.frames import codec_for_thread
from durafs.format.keys import CatalogKeys
from durafs.format.reader import VolumeReader, chunk_what
from durafs.fs.errors import Interrupted
from durafs.fs.requests import INTERRUPT_POLL, MediaRequests
from durafs.fs.vfs import LRU, ReadPlan
from durafs.index.rows import ChunkRow, FilePiece, MediumRow, VolumeRow
from durafs.media.base import MediumStatus
from durafs.media.filehandle import FileVolumeHandle
from durafs.priority import background_thread

log = logging.getLogger(__name__)

MiB = 1 << 20
DEFAULT_CACHE_BYTES = 64 * MiB
DEFAULT_STAGING_BYTES = 2048 * MiB
#: Bytes of a file fetched ahead of a sequential reader of it (pieces starting within
#: this much past the read's end). Several chunks in flight keep both worker threads
#: decoding while the trio thread answers the kernel.
READAHEAD_BYTES = 8 * MiB
#: A read starting this close to where the previous one ended counts as sequential.
SEQUENTIAL_WINDOW = 4 * MiB
#: How long an online/offline probe of a medium is believed.
PROBE_TTL = 1.0
#: Open readers of staged volumes kept (each holds a file descriptor).
STAGED_READERS = 16
#: Volume runs (see the module docstring and `Reader.follow`): reads of chunks up to
#: RUN_CHUNK_MAX bytes move a volume's reading position (bigger ones have their file's
#: readahead, and move it only when that reaches the file's end); the chunks stored up to
#: RUN_WINDOW bytes past it are fetched ahead, small ones together (up to RUN_BYTES of
#: frames and RUN_PLAIN_BYTES of plaintext per worker job), bigger ones one per job; a
#: chunk read up to RUN_GAP bytes before where the previous one in its volume ended still
#: counts as reading in order (the kernel and parallel readers reorder a little).
RUN_CHUNK_MAX = 256 * 1024
RUN_BYTES = 1 * MiB
RUN_PLAIN_BYTES = 4 * MiB
RUN_WINDOW = 4 * MiB
#: Big chunks are fetched by runs only up to this far (stored bytes) past the end of the
#: last file of big chunks read to its end in the volume: a reader of files of all sizes
#: gets the next one's first chunks decoded ahead, one of small files only (``find -size
#: -100k``) does not pay for decoding the big files it skips.
RUN_BIG_SPAN = 64 * MiB
RUN_GAP = 1 * MiB
#: Rows asked of the index per run, and volumes whose reading position is remembered.
RUN_ROWS = 256
RUN_VOLUMES = 64
#: Frames closer than this are read together (the bytes between are read and dropped).
RUN_JOIN_GAP = 64 * 1024
#: Files up to this size whose chunks are in memory at open are handed to the kernel's
#: page cache there (see `Reader.preload`).
PRELOAD_BYTES = 256 * 1024
_COPY_BLOCK = 4 * MiB
_STAGED_SUFFIX = ".vol"


@dataclass(frozen=True, slots=True)
class OfflinePolicy:
    """What an open does when its data is on an offline medium.

    *timeout*: seconds to wait for the medium (None: forever, 0: fail at once).
    """

    timeout: float | None = None

    @classmethod
    def parse(cls, text: str) -> OfflinePolicy:
        """``wait`` | ``fail`` | ``wait:SECONDS``; ValueError otherwise."""
        if text == "wait":
            return cls(None)
        if text == "fail":
            return cls(0.0)
        head, _, seconds = text.partition(":")
        if head == "wait" and seconds:
            value = float(seconds)
            if value >= 0 and value != float("inf"):
                return cls(value)
        raise ValueError(f"{text!r}: expected wait, fail or wait:SECONDS")


# -- staging -------------------------------------------------------------------------------


class Staging:
    """Whole volumes on local disk (see the module docstring); thread-safe."""

    def __init__(self, directory: Path, capacity: int = DEFAULT_STAGING_BYTES) -> None:
        self.directory = directory
        self.capacity = capacity
        self._lock = threading.Lock()
        self._busy: dict[str, threading.Lock] = {}
        directory.mkdir(parents=True, exist_ok=True)
        for leftover in directory.glob(".tmp-*"):
            # copies cut short by a crash; another live mount's copy in progress stays
            pid = leftover.name.rpartition("-")[2]
            if not pid.isdigit() or not os.path.exists(f"/proc/{pid}"):
                leftover.unlink(missing_ok=True)

    def path(self, volume: VolumeRow) -> Path:
        return self.directory / f"{volume.uuid}{_STAGED_SUFFIX}"

    def has(self, volume: VolumeRow) -> bool:
        try:
            return self.path(volume).stat().st_size == volume.stored_size
        except OSError:
            return False

    def open(self, volume: VolumeRow) -> FileVolumeHandle | None:
        """A handle on the staged copy (marking it used), or None if there is none."""
        path = self.path(volume)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            if os.fstat(fd).st_size != volume.stored_size:
                os.close(fd)
                return None
            os.utime(fd)  # last use, for LRU eviction
        except OSError:
            os.close(fd)
            return None
        name = path.name
        return FileVolumeHandle(fd, name, lambda exc: MediumError(f"staged {name}: {exc}"))

    def stage(self, volume: VolumeRow, medium: MediumRow) -> bool:
        """Copy *volume* from its (online) medium unless staged already; False if it does
        not fit in the staging area at all."""
        if volume.stored_size > self.capacity:
            return False
        with self._lock:
            busy = self._busy.setdefault(volume.uuid, threading.Lock())
        with busy:  # one copy per volume, whoever asks
            if self.has(volume):
                return True
            self._make_room(volume.stored_size)
            self._copy(volume, medium)
        return True

    def _copy(self, volume: VolumeRow, medium: MediumRow) -> None:
        handle = open_medium(medium).open_volume(volume.name or "")
        tmp = self.directory / f".tmp-{volume.uuid}-{os.getpid()}"
        started = time.monotonic()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                offset = 0
                while offset < handle.size:
                    block = handle.read_at(offset, min(_COPY_BLOCK, handle.size - offset))
                    if not block:
                        raise MediumError(f"{volume.name}: ends at {offset} while staging")
                    os.pwrite(fd, block, offset)
                    offset += len(block)
            finally:
                os.close(fd)
            os.replace(tmp, self.path(volume))
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            handle.close()
        log.info("staged volume %s (%d bytes) from medium %s in %.1f s", volume.name,
                 volume.stored_size, medium.label, time.monotonic() - started)

    def _make_room(self, incoming: int) -> None:
        """Evict the least recently used copies until *incoming* more bytes fit."""
        entries = []
        for path in self.directory.glob(f"*{_STAGED_SUFFIX}"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            entries.append((st.st_mtime_ns, st.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total + incoming <= self.capacity:
                break
            # An open reader keeps its descriptor: unlinking never breaks a read.
            path.unlink(missing_ok=True)
            total -= size
            log.info("evicted staged volume %s", path.name)

    def used(self) -> int:
        return sum(p.stat().st_size for p in self.directory.glob(f"*{_STAGED_SUFFIX}"))


# -- chunk source (worker threads) -------------------------------------------------------


class ChunkSource:
    """Chunk plaintext by index rows, from staged copies or online media; thread-safe."""

    def __init__(self, keys: CatalogKeys, access: VolumeAccess, staging: Staging) -> None:
        self.keys = keys
        self.access = access
        self.staging = staging
        #: Medium id -> why the last probe found it not online though something is at
        #: its place (see MediumStatus); set on probing threads (dict ops are atomic).
        self.offline_reasons: dict[int, str | None] = {}
        self._lock = threading.Lock()
        self._staged: OrderedDict[int, tuple[FileVolumeHandle, VolumeReader]] = OrderedDict()

    def read_chunk(self, chunk: ChunkRow, volume: VolumeRow) -> bytes:
        background_thread()  # decoding yields the CPU to the thread answering requests
        reader = self._staged_reader(volume) or self.access.reader(volume)
        return reader.read_chunk(chunk.offset, chunk.length, chunk.size, chunk.cid,
                                 chunk.fpos)

    def read_run(self, volume: VolumeRow, chunks: list[ChunkRow]) -> list[bytes]:
        """The plaintexts of *chunks* (all in *volume*, in volume order), each checked
        against its id: frames stored next to each other are read and decrypted in one go.
        """
        background_thread()
        reader = self._staged_reader(volume) or self.access.reader(volume)
        codec = codec_for_thread(reader.header.id_key)
        out: list[bytes] = []
        for group in _adjacent(chunks):
            start = group[0].offset
            data = memoryview(reader.read(start, group[-1].offset + group[-1].length - start))
            for c in group:
                frame = data[c.offset - start : c.offset - start + c.length]
                what = chunk_what(reader.name, c.cid, c.offset, c.fpos)
                out.append(codec.decode(frame, c.size, c.cid, what, c.fpos))
        return out

    def _staged_reader(self, volume: VolumeRow) -> VolumeReader | None:
        with self._lock:
            cached = self._staged.get(volume.id)
            if cached is not None:
                self._staged.move_to_end(volume.id)
                return cached[1]
        handle = self.staging.open(volume)
        if handle is None:
            return None
        try:
            reader = VolumeReader(handle.read_at, identities=self.keys.identities,
                                  size=handle.size, name=volume.name or volume.uuid,
                                  catalog_id=self.keys.catalog_id)
        except BaseException:
            handle.close()
            raise
        with self._lock:
            self._staged[volume.id] = (handle, reader)
            while len(self._staged) > STAGED_READERS:
                self._staged.popitem(last=False)[1][0].close()
        return reader

    def is_online(self, medium: MediumRow) -> bool:
        """Probe the medium (directory media: read its marker); never raises. Why one
        that is not online is not simply absent goes to `offline_reasons`."""
        try:
            status = open_medium(medium).status()
        except (DurafsError, OSError) as exc:
            log.debug("probe of medium %s failed: %s", medium.label, exc)
            status = MediumStatus(False, str(exc))
        if status.online or status.absent:
            self.offline_reasons.pop(medium.id, None)
        else:  # a damaged marker, another medium: waiting alone will not help
            self.offline_reasons[medium.id] = status.reason
        return status.online

    def close(self) -> None:
        with self._lock:
            for handle, _ in self._staged.values():
                handle.close()
            self._staged.clear()
        self.access.close()


def _adjacent(chunks: list[ChunkRow]) -> list[list[ChunkRow]]:
    """*chunks* (in volume order) cut where the gap to the next frame is over RUN_JOIN_GAP
    (the chunks of one pack share their frame: no gap)."""
    groups: list[list[ChunkRow]] = []
    end = -1
    for c in chunks:
        if not groups or not (c.offset >= groups[-1][-1].offset
                              and c.offset - end <= RUN_JOIN_GAP):
            groups.append([])
            end = c.offset + c.length
        groups[-1].append(c)
        end = max(end, c.offset + c.length)
    return groups


def _has_holes(plan: ReadPlan) -> bool:
    """True unless *plan*'s pieces cover its bytes end to end."""
    pos = 0
    for piece in plan.pieces:
        if piece.file_offset != pos:
            return True
        pos += piece.size
    return pos != plan.size


def _assemble(views: list[tuple[int, memoryview]], offset: int, end: int) -> bytes | bytearray:
    """File bytes [offset, end) from (file offset, bytes) views in file order: joined with
    one copy, or copied into zeros where they leave holes."""
    pos = offset
    for lo, view in views:
        if lo != pos:
            break
        pos += len(view)
    else:
        if pos == end:
            return b"".join(view for _, view in views)
    buf = bytearray(end - offset)  # zeros: whatever no piece covers is a hole
    into = memoryview(buf)  # copies once; a bytearray slice would copy a view twice
    for lo, view in views:
        into[lo - offset : lo - offset + len(view)] = view
    return buf


# -- reads of open files (trio thread) ----------------------------------------------------


class ChunkCache:
    """Plaintext chunks by chunks.id, least recently used dropped beyond *capacity* bytes."""

    def __init__(self, capacity: int = DEFAULT_CACHE_BYTES) -> None:
        self.capacity = capacity
        self.used = 0
        self._data: OrderedDict[int, bytes] = OrderedDict()

    def get(self, chunk_id: int) -> bytes | None:
        data = self._data.get(chunk_id)
        if data is not None:
            self._data.move_to_end(chunk_id)
        return data

    def put(self, chunk_id: int, data: bytes) -> None:
        if len(data) > self.capacity or chunk_id in self._data:
            return
        self._data[chunk_id] = data
        self.used += len(data)
        while self.used > self.capacity:
            self.used -= len(self._data.popitem(last=False)[1])

    def __contains__(self, chunk_id: int) -> bool:
        return chunk_id in self._data


@dataclass(eq=False)
class OpenFile:
    """One open file: its read plan and where its last read ended (readahead)."""

    plan: ReadPlan
    starts: list[int] = field(default_factory=list)
    next_offset: int = 0

    def __post_init__(self) -> None:
        self.starts = [p.file_offset for p in self.plan.pieces]

    def pieces_in(self, start: int, end: int) -> list[tuple[int, FilePiece]]:
        """(index, piece) of every piece overlapping bytes [start, end)."""
        i = max(bisect.bisect_right(self.starts, start) - 1, 0)
        found = []
        pieces = self.plan.pieces
        while i < len(pieces) and pieces[i].file_offset < end:
            if pieces[i].file_offset + pieces[i].size > start:
                found.append((i, pieces[i]))
            i += 1
        return found


@dataclass(eq=False)
class _Fetch:
    """Chunks being fetched by one task (one, or a volume run): *data* by chunks.id once
    *done*; a chunk missing then failed to fetch."""

    done: trio.Event = field(default_factory=trio.Event)
    data: dict[int, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class _Run:
    """Where a reader of small chunks is in one volume (see `Reader.follow`)."""

    end: int  # volume offset where the last small chunk read ended
    ahead: int  # volume offset up to which chunks are fetched, or being fetched, ahead
    last_id: int  # chunks.id of the last chunk looked at; the next run starts after it
    big_until: int = 0  # volume offset up to which runs fetch big chunks too


#: (volume id, after chunk id, limit) -> the chunks stored next (`Tree.chunks_after`).
Neighbours = Callable[[int, int, int], list[ChunkRow]]


class Reader:
    """Availability checks at open and the reads of open files (see the module docstring).

    *requests* raises and joins media requests; *policy* says how long an open waits.
    *run_window*: how far past a reader's chunk the chunks stored after it are fetched
    ahead (default `RUN_WINDOW`).
    """

    def __init__(
        self,
        source: ChunkSource,
        requests: MediaRequests,
        *,
        policy: OfflinePolicy = OfflinePolicy(),
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        readahead: int = READAHEAD_BYTES,
        neighbours: Neighbours | None = None,
        run_window: int = RUN_WINDOW,
    ) -> None:
        self.source = source
        self.run_window = run_window
        self.requests = requests
        self.policy = policy
        self.cache = ChunkCache(cache_bytes)
        self.readahead = readahead
        self.neighbours = neighbours
        self._runs: LRU[int, _Run] = LRU(RUN_VOLUMES)
        self._inflight: dict[int, _Fetch] = {}
        self._probes: dict[int, tuple[bool, float]] = {}
        self._staging: dict[int, trio.Event] = {}  # volumes.id -> set once staged (or not)
        self._nursery: trio.Nursery | None = None
        # One limiter per kind of blocking work: readahead and staging copies never take
        # the threads foreground reads and probes need.
        self.read_limiter = trio.CapacityLimiter(8)
        self.ahead_limiter = trio.CapacityLimiter(2)
        self.probe_limiter = trio.CapacityLimiter(4)
        self.stage_limiter = trio.CapacityLimiter(2)

    def start(self, nursery: trio.Nursery) -> None:
        """Give readahead tasks a home; call once before serving."""
        self._nursery = nursery

    # -- availability ---------------------------------------------------------------------

    async def probe(self, medium: MediumRow, *, fresh: bool = False) -> bool:
        """Is *medium* online? Answers younger than PROBE_TTL are reused unless *fresh*."""
        cached = self._probes.get(medium.id)
        now = time.monotonic()
        if cached is not None and not fresh and now - cached[1] < PROBE_TTL:
            return cached[0]
        online = await trio.to_thread.run_sync(self.source.is_online, medium,
                                               limiter=self.probe_limiter)
        self._probes[medium.id] = (online, time.monotonic())
        return online

    async def fresh_probe(self, medium: MediumRow) -> bool:
        return await self.probe(medium, fresh=True)

    def _known_online(self, plan: ReadPlan) -> bool:
        """True if every medium of *plan* was found online less than PROBE_TTL ago (then
        whether its volumes are staged does not matter: no stat of the staging area)."""
        now = time.monotonic()
        for medium_id in plan.media:
            cached = self._probes.get(medium_id)
            if cached is None or not cached[0] or now - cached[1] >= PROBE_TTL:
                return False
        return True

    def _missing(self, plan: ReadPlan) -> dict[int, list[VolumeRow]]:
        """Volumes of *plan* not staged, by medium id."""
        by_medium: dict[int, list[VolumeRow]] = {}
        for volume in plan.volumes.values():
            if not self.source.staging.has(volume):
                by_medium.setdefault(volume.medium_id, []).append(volume)
        return by_medium

    def offline_reason(self, medium: MediumRow) -> str | None:
        """Why *medium* was found offline though something is at its place (a damaged
        marker, another medium), or None: plainly absent, or online."""
        return self.source.offline_reasons.get(medium.id)

    def needs_lost(self, plan: ReadPlan, is_lost: Callable[[VolumeRow], bool]) -> bool:
        """Whether reading *plan* needs a volume gone from its medium (*is_lost*) that
        is not staged either: no medium brought online makes it readable."""
        return any(is_lost(volume) for volumes in self._missing(plan).values()
                   for volume in volumes)

    async def available(self, plan: ReadPlan) -> bool:
        """True if reading *plan* now needs no medium that is offline."""
        for medium_id in self._missing(plan):
            if not await self.probe(plan.media[medium_id]):
                return False
        return True

    async def ensure_available(self, plan: ReadPlan, interrupted: Callable[[], bool],
                               pid: int | None = None) -> None:
        """Return once every volume of *plan* is staged or on an online medium.

        An offline medium raises (or joins) a media request and waits per the policy;
        volumes from a medium that had to be waited for are staged before returning, so
        the next file from them needs no request even if the medium goes away again.
        """
        if self._known_online(plan):
            return
        for medium_id, volumes in self._missing(plan).items():
            medium = plan.media[medium_id]
            if await self.probe(medium):
                continue
            if self.policy.timeout == 0:
                raise MediumOfflineError(f"medium {medium.label} is offline "
                                         f"(needed for {plan.what}; mounted with --offline fail)")
            await self.requests.wait_online(medium, f"open of {plan.what}",
                                            give_up_after=self.policy.timeout,
                                            interrupted=interrupted, pid=pid)
            self._probes[medium.id] = (True, time.monotonic())
            await self._staged(volumes, medium, plan.what, interrupted)

    async def _staged(self, volumes: list[VolumeRow], medium: MediumRow, what: str,
                      interrupted: Callable[[], bool]) -> None:
        """Return once *volumes* are staged. The copies run in the background: an opener
        that gets a signal meanwhile leaves with `Interrupted` (a whole volume from a slow
        medium takes minutes) and the copies go on for the next one."""
        if self._nursery is None:
            await self._stage(volumes, medium)
            return
        events = []
        for volume in volumes:
            done = self._staging.get(volume.id)
            if done is None:
                done = self._staging[volume.id] = trio.Event()
                self._nursery.start_soon(self._stage_one, volume, medium, done)
            events.append(done)
        for done in events:
            while not done.is_set():
                with trio.move_on_after(INTERRUPT_POLL):
                    await done.wait()
                if not done.is_set() and interrupted():
                    raise Interrupted(f"open of {what}: interrupted while volumes of medium "
                                      f"{medium.label} were being staged")

    async def _stage_one(self, volume: VolumeRow, medium: MediumRow, done: trio.Event) -> None:
        try:
            await self._stage([volume], medium)
        finally:
            del self._staging[volume.id]
            done.set()

    async def _stage(self, volumes: list[VolumeRow], medium: MediumRow) -> None:
        for volume in volumes:
            try:
                staged = await trio.to_thread.run_sync(self.source.staging.stage, volume, medium,
                                                       limiter=self.stage_limiter)
            except (DurafsError, OSError) as exc:  # reads can still go to the medium
                log.warning("could not stage volume %s from medium %s: %s", volume.name,
                            medium.label, exc)
                continue
            if not staged:
                log.warning("volume %s (%d bytes) is larger than the staging area; it is "
                            "read from medium %s directly", volume.name, volume.stored_size,
                            medium.label)

    # -- reads ----------------------------------------------------------------------------

    async def read(self, f: OpenFile, offset: int, size: int) -> Buffer:
        """*size* bytes of *f* at *offset* (fewer at the end; holes read as zeros)."""
        end = min(offset + size, f.plan.size)
        if end <= offset:
            return b""
        found = f.pieces_in(offset, end)
        # The kernel's own readahead sends several reads at once, which arrive in any
        # order: "near where the last read ended" is sequential enough.
        sequential = abs(offset - f.next_offset) <= SEQUENTIAL_WINDOW
        f.next_offset = max(end, f.next_offset) if sequential else end
        if sequential and self.readahead:
            self._read_ahead(f, (found[-1][0] + 1) if found else bisect.bisect_left(f.starts, end),
                             end)
        for _, piece in found:
            self.follow(f.plan, piece.chunk)
        pieces = [piece for _, piece in found]
        if len(pieces) == 1:
            piece = pieces[0]
            if piece.file_offset <= offset and end <= piece.file_offset + piece.size:
                data = await self._chunk(f.plan, piece)  # one piece covers it all: no copy
                return memoryview(data)[offset - piece.file_offset : end - piece.file_offset]
        for piece in pieces[1:]:  # fetched alongside the first, not after it
            self._start_prefetch(f.plan, piece)
        views = []
        for piece in pieces:
            data = await self._chunk(f.plan, piece)
            lo, hi = max(offset, piece.file_offset), min(end, piece.file_offset + piece.size)
            views.append((lo, memoryview(data)[lo - piece.file_offset : hi - piece.file_offset]))
        return _assemble(views, offset, end)

    def _read_ahead(self, f: OpenFile, first: int, end: int) -> None:
        """Prefetch *f*'s pieces from index *first* on that start less than `readahead`
        bytes past *end*. Once that reaches the file's last piece, the chunks stored after
        it are followed too if it is big: in backup order they are the next file's, so its
        first reads find them decoded (or on their way) instead of waiting for a worker."""
        pieces = f.plan.pieces
        limit = end + self.readahead
        i = first
        while i < len(pieces) and pieces[i].file_offset < limit:
            self._start_prefetch(f.plan, pieces[i])
            i += 1
        if pieces and i == len(pieces) and pieces[-1].chunk.size > RUN_CHUNK_MAX:
            self.follow(f.plan, pieces[-1].chunk, any_size=True)  # (read() follows small ones)

    def _start_prefetch(self, plan: ReadPlan, piece: FilePiece) -> None:
        chunk = piece.chunk
        if self._nursery is not None and chunk.id not in self.cache \
                and chunk.id not in self._inflight:
            self._nursery.start_soon(self._prefetch, chunk, plan.volumes[chunk.volume_id])

    async def _prefetch(self, chunk: ChunkRow, volume: VolumeRow) -> None:
        if chunk.id in self.cache or chunk.id in self._inflight:  # fetched since it was asked
            return
        try:
            await self._fetch(chunk, volume, ahead=True)
        except (DurafsError, OSError) as exc:  # the real read will report it
            log.debug("readahead of chunk %d in volume %s failed: %s", chunk.id, volume.name,
                      exc)

    async def preload(self, f: OpenFile) -> Buffer | None:
        """All of *f* if it is small (PRELOAD_BYTES, no holes) and its chunks are cached or
        being fetched (by a volume run): the adapter gives it to the kernel's page cache
        at open, so the read request never comes. None otherwise (then reads fetch it,
        and report any error of that fetch)."""
        plan = f.plan
        if not 0 < plan.size <= PRELOAD_BYTES or _has_holes(plan):
            return None
        ids = [piece.chunk.id for piece in plan.pieces]
        if not all(cid in self.cache or cid in self._inflight for cid in ids):
            return None
        for piece in plan.pieces:
            self.follow(plan, piece.chunk)
        try:
            views = [(p.file_offset, memoryview(await self._chunk(plan, p))[: p.size])
                     for p in plan.pieces]
        except (DurafsError, OSError) as exc:
            log.debug("no preload of %s: %s", plan.what, exc)
            return None
        f.next_offset = plan.size
        return views[0][1] if len(views) == 1 else _assemble(views, 0, plan.size)

    # -- volume runs ----------------------------------------------------------------------

    def follow(self, plan: ReadPlan, chunk: ChunkRow, *, any_size: bool = False) -> None:
        """Note a read of *chunk*: when chunks of its volume are being read in order and
        less than half of `run_window` is fetched ahead of the reader, fetch more.

        Only small chunks count (a big one is its file's readahead's business) unless
        *any_size*: the readahead of a file that reached the file's last chunk says so, and
        then runs fetch big chunks too for a while (`RUN_BIG_SPAN`).
        In order: near where the last chunk read ended, or anywhere up to what runs have
        fetched (the files of big chunks they fetched are read in between, and do not
        count). A jump forward starts a run at once; the first read in a volume, or a jump
        back, only takes note (a random reader would waste every run).
        """
        if self.neighbours is None or self._nursery is None or (
                chunk.size > RUN_CHUNK_MAX and not any_size):
            return
        end = chunk.offset + chunk.length
        run = self._runs.get(chunk.volume_id)
        if run is None or not run.end - RUN_GAP <= chunk.offset <= max(run.end, run.ahead):
            forward = run is not None and chunk.offset > run.end
            big_until = run.big_until if run is not None else 0
            run = self._runs.put(chunk.volume_id, _Run(end, end, chunk.id, big_until))
            if not forward:  # a new position
                return
        run.end = max(run.end, end)
        if any_size:
            run.big_until = max(run.big_until, end + RUN_BIG_SPAN)
        if run.ahead - run.end >= self.run_window // 2:
            return
        if run.ahead < run.end:  # the reader went past the runs: go on from here
            run.ahead, run.last_id = run.end, chunk.id
        self._start_run(plan.volumes[chunk.volume_id], run)

    def _start_run(self, volume: VolumeRow, run: _Run) -> None:
        """Fetch the chunks stored after *run*'s position up to `run_window` past where its
        reader is, in worker threads: small ones a group at a time (`_fetch_run`), big ones
        (before `_Run.big_until`) each on its own, so both workers decode. Readers of them
        wait for that instead of fetching."""
        assert self.neighbours is not None and self._nursery is not None
        rows = self.neighbours(volume.id, run.last_id, RUN_ROWS)
        if not rows:
            run.ahead = 1 << 62  # the volume ends here (committed volumes never grow)
            return
        group: list[ChunkRow] = []
        stored = plain = 0
        for c in rows:
            if c.offset >= run.end + self.run_window:
                break
            run.ahead, run.last_id = c.offset + c.length, c.id
            if c.id in self.cache or c.id in self._inflight:
                continue
            if c.size > RUN_CHUNK_MAX:
                if c.offset < run.big_until:
                    self._nursery.start_soon(self._prefetch, c, volume)
                continue
            shared = bool(group) and group[-1].offset == c.offset  # the same pack's frame
            if (group and not shared
                    and (stored + c.length > RUN_BYTES or plain > RUN_PLAIN_BYTES)):
                self._start_group(volume, group)
                group, stored, plain = [], 0, 0
            group.append(c)
            stored += 0 if shared else c.length
            plain += c.size
        if group:
            self._start_group(volume, group)

    def _start_group(self, volume: VolumeRow, chunks: list[ChunkRow]) -> None:
        assert self._nursery is not None
        pending = _Fetch()  # one for the group: an Event per chunk would cost more than a read
        self._inflight.update((c.id, pending) for c in chunks)
        self._nursery.start_soon(self._fetch_run, volume, chunks, pending)

    async def _fetch_run(self, volume: VolumeRow, chunks: list[ChunkRow],
                         pending: _Fetch) -> None:
        try:
            datas = await trio.to_thread.run_sync(self.source.read_run, volume, chunks,
                                                  limiter=self.ahead_limiter)
            for chunk, data in zip(chunks, datas, strict=True):
                self.cache.put(chunk.id, data)
                pending.data[chunk.id] = data
        except (DurafsError, OSError) as exc:  # the real reads will report it
            log.debug("readahead in volume %s failed: %s", volume.name, exc)
        finally:
            for chunk in chunks:
                del self._inflight[chunk.id]
            pending.done.set()

    async def _chunk(self, plan: ReadPlan, piece: FilePiece, *, ahead: bool = False) -> bytes:
        """The plaintext of *piece*'s chunk: cached, fetched by another task, or fetched."""
        chunk = piece.chunk
        while True:
            data = self.cache.get(chunk.id)
            if data is not None:
                return data
            pending = self._inflight.get(chunk.id)
            if pending is None:
                return await self._fetch(chunk, plan.volumes[chunk.volume_id], ahead)
            await pending.done.wait()
            data = pending.data.get(chunk.id)
            if data is not None:
                return data
            # the fetch we waited for failed: try ourselves (and report our own error)

    async def _fetch(self, chunk: ChunkRow, volume: VolumeRow, ahead: bool) -> bytes:
        pending = self._inflight[chunk.id] = _Fetch()
        limiter = self.ahead_limiter if ahead else self.read_limiter
        try:
            data = await trio.to_thread.run_sync(self.source.read_chunk, chunk, volume,
                                                 limiter=limiter)
            self.cache.put(chunk.id, data)
            pending.data[chunk.id] = data
            return data
        finally:
            del self._inflight[chunk.id]
            pending.done.set()
